"""DMTN-101 verification statistics and tests (bias, dark, flat) and their run-level merge.

The structures mirror cp_verify's (cp_algorithms.md §1.1–1.4, §1.7):

- per (exposure, detector), `detector_verification` builds
  ``{"AMP": {amp: {STAT: value}}, ["DET": {STAT: value},] "VERIFY": {"AMP": {amp: {TEST: bool,
  "SUCCESS": bool}}[, "DET": {TEST: bool}]}, "SUCCESS": bool}``;
- per exposure, the flat group test `flat_exposure_verification` builds
  ``{"EXP": {STAT: value}, "VERIFY": {TEST: bool}, "SUCCESS": bool}``;
- `merge_run` builds ``{exposure_id: {"SUCCESS": bool[, "FAILURES": [...]]}, ..., "SUCCESS": bool}``
  whose failure strings are ``"<DET> <AMP> <TEST>"`` (amplifier tests), ``"<DET> <TEST>"``
  (detector tests) or ``"<TEST>"`` (exposure group tests).

Informational tests (`INFORMATIONAL_TESTS`, i.e. READ_NOISE_CONSISTENT) are reported in VERIFY
but never count towards SUCCESS nor appear in FAILURES.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from shared.cosmic_rays import TooManyCosmicRays, find_and_repair
from shared.images import CalibImage, MaskPlane
from shared.stats import clipped_stdev

__all__ = [
    "FLAT_NOISE_TOLERANCE",
    "FLAT_SCATTER_TOLERANCE",
    "INFORMATIONAL_TESTS",
    "NOISE_RULE_TESTS",
    "NOISE_TOLERANCE",
    "STAGES",
    "VERIFY_MASK",
    "amp_statistics",
    "bias_amp_statistics",
    "detector_verification",
    "flat_amp_statistics",
    "flat_detector_statistics",
    "flat_exposure_verification",
    "merge_run",
    "results_rows",
    "verify_amplifiers",
    "verify_bias_amplifiers",
    "verify_flat_amplifiers",
    "verify_flat_detector",
    "with_noise_rule",
]

VERIFY_MASK = int(MaskPlane.DETECTED | MaskPlane.BAD | MaskPlane.NO_DATA)
"""Pixels excluded from the statistics (cp_verify ``maskNameList``)."""
NOISE_TOLERANCE = 0.05
"""DMTN-101 tests 4.3/4.4 (5.3/5.4): relative tolerance of the NOISE, CR_NOISE and
READ_NOISE_CONSISTENT tests."""
FLAT_NOISE_TOLERANCE = 0.05
"""cpflow's relative tolerance of the flat NOISE test (see `verify_flat_amplifiers`)."""
FLAT_SCATTER_TOLERANCE = 0.05
"""Flat detector and exposure SCATTER tests: largest relative scatter of the means."""
INFORMATIONAL_TESTS = frozenset({"READ_NOISE_CONSISTENT", "NOISE_CPFLOW", "NOISE_CP_VERIFY"})
"""Tests reported after SUCCESS is computed; they neither count in SUCCESS nor in FAILURES.

``NOISE_CPFLOW`` and ``NOISE_CP_VERIFY`` are the two NOISE rules side by side; ``NOISE`` (counted)
is the one the run chose (``verify_noise_rule``)."""
NOISE_RULE_TESTS = {"cpflow": "NOISE_CPFLOW", "cp_verify": "NOISE_CP_VERIFY"}
"""The informational test that holds each NOISE rule's outcome."""
STAGES = ("BIAS", "DARK", "FLAT", "DEFECTS", "PTC")
"""Stage names used as column prefixes by `results_rows` (as cp_verify's tables)."""
_NOISE_SIGMA = 5.0
_NOISE_ITERATIONS = 3


# --------------------------------------------------------------------------------------------------
# Per-amplifier statistics


def _amp_pixels(image: CalibImage, box: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
    """The amplifier's pixels (float64) and its usable-pixel mask (unmasked and finite)."""
    pixels = image.image[box].astype(np.float64)
    usable = ((image.mask[box] & VERIFY_MASK) == 0) & np.isfinite(pixels)
    return pixels, usable


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def _stdev(values: np.ndarray) -> float:
    """afw ``STDEV``: unclipped sample standard deviation (ddof=1); NaN below two values."""
    return float(values.std(ddof=1)) if values.size > 1 else float("nan")


def amp_statistics(
    residual: CalibImage,
    amp_boxes: Mapping[str, tuple[slice, slice]],
    *,
    overscan_noise_adu: Mapping[str, float] | None = None,
    repair_cosmic_rays: bool = True,
) -> dict[str, dict[str, float]]:
    """Per-amplifier statistics of a bias or dark residual (e⁻), as cp_verify's verifyBias/Dark.

    Statistics, per amplifier, over the pixels not flagged DETECTED, BAD or NO_DATA and finite:

    - ``MEAN``: unclipped mean;
    - ``NOISE``: clipped standard deviation (5σ, 3 passes; afw ``STDEVCLIP``);
    - ``CR_NOISE``: unclipped standard deviation after cosmic-ray repair
      (`shared.cosmic_rays.find_and_repair` with σ = NOISE);
    - ``N_CR``: number of cosmic rays found;
    - ``READ_NOISE_ADU``: ``overscan_noise_adu[amp]`` (the ISR serial-overscan residual stdev,
      `shared.isr.IsrResult.overscan_noise_adu`), NaN if not given;
    - ``FORCE_FAILURE``: 1.0 if the cosmic-ray repair failed (`TooManyCosmicRays`; CR_NOISE and
      N_CR are then NaN), else 0.0. cp_verify only adds the key on failure; cpflow always writes
      it so that every amplifier has the same columns.

    With ``repair_cosmic_rays=False`` only MEAN and NOISE are computed (`bias_amp_statistics`).
    An amplifier with no usable pixel gets NaN statistics (which fail every test).
    """
    stats: dict[str, dict[str, float]] = {}
    for amp, box in amp_boxes.items():
        pixels, usable = _amp_pixels(residual, box)
        values = pixels[usable]
        noise = clipped_stdev(values, n_sigma=_NOISE_SIGMA, n_iter=_NOISE_ITERATIONS)
        amp_stats = {"MEAN": _mean(values), "NOISE": noise}
        if repair_cosmic_rays:
            amp_stats.update(_cosmic_ray_statistics(pixels, usable, noise))
            rn_adu = (overscan_noise_adu or {}).get(amp)
            amp_stats["READ_NOISE_ADU"] = float(rn_adu) if rn_adu is not None else float("nan")
        stats[amp] = amp_stats
    return stats


def _cosmic_ray_statistics(pixels: np.ndarray, usable: np.ndarray, noise: float) -> dict[str, float]:
    if not (math.isfinite(noise) and noise > 0):
        # No usable pixel, or a constant amplifier: nothing can be a cosmic ray.
        return {"CR_NOISE": _stdev(pixels[usable]), "N_CR": 0.0, "FORCE_FAILURE": 0.0}
    try:
        repaired, _, n_cr = find_and_repair(pixels, ~usable, noise)
    except TooManyCosmicRays:
        return {"CR_NOISE": float("nan"), "N_CR": float("nan"), "FORCE_FAILURE": 1.0}
    return {"CR_NOISE": _stdev(repaired[usable]), "N_CR": float(n_cr), "FORCE_FAILURE": 0.0}


def bias_amp_statistics(
    residual: CalibImage, amp_boxes: Mapping[str, tuple[slice, slice]]
) -> dict[str, dict[str, float]]:
    """Per-amplifier MEAN (unclipped) and NOISE (5σ, 3-pass clipped stdev) of a residual.

    A thin wrapper of `amp_statistics` without the cosmic-ray statistics.
    """
    return amp_statistics(residual, amp_boxes, repair_cosmic_rays=False)


# --------------------------------------------------------------------------------------------------
# Bias and dark tests


def _finite(*values: float) -> bool:
    try:
        return all(math.isfinite(float(v)) for v in values)
    except (TypeError, ValueError):
        return False


def _mean_noise_tests(mean: float, noise: float, rn: float, amp: str) -> dict[str, bool]:
    if not (rn > 0):
        raise ValueError(f"read noise of amplifier {amp} must be positive, got {rn}")
    return {
        "MEAN": bool(_finite(mean, noise) and abs(mean) < noise),
        "NOISE": bool(_finite(noise) and (noise - rn) / rn <= NOISE_TOLERANCE),
    }


def verify_amplifiers(
    stats: Mapping[str, Mapping[str, float]],
    read_noise: Mapping[str, float],
    gains: Mapping[str, float] | None = None,
    *,
    expected_noise: Mapping[str, float] | None = None,
    noise_rule: str = "cpflow",
) -> dict[str, dict[str, bool]]:
    """DMTN-101 bias tests 4.2–4.4 (dark tests 5.2–5.4), per amplifier, as cp_verify.

    With RN = ``read_noise[amp]`` (e⁻, the PTC read noise) and E = ``expected_noise[amp]`` (the
    residual's expected noise given its reference, `services.verifier.expected_noise`; RN when
    not given):

    - ``MEAN``: ``|MEAN| < NOISE``;
    - ``NOISE_CP_VERIFY`` (informational): ``(NOISE - RN)/RN ≤ 0.05`` (one-sided), cp_verify's;
    - ``NOISE_CPFLOW`` (informational): ``(NOISE - E)/E ≤ 0.05`` (one-sided), cpflow's;
    - ``NOISE``: the one ``noise_rule`` names (``cpflow`` or ``cp_verify``);
    - ``CR_NOISE``: ``|NOISE - CR_NOISE|/CR_NOISE ≤ 0.05``;
    - ``PROCESSING``: False only when the cosmic-ray repair failed (``FORCE_FAILURE``);
    - ``SUCCESS``: AND of the four;
    - ``READ_NOISE_CONSISTENT`` (informational, added after SUCCESS): the overscan read noise
      ``gains[amp] × READ_NOISE_ADU`` is at most 5 % above RN; False if it is not finite
      (e.g. no gain or no READ_NOISE_ADU).

    Non-finite statistics fail their tests. Raises `ValueError` on a non-positive read noise.
    """
    verify: dict[str, dict[str, bool]] = {}
    for amp, amp_stats in stats.items():
        mean = amp_stats.get("MEAN", math.nan)
        noise = amp_stats.get("NOISE", math.nan)
        cr_noise = amp_stats.get("CR_NOISE", math.nan)
        rn = float(read_noise[amp])
        tests = _mean_noise_tests(mean, noise, rn, amp)
        expected = float((expected_noise or {}).get(amp, rn))
        rules = {
            "cp_verify": tests["NOISE"],
            "cpflow": bool(
                expected > 0 and _finite(noise, expected) and (noise - expected) / expected <= NOISE_TOLERANCE
            ),
        }
        if noise_rule not in rules:
            raise ValueError(f"unknown NOISE rule {noise_rule!r}; valid values are: {', '.join(rules)}")
        tests["NOISE"] = rules[noise_rule]
        tests["CR_NOISE"] = bool(
            _finite(noise, cr_noise) and cr_noise > 0 and abs(noise - cr_noise) / cr_noise <= NOISE_TOLERANCE
        )
        tests["PROCESSING"] = not bool(amp_stats.get("FORCE_FAILURE", 0.0))
        tests["SUCCESS"] = all(tests.values())
        gain = (gains or {}).get(amp, math.nan)
        overscan_rn = float(gain) * float(amp_stats.get("READ_NOISE_ADU", math.nan))
        tests["READ_NOISE_CONSISTENT"] = bool(
            _finite(overscan_rn) and (overscan_rn - rn) / rn <= NOISE_TOLERANCE
        )
        for rule, test in NOISE_RULE_TESTS.items():
            tests[test] = rules[rule]
        verify[amp] = tests
    return verify


def verify_bias_amplifiers(
    stats: Mapping[str, Mapping[str, float]], read_noise: Mapping[str, float]
) -> dict[str, dict[str, bool]]:
    """Only DMTN-101 tests 4.2 (MEAN) and 4.3 (NOISE), for `bias_amp_statistics` output.

    MEAN passes if ``|MEAN| < NOISE``; NOISE passes if ``(NOISE - RN)/RN ≤ 0.05`` (one-sided, as
    cp_verify since 2023); SUCCESS is the AND of the tests. ``read_noise`` is in the residual's
    units (e⁻). Non-finite statistics fail. See `verify_amplifiers` for the full set.
    """
    verify: dict[str, dict[str, bool]] = {}
    for amp, amp_stats in stats.items():
        tests = _mean_noise_tests(amp_stats["MEAN"], amp_stats["NOISE"], float(read_noise[amp]), amp)
        tests["SUCCESS"] = all(tests.values())
        verify[amp] = tests
    return verify


# --------------------------------------------------------------------------------------------------
# Flat statistics and tests


def flat_amp_statistics(
    flat_fielded: CalibImage, amp_boxes: Mapping[str, tuple[slice, slice]]
) -> dict[str, dict[str, float]]:
    """Per-amplifier MEAN (unclipped) and NOISE (5σ, 3-pass clipped stdev) of a flat-fielded frame.

    The frame is a flat exposure after ISR with bias, dark, gains and the proposed flat applied,
    so in e⁻ with the pixel response non-uniformity removed (cp_verify verifyFlat).
    """
    return amp_statistics(flat_fielded, amp_boxes, repair_cosmic_rays=False)


def verify_flat_amplifiers(
    stats: Mapping[str, Mapping[str, float]],
    read_noise: Mapping[str, float] | None = None,
    *,
    strict: bool = False,
) -> dict[str, dict[str, bool]]:
    """Flat NOISE test ("10.X"), per amplifier: is the flat-fielded frame shot-noise limited?

    cp_verify tests ``NOISE ≤ sqrt(MEAN)`` (``strict=True`` reproduces exactly that). This rule
    is marginal by construction: for a perfectly shot-noise-limited frame with no read noise the
    expected NOISE *equals* sqrt(MEAN), so the measured value is above it about half of the time;
    with read noise the noise is ``sqrt(MEAN + RN²) > sqrt(MEAN)`` and the test fails essentially
    always at low signal (MEAN = 100 e⁻, RN = 8 e⁻: 12.8 > 10), and the noise of the combined
    flat (≈ 1/N_inputs more variance) pushes it over as well. It only passes at high signal
    because the brighter-fatter effect lowers the variance below the mean.

    **cpflow's rule (default):** ``NOISE ≤ (1 + 0.05) · sqrt(MEAN + RN²)``, with RN =
    ``read_noise[amp]`` (e⁻; 0 if ``read_noise`` is None or lacks the amplifier). A frame with
    twice the shot noise still fails (ratio 2 ≫ 1.05).

    Non-finite statistics and MEAN ≤ 0 fail. SUCCESS is the AND of the tests (NOISE only).
    """
    verify: dict[str, dict[str, bool]] = {}
    for amp, amp_stats in stats.items():
        mean, noise = amp_stats.get("MEAN", math.nan), amp_stats.get("NOISE", math.nan)
        ok = _finite(mean, noise) and mean > 0
        if strict:
            passed = ok and noise <= math.sqrt(mean)
        else:
            rn = float((read_noise or {}).get(amp, 0.0))
            passed = ok and noise <= (1.0 + FLAT_NOISE_TOLERANCE) * math.sqrt(mean + rn * rn)
        verify[amp] = {"NOISE": bool(passed), "SUCCESS": bool(passed)}
    return verify


def flat_detector_statistics(amp_stats: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Detector MEAN and SCATTER: mean and unclipped sample stdev (afw STDEV) of the amp MEANs.

    Non-finite amplifier means are ignored (afw statistics skip NaN).
    """
    means = np.array([s.get("MEAN", math.nan) for s in amp_stats.values()], dtype=np.float64)
    means = means[np.isfinite(means)]
    return {"MEAN": _mean(means), "SCATTER": _stdev(means)}


def verify_flat_detector(det_stats: Mapping[str, float]) -> dict[str, bool]:
    """Flat detector SCATTER test ("10.Y"): ``SCATTER / MEAN ≤ 0.05``; non-finite fails.

    A single amplifier (SCATTER NaN) fails.
    """
    mean, scatter = det_stats.get("MEAN", math.nan), det_stats.get("SCATTER", math.nan)
    passed = _finite(mean, scatter) and mean != 0 and scatter / mean <= FLAT_SCATTER_TOLERANCE
    return {"SCATTER": bool(passed)}


def flat_exposure_verification(detector_means: Mapping[str, float]) -> dict[str, Any]:
    """Flat exposure group test ("10.Z") over the detectors' MEANs, with cpflow's fix.

    cp_verify computes ``SCATTER = np.std(detector means)`` and tests ``SCATTER ≤ 0.05`` in e⁻:
    an absolute limit that any mosaic fails (and a single detector passes trivially). cpflow
    records that absolute standard deviation as ``STDEV`` and tests the *relative* scatter
    ``SCATTER = STDEV / MEAN ≤ 0.05`` (DESIGN.md §1). ``np.std`` (ddof=0) as cp_verify;
    non-finite means are ignored; no finite mean fails.

    Returns ``{"EXP": {"MEAN", "STDEV", "SCATTER", "N_DETECTORS"}, "VERIFY": {"SCATTER": bool},
    "SUCCESS": bool}``.
    """
    means = np.array(list(detector_means.values()), dtype=np.float64)
    means = means[np.isfinite(means)]
    mean = _mean(means)
    stdev = float(np.std(means)) if means.size else math.nan
    scatter = stdev / mean if _finite(mean, stdev) and mean != 0 else math.nan
    passed = _finite(scatter) and scatter <= FLAT_SCATTER_TOLERANCE
    return {
        "EXP": {"MEAN": mean, "STDEV": stdev, "SCATTER": scatter, "N_DETECTORS": float(means.size)},
        "VERIFY": {"SCATTER": bool(passed)},
        "SUCCESS": bool(passed),
    }


# --------------------------------------------------------------------------------------------------
# Roll-up


def _counted(tests: Mapping[str, bool]) -> dict[str, bool]:
    """The tests that count towards SUCCESS and FAILURES."""
    return {t: bool(v) for t, v in tests.items() if t != "SUCCESS" and t not in INFORMATIONAL_TESTS}


def detector_verification(
    exposure: int,
    detector_name: str,
    amp_stats: Mapping[str, Mapping[str, float]],
    amp_verify: Mapping[str, Mapping[str, bool]],
    *,
    det_stats: Mapping[str, float] | None = None,
    det_verify: Mapping[str, bool] | None = None,
) -> dict[str, Any]:
    """Per-(exposure, detector) result.

    ``{"AMP", ["DET",] "VERIFY": {"AMP"[, "DET"]}, "SUCCESS"}``; SUCCESS is the AND of every
    counted amplifier test and every detector test (informational tests excluded).
    """
    if set(amp_stats) != set(amp_verify):
        raise ValueError(
            f"exposure {exposure} detector {detector_name}: statistics for {sorted(amp_stats)} "
            f"but tests for {sorted(amp_verify)}"
        )
    verify_amp = {amp: dict(tests) for amp, tests in amp_verify.items()}
    success = all(all(_counted(tests).values()) for tests in verify_amp.values())
    result: dict[str, Any] = {"AMP": {amp: dict(values) for amp, values in amp_stats.items()}}
    verify: dict[str, Any] = {"AMP": verify_amp}
    if det_stats is not None:
        result["DET"] = dict(det_stats)
    if det_verify is not None:
        verify["DET"] = dict(det_verify)
        success &= all(_counted(det_verify).values())
    result["VERIFY"] = verify
    result["SUCCESS"] = bool(success)
    return result


def with_noise_rule(
    det_results: Mapping[int, Mapping[str, Mapping[str, Any]]], noise_rule: str
) -> dict[int, dict[str, dict[str, Any]]]:
    """The per-detector results as they would be had ``noise_rule`` decided the NOISE test.

    Each amplifier's ``NOISE`` takes the value of that rule's informational test
    (`NOISE_RULE_TESTS`; kept as it is where the test is absent, e.g. flats) and SUCCESS is
    recomputed. The input is not modified.
    """
    test = NOISE_RULE_TESTS[noise_rule]
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for exposure, detectors in det_results.items():
        out[exposure] = {}
        for detector_name, result in detectors.items():
            verify = result.get("VERIFY", {})
            amps = {
                amp: {**tests, "NOISE": tests[test]} if test in tests and "NOISE" in tests else dict(tests)
                for amp, tests in verify.get("AMP", {}).items()
            }
            for tests in amps.values():
                tests["SUCCESS"] = all(_counted(tests).values())
            success = all(tests["SUCCESS"] for tests in amps.values()) and all(
                _counted(verify.get("DET", {})).values()
            )
            out[exposure][detector_name] = {
                **result,
                "VERIFY": {**verify, "AMP": amps},
                "SUCCESS": bool(success),
            }
    return out


def _detector_failures(detector_name: str, result: Mapping[str, Any]) -> list[str]:
    failures: list[str] = []
    verify = result.get("VERIFY", {})
    for test, value in _counted(verify.get("DET", {})).items():
        if not value:
            failures.append(f"{detector_name} {test}")
    for amp, tests in verify.get("AMP", {}).items():
        for test, value in _counted(tests).items():
            if not value:
                failures.append(f"{detector_name} {amp} {test}")
    return failures


def merge_run(
    det_results: Mapping[int, Mapping[str, Mapping[str, Any]]],
    exposure_results: Mapping[int, Mapping[str, Any]] | None = None,
) -> dict[Any, Any]:
    """Merge per-detector results and per-exposure group tests into the run summary.

    ``det_results`` is ``{exposure: {detector_name: detector_verification(...)}}``;
    ``exposure_results`` is ``{exposure: flat_exposure_verification(...)}`` (flats). Returns
    ``{exposure: {"SUCCESS": bool[, "FAILURES": [...]]}, ..., "SUCCESS": bool}``; FAILURES is
    present only for exposures that failed, with ``"<TEST>"`` for a failed exposure group test,
    ``"<DET> <TEST>"`` for a detector test and ``"<DET> <AMP> <TEST>"`` for an amplifier test.
    An exposure succeeds when all its detectors and group tests do; the run when all exposures do.
    """
    exposure_results = exposure_results or {}
    run: dict[Any, Any] = {}
    for exposure in dict.fromkeys([*det_results, *exposure_results]):
        failures: list[str] = []
        success = True
        group = exposure_results.get(exposure)
        if group is not None:
            group_tests = _counted(group.get("VERIFY", {}))
            success &= all(group_tests.values()) and bool(group.get("SUCCESS", True))
            failures.extend(test for test, value in group_tests.items() if not value)
        for detector_name, result in det_results.get(exposure, {}).items():
            success &= bool(result["SUCCESS"])
            failures.extend(_detector_failures(detector_name, result))
        if success and not failures:
            run[int(exposure)] = {"SUCCESS": True}
        else:
            run[int(exposure)] = {"SUCCESS": False, "FAILURES": failures}
    run["SUCCESS"] = all(entry["SUCCESS"] for entry in run.values())
    return run


def results_rows(
    det_results: Mapping[int, Mapping[str, Mapping[str, Any]]],
    stage: str = "BIAS",
    exposure_results: Mapping[int, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One row per amplifier for an `astropy.table.Table` (cp_verify's results table).

    Columns: ``exposure, detector, amplifier``, then ``{stage}_{STAT}`` for each amplifier
    statistic (MEAN, NOISE, CR_NOISE, N_CR, READ_NOISE_ADU, FORCE_FAILURE, ...) and
    ``{stage}_VERIFY_{TEST}`` for each amplifier test (informational ones included, SUCCESS
    excluded). Detector statistics and tests (flats) are repeated on each amplifier row of the
    detector as ``{stage}_DET_{STAT}`` and ``{stage}_DET_VERIFY_{TEST}``, and exposure group
    statistics and tests as ``{stage}_EXP_{STAT}`` and ``{stage}_EXP_VERIFY_{TEST}`` (cp_verify
    adds a separate "detector" row instead; cpflow keeps every row of the same shape).

    Every row gets every column: a statistic absent from some amplifier is NaN there, a test
    absent from it False (never the case for results built by this module).
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    exposure_results = exposure_results or {}
    rows: list[dict[str, Any]] = []
    for exposure, detectors in det_results.items():
        exp_columns: dict[str, Any] = {}
        group = exposure_results.get(exposure)
        if group is not None:
            exp_columns.update({f"{stage}_EXP_{s}": float(v) for s, v in group.get("EXP", {}).items()})
            exp_columns.update(
                {
                    f"{stage}_EXP_VERIFY_{t}": bool(v)
                    for t, v in group.get("VERIFY", {}).items()
                    if t != "SUCCESS"
                }
            )
        for detector_name, result in detectors.items():
            verify = result.get("VERIFY", {})
            verify_amp = verify.get("AMP", {})
            det_columns: dict[str, Any] = {
                f"{stage}_DET_{s}": float(v) for s, v in result.get("DET", {}).items()
            }
            det_columns.update(
                {
                    f"{stage}_DET_VERIFY_{t}": bool(v)
                    for t, v in verify.get("DET", {}).items()
                    if t != "SUCCESS"
                }
            )
            for amp, amp_stats in result["AMP"].items():
                row: dict[str, Any] = {"exposure": int(exposure), "detector": detector_name, "amplifier": amp}
                for stat, value in amp_stats.items():
                    row[f"{stage}_{stat}"] = float(value)
                for test, value in verify_amp.get(amp, {}).items():
                    if test != "SUCCESS":
                        row[f"{stage}_VERIFY_{test}"] = bool(value)
                row.update(det_columns)
                row.update(exp_columns)
                rows.append(row)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    verify_prefixes = (f"{stage}_VERIFY_", f"{stage}_DET_VERIFY_", f"{stage}_EXP_VERIFY_")
    return [
        {col: row.get(col, False if col.startswith(verify_prefixes) else math.nan) for col in columns}
        for row in rows
    ]
