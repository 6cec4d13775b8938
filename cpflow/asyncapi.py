"""Print the AsyncAPI document generated from the services' code (``python -m cpflow.asyncapi``)."""

from __future__ import annotations


def contract_yaml() -> str:
    """The AsyncAPI 3.0 document of all four services, with the default topic prefix."""
    from services.acquirer.app import register as acquirer
    from services.certifier.app import register as certifier
    from services.generator.app import register as generator
    from services.verifier.app import register as verifier
    from shared.service import build_contract_app
    from shared.settings import Settings

    settings = Settings(topic_prefix="cpflow", kafka_bootstrap="kafka:9092")
    app = build_contract_app(
        {"acquirer": acquirer, "generator": generator, "verifier": verifier, "certifier": certifier}, settings
    )
    return str(app.schema.to_specification().to_yaml())


if __name__ == "__main__":
    print(contract_yaml(), end="")
