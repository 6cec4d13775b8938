"""DMTN-101 bias (and dark) verification statistics, per amplifier, and their run-level merge.

The structures mirror cp_verify's (cp_algorithms.md §1.1, §1.2, §1.7): a per-(exposure,
detector) dict ``{"AMP": ..., "VERIFY": {"AMP": ...}, "SUCCESS": bool}`` and a run-level dict
``{exposure_id: {"SUCCESS": bool[, "FAILURES": [...]]}, ..., "SUCCESS": bool}`` whose failure
strings are ``"<DET> <AMP> <TEST>"`` (amplifier tests) or ``"<DET> <TEST>"`` (detector tests).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from shared.images import CalibImage, MaskPlane
from shared.stats import clipped_stdev

__all__ = [
    "NOISE_TOLERANCE",
    "VERIFY_MASK",
    "bias_amp_statistics",
    "detector_verification",
    "merge_run",
    "results_rows",
    "verify_bias_amplifiers",
]

VERIFY_MASK = int(MaskPlane.DETECTED | MaskPlane.BAD | MaskPlane.NO_DATA)
"""Pixels excluded from the statistics (cp_verify ``maskNameList``)."""
NOISE_TOLERANCE = 0.05
"""DMTN-101 test 4.3: the residual noise may exceed the read noise by at most 5 %."""
_NOISE_SIGMA = 5.0
_NOISE_ITERATIONS = 3


def bias_amp_statistics(
    residual: CalibImage, amp_boxes: Mapping[str, tuple[slice, slice]]
) -> dict[str, dict[str, float]]:
    """Per-amplifier MEAN (unclipped) and NOISE (5sigma, 3-pass clipped stdev) of a residual.

    Pixels flagged DETECTED, BAD or NO_DATA, and non-finite pixels, are ignored. An amplifier
    with no usable pixel gets NaN statistics (which fail every test).
    """
    stats: dict[str, dict[str, float]] = {}
    for amp, box in amp_boxes.items():
        pixels = residual.image[box].astype(np.float64)
        usable = ((residual.mask[box] & VERIFY_MASK) == 0) & np.isfinite(pixels)
        values = pixels[usable]
        stats[amp] = {
            "MEAN": float(values.mean()) if values.size else float("nan"),
            "NOISE": clipped_stdev(values, n_sigma=_NOISE_SIGMA, n_iter=_NOISE_ITERATIONS),
        }
    return stats


def verify_bias_amplifiers(
    stats: Mapping[str, Mapping[str, float]], read_noise: Mapping[str, float]
) -> dict[str, dict[str, bool]]:
    """Apply DMTN-101 tests 4.2 (MEAN) and 4.3 (NOISE) to each amplifier.

    MEAN passes if ``|MEAN| < NOISE``; NOISE passes if ``(NOISE - RN)/RN ≤ 0.05`` (one-sided, as
    cp_verify since 2023); SUCCESS is the AND of the tests. ``read_noise`` is in the residual's
    units (e⁻). Non-finite statistics fail.
    """
    verify: dict[str, dict[str, bool]] = {}
    for amp, amp_stats in stats.items():
        mean, noise = amp_stats["MEAN"], amp_stats["NOISE"]
        rn = float(read_noise[amp])
        if rn <= 0:
            raise ValueError(f"read noise of amplifier {amp} must be positive, got {rn}")
        tests = {
            "MEAN": bool(np.isfinite(mean) and np.isfinite(noise) and abs(mean) < noise),
            "NOISE": bool(np.isfinite(noise) and (noise - rn) / rn <= NOISE_TOLERANCE),
        }
        tests["SUCCESS"] = all(tests.values())
        verify[amp] = tests
    return verify


def detector_verification(
    exposure: int,
    detector_name: str,
    amp_stats: Mapping[str, Mapping[str, float]],
    amp_verify: Mapping[str, Mapping[str, bool]],
) -> dict[str, Any]:
    """Per-(exposure, detector) result ``{"AMP", "VERIFY": {"AMP"}, "SUCCESS"}``."""
    if set(amp_stats) != set(amp_verify):
        raise ValueError(
            f"exposure {exposure} detector {detector_name}: statistics for {sorted(amp_stats)} "
            f"but tests for {sorted(amp_verify)}"
        )
    verify_amp = {amp: dict(tests) for amp, tests in amp_verify.items()}
    success = all(
        all(value for test, value in tests.items() if test != "SUCCESS") for tests in verify_amp.values()
    )
    return {
        "AMP": {amp: dict(values) for amp, values in amp_stats.items()},
        "VERIFY": {"AMP": verify_amp},
        "SUCCESS": bool(success),
    }


def _detector_failures(detector_name: str, result: Mapping[str, Any]) -> list[str]:
    failures: list[str] = []
    verify = result.get("VERIFY", {})
    for test, value in verify.get("DET", {}).items():
        if test != "SUCCESS" and not value:
            failures.append(f"{detector_name} {test}")
    for amp, tests in verify.get("AMP", {}).items():
        for test, value in tests.items():
            if test != "SUCCESS" and not value:
                failures.append(f"{detector_name} {amp} {test}")
    return failures


def merge_run(det_results: Mapping[int, Mapping[str, Mapping[str, Any]]]) -> dict[Any, Any]:
    """Merge ``{exposure: {detector_name: detector_verification(...)}}`` into the run summary.

    Returns ``{exposure: {"SUCCESS": bool[, "FAILURES": [...]]}, ..., "SUCCESS": bool}``;
    FAILURES is present only for exposures that failed.
    """
    run: dict[Any, Any] = {}
    for exposure, detectors in det_results.items():
        failures: list[str] = []
        success = True
        for detector_name, result in detectors.items():
            success &= bool(result["SUCCESS"])
            failures.extend(_detector_failures(detector_name, result))
        if success and not failures:
            run[int(exposure)] = {"SUCCESS": True}
        else:
            run[int(exposure)] = {"SUCCESS": False, "FAILURES": failures}
    run["SUCCESS"] = all(entry["SUCCESS"] for entry in run.values())
    return run


def results_rows(
    det_results: Mapping[int, Mapping[str, Mapping[str, Any]]], stage: str = "BIAS"
) -> list[dict[str, Any]]:
    """One row per amplifier for an `astropy.table.Table`.

    Columns: ``exposure, detector, amplifier``, then ``{stage}_{STAT}`` for each statistic and
    ``{stage}_VERIFY_{TEST}`` for each test (e.g. BIAS_MEAN, BIAS_NOISE, BIAS_VERIFY_MEAN,
    BIAS_VERIFY_NOISE).
    """
    rows: list[dict[str, Any]] = []
    for exposure, detectors in det_results.items():
        for detector_name, result in detectors.items():
            verify_amp = result.get("VERIFY", {}).get("AMP", {})
            for amp, amp_stats in result["AMP"].items():
                row: dict[str, Any] = {"exposure": int(exposure), "detector": detector_name, "amplifier": amp}
                for stat, value in amp_stats.items():
                    row[f"{stage}_{stat}"] = float(value)
                for test, value in verify_amp.get(amp, {}).items():
                    if test != "SUCCESS":
                        row[f"{stage}_VERIFY_{test}"] = bool(value)
                rows.append(row)
    return rows
