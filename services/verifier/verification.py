"""Verifying a calibration against frames of its type, as cp_verify does. No Kafka here.

Each raw is processed with the proposed calibration applied (and its prerequisites), and the
residual (bias, dark) or flat-fielded frame (flat) is measured per amplifier (DMTN-101).
Per-(exposure, detector) statistics are stored as they are computed, so a redelivered request
skips what exists; the run-level statistics (cp_verify's structure), the per-amplifier results
table and the decision are stored at the end.

Internal verification (``generate_calibrations: true``) uses this run's calibration and the
prerequisites it was built with; external verification uses the calibrations certified for each
exposure's time in ``input_collections_verify_<type>``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.table import Table
from lsst.daf.butler import Butler, DatasetNotFoundError

from services.verifier.decision import VerificationDecision, decide
from services.verifier.expected_noise import bias_residual_noise, dark_residual_noise
from services.verifier.statistics import (
    NOISE_RULE_TESTS,
    amp_statistics,
    detector_verification,
    flat_amp_statistics,
    flat_detector_statistics,
    flat_exposure_verification,
    merge_run,
    results_rows,
    verify_amplifiers,
    verify_flat_amplifiers,
    verify_flat_detector,
    with_noise_rule,
)
from shared.butler import datasets
from shared.butler.calibrations import CalibrationCache
from shared.butler.collections import collection_exists, type_collection
from shared.butler.raws import detector_for_raw, load_raw
from shared.butler.runrecords import find_record, put_record
from shared.calibtypes import APPLIED_IN_VERIFICATION, VERIFIED_TYPES
from shared.images import CalibImage
from shared.instruments import Instrument
from shared.isr import SMOOTH, IsrConfig, IsrResult, run_isr
from shared.records import (
    CalibSource,
    GenerationRecord,
    NoiseRuleVerdict,
    VerificationRecord,
    VerificationSummary,
)
from shared.runconfig import RunConfiguration
from shared.stats import clipped_stats

__all__ = [
    "PTC_NOISE_MAX_RELATIVE_ERROR",
    "VerificationOutcome",
    "VerificationRequest",
    "expected_residual_noise",
    "ptc_read_noise",
    "request_for",
    "sources_for",
    "summary_of",
    "usable_ptc_noise",
    "verdict_of",
    "verdict_without_tests",
    "verify_calibration",
]


@dataclass(frozen=True)
class VerificationRequest:
    instrument: Instrument
    run_id: str
    calib_type: str
    exposures: tuple[int, ...]
    detectors: tuple[int, ...]
    threshold: int
    physical_filter: str | None
    sources: Mapping[str, CalibSource] = field(default_factory=dict)
    """Where each applied calibration (the candidate and its prerequisites) comes from."""
    ptc_collections: tuple[str, ...] = ()
    """Where to look for a certified PTC whose read noise the NOISE tests use (else the nominal)."""
    noise_rule: str = "cpflow"
    """Which NOISE rule decides (``verify_noise_rule``); both are computed and reported."""


@dataclass(frozen=True)
class VerificationOutcome:
    run_stats: dict[Any, Any]
    decision: VerificationDecision
    test_counts: dict[tuple[str, bool], int]
    """(test name, passed) → number of outcomes (amplifier, detector and exposure level)."""
    stats_collection: str
    noise_rules: dict[str, VerificationDecision] = field(default_factory=dict)
    """The decision each NOISE rule gives (bias and dark; empty for flats)."""
    noise_rule: str | None = None


def _count_tests(
    det_results: Mapping[int, Mapping[str, Mapping[str, Any]]],
    exposure_results: Mapping[int, Mapping[str, Any]],
) -> dict[tuple[str, bool], int]:
    counts: dict[tuple[str, bool], int] = {}

    def add(tests: Mapping[str, Any]) -> None:
        for test, passed in tests.items():
            if test != "SUCCESS":
                key = (test, bool(passed))
                counts[key] = counts.get(key, 0) + 1

    for per_detector in det_results.values():
        for result in per_detector.values():
            for amp_tests in result["VERIFY"]["AMP"].values():
                add(amp_tests)
            add(result["VERIFY"].get("DET", {}))
    for result in exposure_results.values():
        add(result.get("VERIFY", {}))
    return counts


PTC_NOISE_MAX_RELATIVE_ERROR = 0.1
"""A PTC read noise with a larger relative error (few low-signal pairs) is not used; the nominal is."""


def usable_ptc_noise(table: Table) -> dict[str, float]:
    """Per-amplifier read noise (e⁻) of a PTC table that the NOISE tests can rely on.

    The table has ip_isr's PTC columns (`services.generator.ptc.ptc_table`). Amplifiers listed in
    ``BAD_AMPS``, whose noise is not finite, or whose noise is poorly constrained (``NOISE_ERR /
    NOISE`` above `PTC_NOISE_MAX_RELATIVE_ERROR`, e.g. no pair at low signal) are left out:
    cp_verify would compare with such a value; cpflow falls back to the nominal instead.
    """
    noise: dict[str, float] = {}
    for row in table:
        name = str(row["AMPLIFIER_NAME"])
        value, error = float(row["NOISE"]), float(row["NOISE_ERR"])
        if name in {str(b) for b in np.atleast_1d(row["BAD_AMPS"])}:
            continue
        if not (math.isfinite(value) and value > 0 and math.isfinite(error)):
            continue
        if error <= PTC_NOISE_MAX_RELATIVE_ERROR * value:
            noise[name] = value
    return noise


def ptc_read_noise(
    butler: Butler, collections: Sequence[str], instrument: str, detector: int, exposure: int
) -> dict[str, float]:
    """Per-amplifier read noise (e⁻) of the PTC certified for ``exposure``, or {} if there is none.

    cp_verify compares the NOISE statistics with the PTC read noise when the ISR has one, and with
    the camera's nominal read noise otherwise; see `usable_ptc_noise` for which amplifiers use it.
    """
    existing = [c for c in collections if collection_exists(butler, c)]
    if not existing:
        return {}
    try:
        table = butler.get(
            datasets.PTC, instrument=instrument, detector=detector, exposure=exposure, collections=existing
        )
    except (DatasetNotFoundError, LookupError):
        return {}
    return usable_ptc_noise(table)


def _reference_inputs(calib: CalibImage) -> tuple[list[int], list[float]] | None:
    """Input exposures and scales (dark times for a dark) of a combined calibration, from its header."""
    header = calib.header
    n = header.get("NCOMBINE")
    if not isinstance(n, int) or n < 1:
        return None
    try:
        exposures = [int(header[f"CPP_INPUT_{i}"]) for i in range(n)]
        scales = [float(header[f"CPP_INPUT_SCALE_{i}"]) for i in range(n)]
    except (KeyError, TypeError, ValueError):
        return None
    return exposures, scales


def expected_residual_noise(
    calib_type: str,
    applied: Mapping[str, CalibImage],
    raw: Any,
    geometry: Any,
    result: IsrResult,
    read_noise: Mapping[str, float],
    isr_config: IsrConfig | None = None,
) -> dict[str, float]:
    """Per amplifier, the noise (e⁻) the bias or dark residual should have (cpflow's NOISE rule).

    See `services.verifier.expected_noise`. The read noise is used as it is (cp_verify's rule)
    when the frame is one of the reference's own inputs (internal verification), or when the
    reference does not say what it was made of (no ``NCOMBINE``/``CPP_INPUT_*`` cards).
    """
    config = isr_config or IsrConfig()
    rn = {a.name: float(read_noise[a.name]) for a in geometry.amplifiers}
    candidate = applied.get(calib_type)
    bias = applied.get("bias")
    reference = _reference_inputs(candidate) if candidate is not None else None
    bias_inputs = _reference_inputs(bias) if bias is not None else None
    exposure = int(raw.header.get("EXPID", -1))
    if reference is None or bias_inputs is None or exposure in reference[0]:
        return rn
    expected: dict[str, float] = {}
    n_serial = {
        a.name: 0
        if result.overscan_fits.get(a.name, {}).get("serial") == SMOOTH
        else a.serial_overscan_cols - config.serial_leading_to_skip - config.serial_trailing_to_skip
        for a in geometry.amplifiers
    }
    n_bias = len(bias_inputs[0])
    for amp in geometry.amplifiers:
        if calib_type == "bias":
            expected[amp.name] = bias_residual_noise(rn[amp.name], n_bias, serial_pixels=n_serial[amp.name])
            continue
        dark = applied["dark"]
        current = clipped_stats(dark.image[amp.detector_slice], n_sigma=3.0, n_iter=3).mean
        expected[amp.name] = dark_residual_noise(
            rn[amp.name],
            dark_time=float(raw.dark_time),
            reference_dark_times=reference[1],
            n_bias=n_bias,
            dark_current=current if math.isfinite(current) else 0.0,
            serial_pixels=n_serial[amp.name],
        )
    return expected


def _measure(
    calib_type: str,
    applied: Mapping[str, CalibImage],
    raw: Any,
    geometry: Any,
    read_noise: Mapping[str, float],
    noise_rule: str = "cpflow",
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]:
    result = run_isr(
        raw, geometry, bias=applied.get("bias"), dark=applied.get("dark"), flat=applied.get("flat")
    )
    boxes = result.amp_boxes
    if calib_type == "flat":
        stats = flat_amp_statistics(result.image, boxes)
        verify = verify_flat_amplifiers(stats, read_noise)
        det_stats = flat_detector_statistics(stats)
        return stats, verify, det_stats, verify_flat_detector(det_stats)
    stats = amp_statistics(result.image, boxes, overscan_noise_adu=result.overscan_noise_adu)
    expected = expected_residual_noise(calib_type, applied, raw, geometry, result, read_noise)
    for amp_name, value in expected.items():
        stats[amp_name]["NOISE_EXPECTED"] = value
    verify = verify_amplifiers(
        stats,
        read_noise,
        {a.name: a.gain for a in geometry.amplifiers},
        expected_noise=expected,
        noise_rule=noise_rule,
    )
    return stats, verify, None, None


def verify_calibration(butler: Butler, request: VerificationRequest) -> VerificationOutcome:
    """Verify one calibration type of a run on its kept frames and decide."""
    name = request.instrument.name
    calib_type = request.calib_type
    collection = type_collection(name, request.run_id, calib_type)
    butler.collections.register(collection)
    det_type = datasets.verify_det_stats(calib_type)
    det_results: dict[int, dict[str, dict[str, Any]]] = {exposure: {} for exposure in request.exposures}
    # The read noise the NOISE tests use, per detector: the PTC's valid at the first exposure.
    read_noise: dict[int, dict[str, float]] = {}
    # Detector by detector, so that only one detector's applied calibrations are in memory: each
    # is read once per dataset (this run's once, a certified one once per dataset found valid at
    # the exposures, not once per exposure).
    for detector_id in request.detectors:
        calibs = CalibrationCache(butler)
        detector_name = request.instrument.detector(detector_id).name
        for exposure in request.exposures:
            existing = butler.query_datasets(
                det_type,
                collections=[collection],
                instrument=name,
                exposure=exposure,
                detector=detector_id,
                explain=False,
            )
            if existing:
                det_results[exposure][detector_name] = butler.get(existing[0])
                continue
            raw = load_raw(butler, name, exposure, detector_id)
            geometry = detector_for_raw(request.instrument, raw)
            applied = {
                applied_type: calibs.get(
                    request.sources[applied_type], name, detector_id, exposure, request.physical_filter
                )
                for applied_type in APPLIED_IN_VERIFICATION[calib_type]
            }
            if detector_id not in read_noise:
                from_ptc = ptc_read_noise(butler, request.ptc_collections, name, detector_id, exposure)
                read_noise[detector_id] = {
                    a.name: from_ptc.get(a.name, a.read_noise) for a in geometry.amplifiers
                }
            amp_stats, amp_verify, det_stats, det_verify = _measure(
                calib_type, applied, raw, geometry, read_noise[detector_id], request.noise_rule
            )
            for amp_name, values in amp_stats.items():
                values["READ_NOISE_E"] = read_noise[detector_id][amp_name]
            result = detector_verification(
                exposure, geometry.name, amp_stats, amp_verify, det_stats=det_stats, det_verify=det_verify
            )
            butler.put(
                result, det_type, instrument=name, exposure=exposure, detector=detector_id, run=collection
            )
            det_results[exposure][detector_name] = result
    exposure_results: dict[int, dict[str, Any]] = {}
    if calib_type == "flat":
        for exposure, per_detector in det_results.items():
            means = {det: float(r["DET"]["MEAN"]) for det, r in per_detector.items() if "DET" in r}
            exposure_results[exposure] = flat_exposure_verification(means)
    run_stats = merge_run(det_results, exposure_results or None)
    decision = decide(run_stats, threshold=request.threshold, n_detectors=len(request.detectors))
    noise_rules: dict[str, VerificationDecision] = {}
    if calib_type != "flat":
        for rule in NOISE_RULE_TESTS:
            rule_stats = merge_run(with_noise_rule(det_results, rule), exposure_results or None)
            noise_rules[rule] = decide(
                rule_stats, threshold=request.threshold, n_detectors=len(request.detectors)
            )
    put_record(butler, dict(run_stats), datasets.verify_stats(calib_type), name, collection)
    if find_record(butler, datasets.verify_results(calib_type), name, collection) is None:
        rows = results_rows(det_results, calib_type.upper(), exposure_results or None)
        put_record(butler, Table(rows=rows), datasets.verify_results(calib_type), name, collection)
    return VerificationOutcome(
        run_stats=run_stats,
        decision=decision,
        test_counts=_count_tests(det_results, exposure_results),
        stats_collection=collection,
        noise_rules=noise_rules,
        noise_rule=request.noise_rule if noise_rules else None,
    )


def sources_for(
    calib_type: str,
    *,
    generated_collection: str | None,
    prerequisite_sources: Mapping[str, CalibSource],
    reference_collections: Sequence[str],
) -> dict[str, CalibSource]:
    """Where the verifier takes each applied calibration from.

    Internal: the candidate from the run's collection, its prerequisites from where the generator
    took them. External: all of them certified in ``reference_collections``, valid at each exposure.
    """
    sources: dict[str, CalibSource] = {}
    for applied in APPLIED_IN_VERIFICATION[calib_type]:
        if generated_collection is None:
            sources[applied] = CalibSource(
                calib_type=applied, kind="certified", collections=tuple(reference_collections)
            )
        elif applied == calib_type:
            sources[applied] = CalibSource(
                calib_type=applied, kind="run", collections=(generated_collection,)
            )
        else:  # a source the generation did not name is searched nowhere: a clear LookupError later
            sources[applied] = prerequisite_sources.get(applied) or CalibSource(
                calib_type=applied, kind="certified", collections=()
            )
    return sources


def summary_of(outcome: VerificationOutcome) -> VerificationSummary:
    """What the reference script logs about a verification, as data (for the record and the event)."""
    decision = outcome.decision
    failures = {
        str(exp): list(entry.get("FAILURES", []))
        for exp, entry in outcome.run_stats.items()
        if exp != "SUCCESS" and isinstance(entry, dict) and entry.get("FAILURES")
    }
    tests: dict[str, dict[str, int]] = {}
    for (test, passed), count in outcome.test_counts.items():
        tests.setdefault(test, {"pass": 0, "fail": 0})["pass" if passed else "fail"] += count
    noise_rules = {
        rule: NoiseRuleVerdict(
            certify=rule_decision.certify,
            noise_failures=sum(per_test.get("NOISE", 0) for per_test in rule_decision.counts.values()),
            failed_exposures=list(rule_decision.failed_exposures),
        )
        for rule, rule_decision in outcome.noise_rules.items()
    }
    return VerificationSummary(
        noise_rule=outcome.noise_rule,
        noise_rules=noise_rules,
        tests=tests,
        certify=decision.certify,
        n_exposures=decision.n_exposures,
        failed_exposures=list(decision.failed_exposures),
        counts={str(k): dict(v) for k, v in decision.counts.items()},
        thresholds=dict(decision.thresholds),
        failures=failures,
        text=decision.summary() + _noise_rules_text(outcome.noise_rule, noise_rules),
    )


def _noise_rules_text(chosen: str | None, verdicts: Mapping[str, NoiseRuleVerdict]) -> str:
    if not verdicts:
        return ""
    lines = ["", "NOISE rules (README 'Verification: the NOISE rules'):"]
    for rule, verdict in verdicts.items():
        role = "decides" if rule == chosen else "reported"
        outcome = "certify" if verdict.certify else "reject"
        lines.append(f"  {rule} ({role}): {outcome}, {verdict.noise_failures} NOISE failures")
    return "\n".join(lines)


def verdict_without_tests(generation: GenerationRecord, do_verify: bool) -> VerificationRecord | None:
    """The verdict on a generation that is not tested, or `None` when the tests must run.

    A generation that failed or was skipped passes its outcome on; with ``do_verify: false``
    nothing is verified; defects and PTC are certified without verification and gains are
    reported (as in the reference).
    """
    base = verification_base(generation)
    if generation.outcome != "ok":
        return VerificationRecord(**base, verdict="NOT_RUN", outcome="skipped", reason=generation.reason)
    if not do_verify:
        return VerificationRecord(**base, verdict="NOT_RUN", reason="do_verify is false")
    if generation.calib_type not in VERIFIED_TYPES:
        reason = f"{generation.calib_type} is not verified (as in the reference)"
        return VerificationRecord(**base, verdict="NOT_RUN", reason=reason)
    return None


def verification_base(generation: GenerationRecord) -> dict[str, Any]:
    """The fields a verification record takes from the generation it verifies."""
    return {
        "instrument": generation.instrument,
        "calib_type": generation.calib_type,
        "detectors": generation.detectors,
        "exposures": generation.exposures,
        "generated": generation.generated,
        "collection": generation.collection,
        "dataset_ids": generation.dataset_ids,
    }


def verdict_of(
    generation: GenerationRecord, outcome: VerificationOutcome, duration_s: float
) -> VerificationRecord:
    """The verification record of a verification that ran."""
    verdict = "PASSED" if outcome.decision.certify else "FAILED"
    return VerificationRecord(
        **verification_base(generation),
        verdict=verdict,
        summary=summary_of(outcome),
        stats_collection=outcome.stats_collection,
        reason=None if verdict == "PASSED" else f"{generation.calib_type} failed verification",
        duration_s=duration_s,
    )


def request_for(
    generation: GenerationRecord, config: RunConfiguration, instrument: Instrument, run_id: str
) -> VerificationRequest:
    """What to verify, against which calibrations, with the run's threshold."""
    calib_type = generation.calib_type
    return VerificationRequest(
        instrument=instrument,
        run_id=run_id,
        calib_type=calib_type,
        exposures=tuple(generation.exposures),
        detectors=tuple(generation.detectors),
        threshold=config.threshold(calib_type),
        physical_filter=config.physical_filter,
        sources=sources_for(
            calib_type,
            generated_collection=generation.collection if generation.generated else None,
            prerequisite_sources=generation.sources,
            reference_collections=generation.reference_collections,
        ),
        ptc_collections=tuple(
            generation.reference_collections
            if not generation.generated
            else [config.calib_collection, *config.input_collections_verify(calib_type)]
        ),
        noise_rule=config.verify_noise_rule,
    )
