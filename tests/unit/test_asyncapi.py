"""The committed AsyncAPI document is the contract: it must match what the code generates."""

from __future__ import annotations

from pathlib import Path

import yaml

from cpflow.asyncapi import contract_yaml

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
