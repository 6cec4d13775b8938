"""Run a cpflow service: ``python -m services.<name>`` serves its ASGI app with uvicorn."""

from __future__ import annotations

import uvicorn

from shared.logs import configure_logging
from shared.settings import Settings


def serve(name: str) -> None:
    """Serve service ``name`` (its module ``services.<name>.app`` provides ``create_app``)."""
    configure_logging()
    settings = Settings.from_env()
    module = __import__(f"services.{name}.app", fromlist=["create_app"])
    app, _ctx = module.create_app()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=settings.http_ports[name],
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=60,
    )
