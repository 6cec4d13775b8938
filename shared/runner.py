"""Run a cpflow service: ``python -m services.<name>`` serves its ASGI app with uvicorn."""

from __future__ import annotations

import importlib
import sys

import uvicorn

from shared.logs import configure_logging
from shared.service import GRACEFUL_TIMEOUT_S
from shared.settings import SettingsError, load_settings


def serve(name: str) -> None:
    """Serve service ``name`` (its module ``services.<name>.app`` provides ``create_app``)."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        sys.exit(f"cpflow {name}: bad environment:\n{exc}")
    configure_logging(settings.log_level)
    module = importlib.import_module(f"services.{name}.app")
    app, _ctx = module.create_app(settings)
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_ports[name],
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(GRACEFUL_TIMEOUT_S),
    )
