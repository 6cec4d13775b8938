"""Tests of the bias verification statistics, the run merge and the certification decision."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from services.verifier.decision import decide
from services.verifier.statistics import (
    bias_amp_statistics,
    detector_verification,
    merge_run,
    results_rows,
    verify_bias_amplifiers,
)
from shared.images import CalibImage, MaskPlane

AMP_SHAPE = (100, 80)
BOXES = {
    "C10": (slice(0, 100), slice(0, 80)),
    "C11": (slice(0, 100), slice(80, 160)),
    "C01": (slice(100, 200), slice(0, 80)),
    "C00": (slice(100, 200), slice(80, 160)),
}
READ_NOISE = {"C10": 7.0, "C11": 8.0, "C01": 6.5, "C00": 9.0}


def _residual(seed: int, noise_factor: dict[str, float] | None = None) -> CalibImage:
    rng = np.random.default_rng(seed)
    residual = CalibImage.empty((200, 160))
    for amp, box in BOXES.items():
        sigma = READ_NOISE[amp] * (noise_factor or {}).get(amp, 1.0)
        residual.image[box] = rng.normal(0.0, sigma, AMP_SHAPE)
    return residual


def test_pure_noise_residual_passes() -> None:
    residual = _residual(1)
    residual.image[5, 5] = 1e5  # a masked hot pixel must not count
    residual.mask[5, 5] = MaskPlane.BAD
    residual.image[6, 6] = np.nan
    residual.mask[6, 6] = MaskPlane.NO_DATA
    residual.image[150, 150] = 3_000.0  # an unmasked cosmic ray: out of the clipped NOISE
    stats = bias_amp_statistics(residual, BOXES)
    assert set(stats) == set(BOXES)
    for amp, values in stats.items():
        assert values["NOISE"] == pytest.approx(READ_NOISE[amp], rel=0.03)
        assert np.isfinite(values["MEAN"])
    assert stats["C00"]["MEAN"] > 3_000.0 / (AMP_SHAPE[0] * AMP_SHAPE[1]) - 0.5  # MEAN is unclipped
    verify = verify_bias_amplifiers(stats, READ_NOISE)
    for tests in verify.values():
        assert tests == {"MEAN": True, "NOISE": True, "SUCCESS": True}


def test_extra_noise_fails_noise_only() -> None:
    residual = _residual(2, noise_factor={"C11": 1.3})
    stats = bias_amp_statistics(residual, BOXES)
    verify = verify_bias_amplifiers(stats, READ_NOISE)
    assert verify["C11"] == {"MEAN": True, "NOISE": False, "SUCCESS": False}
    assert verify["C10"]["SUCCESS"]
    # The NOISE test is one-sided: a residual quieter than the read noise passes.
    quiet = bias_amp_statistics(_residual(3, noise_factor={"C10": 0.5}), BOXES)
    assert verify_bias_amplifiers(quiet, READ_NOISE)["C10"]["NOISE"]


def test_offset_fails_mean() -> None:
    residual = _residual(4)
    residual.image[BOXES["C01"]] += 2 * READ_NOISE["C01"]
    verify = verify_bias_amplifiers(bias_amp_statistics(residual, BOXES), READ_NOISE)
    assert verify["C01"] == {"MEAN": False, "NOISE": True, "SUCCESS": False}


def test_fully_masked_amplifier_fails() -> None:
    residual = _residual(5)
    residual.mask[BOXES["C00"]] = MaskPlane.BAD
    stats = bias_amp_statistics(residual, BOXES)
    assert np.isnan(stats["C00"]["MEAN"]) and np.isnan(stats["C00"]["NOISE"])
    assert verify_bias_amplifiers(stats, READ_NOISE)["C00"] == {
        "MEAN": False,
        "NOISE": False,
        "SUCCESS": False,
    }


def _det_results() -> dict[int, dict[str, dict]]:
    results: dict[int, dict[str, dict]] = {}
    for exposure, factor in ((101, {}), (102, {"C10": 1.3, "C00": 1.5})):
        results[exposure] = {}
        for i, det in enumerate(("R22_S00", "R22_S01")):
            noisy = factor if det == "R22_S00" else {}
            stats = bias_amp_statistics(_residual(exposure * 10 + i, noisy), BOXES)
            verify = verify_bias_amplifiers(stats, READ_NOISE)
            results[exposure][det] = detector_verification(exposure, det, stats, verify)
    return results


def test_detector_structure_and_run_merge() -> None:
    results = _det_results()
    det = results[102]["R22_S00"]
    assert set(det) == {"AMP", "VERIFY", "SUCCESS"}
    assert det["SUCCESS"] is False
    assert det["VERIFY"]["AMP"]["C10"]["NOISE"] is False
    assert results[101]["R22_S00"]["SUCCESS"] is True

    run = merge_run(results)
    assert run[101] == {"SUCCESS": True}
    assert run[102]["SUCCESS"] is False
    assert sorted(run[102]["FAILURES"]) == ["R22_S00 C00 NOISE", "R22_S00 C10 NOISE"]
    assert run["SUCCESS"] is False
    assert set(run) == {101, 102, "SUCCESS"}

    rows = results_rows(results)
    table = Table(rows=rows)
    assert len(table) == 2 * 2 * len(BOXES)
    assert table.colnames == [
        "exposure",
        "detector",
        "amplifier",
        "BIAS_MEAN",
        "BIAS_NOISE",
        "BIAS_VERIFY_MEAN",
        "BIAS_VERIFY_NOISE",
    ]
    failing = table[~table["BIAS_VERIFY_NOISE"]]
    assert sorted(failing["amplifier"]) == ["C00", "C10"]
    assert set(failing["exposure"]) == {102}

    with pytest.raises(ValueError):
        detector_verification(1, "R22_S00", {"C10": {}}, {"C11": {}})


def test_latiss_failure_string() -> None:
    stats = {"C10": {"MEAN": 0.0, "NOISE": 20.0}}
    verify = verify_bias_amplifiers(stats, {"C10": 9.0})
    run = merge_run({7: {"RXX_S00": detector_verification(7, "RXX_S00", stats, verify)}})
    assert run[7]["FAILURES"] == ["RXX_S00 C10 NOISE"]


def _run(failures_per_exposure: dict[int, int], test: str = "NOISE", detector: str = "RXX_S00") -> dict:
    run: dict = {}
    for exposure, n in failures_per_exposure.items():
        if n == 0:
            run[exposure] = {"SUCCESS": True}
        else:
            run[exposure] = {
                "SUCCESS": False,
                "FAILURES": [f"{detector} C{10 + i % 8:02d} {test}" for i in range(n)],
            }
    run["SUCCESS"] = all(v["SUCCESS"] for v in run.values())
    return run


def test_decision_uses_n_exposures_not_n_plus_one() -> None:
    run = _run({1: 8, 2: 8, 3: 0})  # 3 exposures, 2 of which fail on NOISE
    decision = decide(run, threshold=8, n_detectors=1)
    assert decision.n_exposures == 3
    assert decision.failed_exposures == [1, 2]
    assert decision.thresholds["MAX_FAILED_EXPOSURES_THRESHOLD"] == 2
    assert decision.thresholds["FINAL_NUMBER_OF_FAILED_EXPOSURES"] == 2
    assert decision.certify is False

    # The reference script's arithmetic counts the SUCCESS key: int(len(run)/2)+1 = 3 → certify.
    reference_max_failed = int(len(run) / 2) + 1
    assert reference_max_failed == 3
    assert not (len(decision.failed_exposures) >= reference_max_failed)

    summary = decision.summary()
    assert "not certified" in summary
    assert "NOISE: 8" in summary
    assert "MAX_FAILED_EXPOSURES_THRESHOLD: 2" in summary


def test_decision_counts_and_per_exposure_threshold() -> None:
    run = _run({1: 7, 2: 8, 3: 0, 4: 0})
    run[1]["FAILURES"].append("RXX_S00 C10 MEAN")
    decision = decide(run, threshold=8, n_detectors=1)
    assert decision.counts == {1: {"NOISE": 7, "MEAN": 1}, 2: {"NOISE": 8}}
    assert decision.failed_exposures == [2]
    assert decision.certify is True  # 1 failed exposure < 4 // 2 + 1
    assert "certified, but some tests failed" in decision.summary()


def test_thresholds_scale_with_detectors() -> None:
    # 9 detectors: an exposure fails at threshold x (9 // 2 + 1) = 8 x 5 = 40 pooled failures.
    below = decide(_run({1: 39, 2: 39}, detector="R22_S11"), threshold=8, n_detectors=9)
    assert below.thresholds["MAX_FAILED_DETECTORS_THRESHOLD"] == 5
    assert below.thresholds["MAX_FAILED_TESTS_PER_EXPOSURE_THRESHOLD"] == 40
    assert below.failed_exposures == [] and below.certify is True
    at = decide(_run({1: 40, 2: 40}, detector="R22_S11"), threshold=8, n_detectors=9)
    assert at.failed_exposures == [1, 2] and at.certify is False
    assert decide(_run({1: 8, 2: 8}), threshold=8, n_detectors=1).certify is False


def test_successful_run_certifies() -> None:
    decision = decide(_run({1: 0, 2: 0}), threshold=8, n_detectors=1)
    assert decision.certify is True
    assert decision.counts == {} and decision.failed_exposures == []
    assert "certified" in decision.summary()
    with pytest.raises(ValueError):
        decide(_run({1: 0}), threshold=0, n_detectors=1)


def test_end_to_end_from_residuals() -> None:
    run = merge_run(_det_results())
    # Only 2 failures in the failing exposure: far below 8 x (2 // 2 + 1) = 16.
    decision = decide(run, threshold=8, n_detectors=2)
    assert decision.counts == {102: {"NOISE": 2}}
    assert decision.certify is True
    # With threshold 1 exposure 102 fails (2 ≥ 1 x 2), but 1 of 2 exposures is not a majority (2).
    strict = decide(run, threshold=1, n_detectors=2)
    assert strict.failed_exposures == [102]
    assert strict.certify is True
