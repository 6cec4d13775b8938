"""Dead letters from the operator's side, on the real broker and butler: listed, and redriven once
their cause is fixed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from lsst.daf.butler import CollectionType

from shared.butler.certify import find_certified
from shared.butler.repo import open_butler
from shared.settings import Settings
from tests.e2e.common import cpflow, wait_until

pytestmark = pytest.mark.broker


def test_a_dead_lettered_event_completes_its_run_once_redriven(stack: Settings, tmp_path: Path) -> None:
    collection = "LATISS/calib/redrive"
    # The fault: the calibration collection already exists as a RUN collection, so certifying into
    # it raises in the certifier, whose event is dead-lettered.
    with open_butler(stack.butler_repo) as butler:
        butler.collections.register(collection, CollectionType.RUN)
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "instrument": "LATISS",
                "script_mode": "BIAS",
                "n_bias": 4,
                "generate_calibrations": True,
                "calib_collection": collection,
                "certify_calib_begin_date": "2026-03-01",
                "certify_calib_end_date": "2026-04-01",
                "simulator": {"seed": 21, "amp_data_shape": [40, 30], "compress": False},
            }
        )
    )
    submitted = cpflow(stack, "submit", str(config), "--wait", "--timeout", "300")
    assert submitted.returncode == 1, submitted.stdout + submitted.stderr
    run_id = submitted.stdout.strip().splitlines()[0]

    listed = cpflow(stack, "deadletters", "--run", run_id, "--json")
    assert listed.returncode == 0, listed.stderr
    letters = json.loads(listed.stdout)
    assert [(letter["service"], letter["origin"].split("[")[0]) for letter in letters] == [
        ("certifier", f"{stack.topic_prefix}.calib.verified")
    ]
    assert "TypeError" in letters[0]["error"] and collection in letters[0]["error"]
    assert run_id in cpflow(stack, "deadletters").stdout

    # Redriving needs a chosen letter; a letter id that does not exist redrives nothing.
    assert cpflow(stack, "deadletters", "redrive").returncode == 4
    assert cpflow(stack, "deadletters", "redrive", "--id", "no-such-letter").returncode == 1

    # The cause is fixed; the letter is redriven and the run completes.
    with open_butler(stack.butler_repo) as butler:
        butler.collections.x_remove(collection)
    redriven = cpflow(stack, "deadletters", "redrive", "--id", letters[0]["id"])
    assert redriven.returncode == 0, redriven.stderr
    assert letters[0]["id"] in redriven.stdout

    def closed() -> dict | None:
        view = json.loads(cpflow(stack, "status", run_id, "--json").stdout)
        return view if view["state"] == "SUCCEEDED" else None

    view = wait_until(closed, timeout=120)
    assert view["types"]["bias"]["certification"]["certified"]
    butler = open_butler(stack.butler_repo, writeable=False)
    assert len(find_certified(butler, "bias", "LATISS", 0, collection)) == 1
    # It was handled once: the redriven event did not itself fail again.
    again = json.loads(cpflow(stack, "deadletters", "--run", run_id, "--json").stdout)
    assert len(again) == 1
