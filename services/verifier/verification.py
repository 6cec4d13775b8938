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

from astropy.table import Table
from lsst.daf.butler import Butler, DatasetNotFoundError

from services.verifier.decision import VerificationDecision, decide
from services.verifier.statistics import (
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
)
from shared.butler import datasets
from shared.butler.calibrations import CalibrationCache
from shared.butler.collections import collection_exists, type_collection
from shared.butler.raws import detector_for_raw, load_raw
from shared.butler.runrecords import find_record, put_record
from shared.calibtypes import APPLIED_IN_VERIFICATION, VERIFIED_TYPES
from shared.images import CalibImage
from shared.instruments import Instrument
from shared.isr import run_isr
from shared.records import CalibSource, GenerationRecord, VerificationRecord, VerificationSummary
from shared.runconfig import RunConfiguration

__all__ = [
    "PTC_NOISE_MAX_RELATIVE_ERROR",
    "VerificationOutcome",
    "VerificationRequest",
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


@dataclass(frozen=True)
class VerificationOutcome:
    run_stats: dict[Any, Any]
    decision: VerificationDecision
    test_counts: dict[tuple[str, bool], int]
    """(test name, passed) → number of outcomes (amplifier, detector and exposure level)."""
    stats_collection: str


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

    Amplifiers whose fit is bad, whose noise is not finite, or whose noise is poorly constrained
    (``noise_err / noise`` above `PTC_NOISE_MAX_RELATIVE_ERROR`, e.g. no pair at low signal) are
    left out: cp_verify would compare with such a value; cpflow falls back to the nominal instead.
    """
    noise: dict[str, float] = {}
    for row in table:
        value, error = float(row["noise"]), float(row["noise_err"])
        if bool(row["bad"]) or not (math.isfinite(value) and value > 0 and math.isfinite(error)):
            continue
        if error <= PTC_NOISE_MAX_RELATIVE_ERROR * value:
            noise[str(row["amp_name"])] = value
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


def _measure(
    calib_type: str,
    applied: Mapping[str, CalibImage],
    raw: Any,
    geometry: Any,
    read_noise: Mapping[str, float],
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
    verify = verify_amplifiers(stats, read_noise, {a.name: a.gain for a in geometry.amplifiers})
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
                calib_type, applied, raw, geometry, read_noise[detector_id]
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
    put_record(butler, dict(run_stats), datasets.verify_stats(calib_type), name, collection)
    if find_record(butler, datasets.verify_results(calib_type), name, collection) is None:
        rows = results_rows(det_results, calib_type.upper(), exposure_results or None)
        put_record(butler, Table(rows=rows), datasets.verify_results(calib_type), name, collection)
    return VerificationOutcome(
        run_stats=run_stats,
        decision=decision,
        test_counts=_count_tests(det_results, exposure_results),
        stats_collection=collection,
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
    return VerificationSummary(
        tests=tests,
        certify=decision.certify,
        n_exposures=decision.n_exposures,
        failed_exposures=list(decision.failed_exposures),
        counts={str(k): dict(v) for k, v in decision.counts.items()},
        thresholds=dict(decision.thresholds),
        failures=failures,
        text=decision.summary(),
    )


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
    )
