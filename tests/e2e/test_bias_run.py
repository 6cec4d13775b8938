"""End to end on the real broker and a real butler: a LATISS BIAS run from request to certification."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.time import Time, TimeDelta
from lsst.daf.butler import Timespan

from cpflow.topics_reader import publish_event, publish_raw
from shared.butler.certify import find_certified
from shared.butler.repo import open_butler
from shared.events import FramesAcquired, RunRequested
from shared.settings import Settings
from shared.topics import Topics
from tests.e2e.common import admin, cpflow, events_of, wait_until

pytestmark = pytest.mark.broker

N_BIAS = 8
AMP_SHAPE = (60, 40)


def bias_config(tmp_path: Path, **overrides: Any) -> Path:
    config: dict[str, Any] = {
        "instrument": "LATISS",
        "script_mode": "BIAS",
        "n_bias": N_BIAS,
        "n_discard_bias": 1,
        "generate_calibrations": True,
        "calib_collection": "LATISS/calib/e2e",
        "certify_calib_begin_date": "2026-01-01",
        "certify_calib_end_date": "2026-06-01",
        "simulator": {"seed": 7, "amp_data_shape": list(AMP_SHAPE)},
    }
    config.update(overrides)
    path = tmp_path / f"run-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def bias_run(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One successful BIAS run, submitted with the CLI as an operator would."""
    config = bias_config(tmp_path_factory.mktemp("configs"))
    result = cpflow(stack, "submit", str(config), "--wait", "--timeout", "400")
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = result.stdout.strip().splitlines()[0]
    assert "SUCCEEDED" in result.stdout
    return run_id


def test_certified_bias_matches_injected_truth(stack: Settings, bias_run: str) -> None:
    butler = open_butler(stack.butler_repo, writeable=False)
    moment = Time("2026-03-01T00:00:00", scale="tai")
    bias = butler.get(
        "bias",
        instrument="LATISS",
        detector=0,
        collections="LATISS/calib",
        timespan=Timespan(moment, moment + TimeDelta(1, format="sec")),
    )
    with fits.open(stack.camera_dir / bias_run / "truth_det000.fits") as hdul:
        truth = np.asarray(hdul["BIAS_STRUCTURE_E"].data, dtype=np.float64)
    truth_json = json.loads((stack.camera_dir / bias_run / "truth.json").read_text())
    assert bias.image.shape == truth.shape == (2 * AMP_SHAPE[0], 8 * AMP_SHAPE[1])
    assert int(bias.header["NCOMBINE"]) == N_BIAS
    residual = bias.image.astype(np.float64) - truth
    amps = (
        truth_json["detectors"]["0"]["amplifiers"] if "detectors" in truth_json else truth_json["amplifiers"]
    )
    read_noise = np.median([a["read_noise_e"] for a in amps.values()])
    # Each pixel is the clipped mean of N_BIAS frames: error ≈ read noise / sqrt(N) (a clipped
    # mean is ~3% noisier than a mean), plus the per-row overscan estimate's error.
    expected = read_noise / np.sqrt(N_BIAS)
    assert abs(residual.mean()) < 0.2 * expected
    assert 0.8 * expected < residual.std() < 1.35 * expected
    # The structure itself is recovered, pixel by pixel.
    assert np.corrcoef(bias.image.ravel(), truth.ravel())[0, 1] > 0.9


def test_run_status_and_events_from_the_cli(stack: Settings, bias_run: str) -> None:
    status = cpflow(stack, "status", bias_run, "--json")
    assert status.returncode == 0, status.stderr
    view = json.loads(status.stdout)
    assert view["state"] == "SUCCEEDED"
    bias = view["types"]["bias"]
    assert bias["frames"]["kept"] == N_BIAS and bias["frames"]["discarded"] == 1
    assert bias["verification"]["verdict"] == "PASSED"
    assert bias["certification"]["certified"] is True
    assert bias["certification"]["begin"].startswith("2026-01-01")
    text = cpflow(stack, "status", bias_run)
    assert "certified into LATISS/calib/e2e" in text.stdout
    timeline = cpflow(stack, "events", bias_run)
    assert timeline.returncode == 0
    for kind in ("run.requested", "frames.acquired", "calib.generated", "calib.verified", "calib.certified"):
        assert kind in timeline.stdout
    listing = cpflow(stack, "status")
    assert bias_run in listing.stdout


def test_redelivered_frames_event_builds_and_certifies_once(stack: Settings, bias_run: str) -> None:
    topics = Topics(stack.topic_prefix)
    acquired = [e for e in events_of(stack, bias_run, [topics.frames_acquired])]
    assert len(acquired) == 1
    original = {k: v for k, v in acquired[0].items() if not k.startswith("_")}
    asyncio.run(publish_event(admin(stack), topics.frames_acquired, FramesAcquired(**original)))

    def certified_events() -> list[dict]:
        found = events_of(stack, bias_run, [topics.calib_certified])
        return found if len(found) >= 2 else []

    certified = wait_until(certified_events, timeout=180)
    assert all(e["certified"] for e in certified)
    butler = open_butler(stack.butler_repo, writeable=False)
    refs = butler.query_datasets("bias", collections=[f"LATISS/runs/{bias_run}/bias"], instrument="LATISS")
    assert len(refs) == 1
    associations = find_certified(butler, "bias", "LATISS", 0, "LATISS/calib/e2e")
    assert [ref.id for ref, _ in associations] == [refs[0].id]


def test_malformed_messages_are_dead_lettered_and_services_keep_running(stack: Settings) -> None:
    topics = Topics(stack.topic_prefix)
    asyncio.run(publish_raw(admin(stack), topics.run_requested, b"\x00not json{", b"garbage-1"))
    asyncio.run(
        publish_raw(
            admin(stack),
            topics.frames_acquired,
            json.dumps({"type": "frames.acquired", "run_id": "garbage-2", "image_type": "BIAS"}).encode(),
            b"garbage-2",
        )
    )

    def letters() -> list[dict]:
        found = [
            e for e in events_of(stack, None, [topics.deadletter]) if e.get("key", "").startswith("garbage-")
        ]
        return found if len(found) >= 2 else []

    found = {e["key"]: e for e in wait_until(letters, timeout=60)}
    assert found["garbage-1"]["origin_topic"] == topics.run_requested
    assert found["garbage-1"]["payload_base64"]
    assert found["garbage-2"]["origin_topic"] == topics.frames_acquired
    assert "instrument" in found["garbage-2"]["error"]  # the missing field is named
    assert '"run_id": "garbage-2"' in found["garbage-2"]["payload_text"]
    # Junk never touches a run's state: the key names no run the message belongs to.
    assert events_of(stack, "garbage-2", [topics.run_status]) == []
    for name, port in stack.http_ports.items():
        response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert response.status_code == 200, (name, response.text)
    metrics = httpx.get(f"http://127.0.0.1:{stack.http_ports['acquirer']}/metrics", timeout=10).text
    assert f'cpflow_dead_letters_total{{topic="{topics.run_requested}"}}' in metrics


def test_invalid_configuration_injected_into_the_topic_is_rejected(stack: Settings) -> None:
    topics = Topics(stack.topic_prefix)
    request = RunRequested(
        run_id="injected-bad-config",
        producer="test",
        config={"instrument": "LATISS", "script_mode": "BIAS", "n_biass": 3, "exp_times_dark": [1, 2]},
    )
    asyncio.run(publish_event(admin(stack), topics.run_requested, request))

    def rejection() -> dict | None:
        statuses = events_of(stack, request.run_id, [topics.run_status])
        return next((s for s in statuses if s["state"] == "REJECTED"), None)

    status = wait_until(rejection, timeout=60)
    joined = "\n".join(status["errors"])
    assert "n_biass" in joined and "n_bias" in joined
    assert "exp_times_dark" in joined


def test_cli_rejects_a_bad_configuration_at_submission(stack: Settings, tmp_path: Path) -> None:
    bad = bias_config(tmp_path, n_dark=3, exp_times_dark=[5, 5], script_mode="BIAS_DARK")
    result = cpflow(stack, "submit", str(bad))
    assert result.returncode == 2
    assert "exp_times_dark" in result.stderr and "4" in result.stderr


def test_metrics_count_verification_outcomes(stack: Settings, bias_run: str) -> None:
    metrics = httpx.get(f"http://127.0.0.1:{stack.http_ports['verifier']}/metrics", timeout=10).text
    line = next(
        line
        for line in metrics.splitlines()
        if line.startswith('cpflow_verification_tests_total{calib_type="bias",outcome="pass",test="NOISE"}')
    )
    assert float(line.split()[-1]) >= N_BIAS * 16
    certifier = httpx.get(f"http://127.0.0.1:{stack.http_ports['certifier']}/metrics", timeout=10).text
    assert 'cpflow_certifications_total{calib_type="bias",outcome="certified"} 1.0' in certifier
    assert 'cpflow_runs_finished_total{outcome="SUCCEEDED"}' in certifier
    # Stage durations, as histograms whose buckets reach an hour.
    for service, stage in (("acquirer", "acquire"), ("generator", "generate"), ("verifier", "verify")):
        text = httpx.get(f"http://127.0.0.1:{stack.http_ports[service]}/metrics", timeout=10).text
        assert (
            f'cpflow_stage_duration_seconds_bucket{{calib_type="bias",le="3600.0",stage="{stage}"}}' in text
        )
    assert 'cpflow_stage_duration_seconds_count{calib_type="bias",stage="certify"}' in certifier


def test_stack_status_reports_every_component_ready(stack: Settings) -> None:
    result = cpflow(stack, "stack", "status")
    assert result.returncode == 0, result.stdout
    for name in ("kafka", "acquirer", "generator", "verifier", "certifier"):
        assert any(line.startswith(name) and "ready" in line for line in result.stdout.splitlines())
