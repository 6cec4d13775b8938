"""Verifying a calibration against frames of its type, as cp_verify does. No Kafka here.

Each raw is processed with the proposed calibration applied, and the residual is measured per
amplifier (DMTN-101). Per-(exposure, detector) statistics are stored as they are computed, so a
redelivered request skips the ones that exist; the run-level statistics (cp_verify's structure)
and the per-amplifier results table are stored at the end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from astropy.table import Table
from lsst.daf.butler import Butler

from services.generator.generation import detector_for_raw, load_raw
from services.verifier.decision import VerificationDecision, decide
from services.verifier.statistics import (
    bias_amp_statistics,
    detector_verification,
    merge_run,
    results_rows,
    verify_bias_amplifiers,
)
from shared.butler import datasets
from shared.images import CalibImage
from shared.instruments import Instrument
from shared.isr import IsrConfig, run_isr
from shared.runstate import find_record, put_record, type_collection

__all__ = ["VerificationOutcome", "verify_bias"]


@dataclass(frozen=True)
class VerificationOutcome:
    run_stats: dict[Any, Any]
    decision: VerificationDecision
    test_counts: dict[tuple[str, bool], int]
    """(test name, passed) → number of amplifier-level outcomes."""
    stats_collection: str


def _reference_bias(
    butler: Butler,
    instrument: str,
    detector: int,
    exposure: int,
    generated_collection: str | None,
    reference_collections: Sequence[str],
) -> CalibImage:
    if generated_collection is not None:
        bias = butler.get(
            datasets.BIAS, instrument=instrument, detector=detector, collections=[generated_collection]
        )
    else:
        # External verification: the bias certified for the time of this exposure.
        try:
            bias = butler.get(
                datasets.BIAS,
                instrument=instrument,
                detector=detector,
                exposure=exposure,
                collections=list(reference_collections),
            )
        except Exception as exc:
            raise LookupError(
                f"no certified bias for {instrument} detector {detector} valid at exposure {exposure} "
                f"in {', '.join(reference_collections)}: {exc}"
            ) from exc
    assert isinstance(bias, CalibImage)
    return bias


def _count_tests(det_results: Mapping[int, Mapping[str, dict[str, Any]]]) -> dict[tuple[str, bool], int]:
    counts: dict[tuple[str, bool], int] = {}
    for per_detector in det_results.values():
        for result in per_detector.values():
            for amp_tests in result["VERIFY"]["AMP"].values():
                for test, passed in amp_tests.items():
                    if test == "SUCCESS":
                        continue
                    key = (test, bool(passed))
                    counts[key] = counts.get(key, 0) + 1
    return counts


def verify_bias(
    butler: Butler,
    instrument: Instrument,
    run_id: str,
    exposures: Sequence[int],
    detectors: Sequence[int],
    *,
    threshold: int,
    generated_collection: str | None,
    reference_collections: Sequence[str] = (),
) -> VerificationOutcome:
    """Verify the bias of a run (or the certified one, for external verification) on its frames."""
    name = instrument.name
    collection = type_collection(name, run_id, "bias")
    butler.collections.register(collection)
    det_results: dict[int, dict[str, dict[str, Any]]] = {}
    bias_cache: dict[int, CalibImage] = {}
    for exposure in exposures:
        det_results[exposure] = {}
        for detector_id in detectors:
            geometry = instrument.detector(detector_id)
            existing = butler.query_datasets(
                datasets.verify_det_stats("bias"),
                collections=[collection],
                instrument=name,
                exposure=exposure,
                detector=detector_id,
                explain=False,
            )
            if existing:
                det_results[exposure][geometry.name] = butler.get(existing[0])
                continue
            raw = load_raw(butler, name, exposure, detector_id)
            geometry = detector_for_raw(instrument, raw)
            if generated_collection is not None and detector_id in bias_cache:
                bias = bias_cache[detector_id]
            else:
                bias = _reference_bias(
                    butler, name, detector_id, exposure, generated_collection, reference_collections
                )
                if generated_collection is not None:
                    bias_cache[detector_id] = bias
            residual = run_isr(raw, geometry, config=IsrConfig(), bias=bias)
            amp_stats = bias_amp_statistics(residual.image, residual.amp_boxes)
            read_noise = {amp.name: amp.read_noise for amp in geometry.amplifiers}
            amp_verify = verify_bias_amplifiers(amp_stats, read_noise)
            result = detector_verification(exposure, geometry.name, amp_stats, amp_verify)
            butler.put(
                result,
                datasets.verify_det_stats("bias"),
                instrument=name,
                exposure=exposure,
                detector=detector_id,
                run=collection,
            )
            det_results[exposure][geometry.name] = result
    run_stats = merge_run(det_results)
    decision = decide(run_stats, threshold=threshold, n_detectors=len(detectors))
    document = dict(run_stats)
    put_record(butler, document, datasets.verify_stats("bias"), name, collection)
    if find_record(butler, datasets.verify_results("bias"), name, collection) is None:
        put_record(
            butler, Table(rows=results_rows(det_results)), datasets.verify_results("bias"), name, collection
        )
    return VerificationOutcome(
        run_stats=run_stats,
        decision=decision,
        test_counts=_count_tests(det_results),
        stats_collection=collection,
    )
