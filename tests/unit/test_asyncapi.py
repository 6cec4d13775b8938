"""The committed AsyncAPI document is the contract: it must match what the code generates."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import yaml

from cpflow.asyncapi import contract_yaml
from shared.topics import Topics

ROOT = Path(__file__).resolve().parents[2]


def test_committed_asyncapi_document_matches_the_code() -> None:
    committed = (ROOT / "asyncapi.yaml").read_text()
    assert yaml.safe_load(committed) == yaml.safe_load(contract_yaml()), (
        "asyncapi.yaml is out of date: run `make asyncapi` and commit the result"
    )


def test_every_topic_and_event_is_in_the_contract() -> None:
    document = yaml.safe_load(contract_yaml())
    addresses = {channel["address"] for channel in document["channels"].values()}
    for suffix in (
        "run.requested",
        "frames.acquired",
        "calib.generated",
        "calib.verified",
        "calib.certified",
        "run.status",
    ):
        assert f"cpflow.{suffix}" in addresses
    schemas = document["components"]["schemas"]
    for model in ("RunRequested", "FramesAcquired", "CalibGenerated", "CalibVerified", "CalibCertified"):
        assert model in schemas
        # the envelope is part of every event's schema
        assert {"event_id", "run_id", "causation_id", "producer", "time", "schema_version"} <= set(
            schemas[model]["properties"]
        )


def _resolve(document: dict, ref: str) -> dict:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[unquote(part)]
    return node


def _schema_is_empty(document: dict, schema: dict) -> bool:
    while "$ref" in schema:
        schema = _resolve(document, schema["$ref"])
    alternatives = schema.get("oneOf") or schema.get("anyOf") or []
    if alternatives:
        return all(_schema_is_empty(document, a) for a in alternatives)
    return not schema.get("properties")


def test_every_topic_a_service_publishes_or_consumes_has_a_typed_channel() -> None:
    """What the services declare (read from their code) is in the contract, with a payload schema."""
    from services.acquirer.app import register as acquirer
    from services.certifier.app import register as certifier
    from services.generator.app import register as generator
    from services.verifier.app import register as verifier
    from shared.service import service_topics
    from shared.settings import Settings

    document = yaml.safe_load(contract_yaml())
    settings = Settings(topic_prefix="cpflow")
    published: set[str] = set()
    for name, register in {
        "acquirer": acquirer,
        "generator": generator,
        "verifier": verifier,
        "certifier": certifier,
    }.items():
        consumes, publishes = service_topics(name, register, settings)
        published.update(publishes)
        for topic, action in [(t, "receive") for t in consumes] + [(t, "send") for t in publishes]:
            operations = [
                op
                for op in document["operations"].values()
                if op["action"] == action
                and op["channel"]["$ref"].startswith("#/channels/" + quote(name))
                and _resolve(document, op["channel"]["$ref"])["address"] == topic
            ]
            assert operations, f"{name}: no {action} operation for {topic}"
            for op in operations:
                for message_ref in op["messages"]:
                    message = _resolve(document, message_ref["$ref"])
                    while "$ref" in message:
                        message = _resolve(document, message["$ref"])
                    assert not _schema_is_empty(document, message["payload"]), (name, topic)
    assert {"cpflow.run.status", "cpflow.deadletter"} <= published
    assert published == set(Topics("cpflow").all()) - {"cpflow.run.requested"}
