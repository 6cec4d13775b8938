"""Readiness and the dependency chain: when can calibration type T of run R be built, and with what?

A dark is built with *this run's* bias, a flat with this run's bias and dark, once they are usable:
generated and passed verification (or generated, when ``do_verify`` is false). A prerequisite
that failed stops its dependants, which are skipped with the reason. A prerequisite the run does
not take (a DARK-only run's bias) is the one certified in the calibration collections.

The decisions are pure functions of the run's configuration and a `ChainSnapshot` of what the
butler records (`load_snapshot` reads it), so the answer is the same after a restart or a
redelivery, and every rule is tested without a broker or a butler.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from lsst.daf.butler import Butler

from shared.butler.collections import type_collection
from shared.butler.runrecords import expected_calib_types, read_record
from shared.calibtypes import FLAT_PRODUCTS, FRAMES_OF, PREREQUISITES
from shared.records import AcquisitionManifest, CalibSource, GenerationRecord, VerificationRecord
from shared.runconfig import RunConfiguration

__all__ = [
    "ChainSnapshot",
    "Step",
    "dependants",
    "follow_ups",
    "load_snapshot",
    "next_step",
    "skipped_record",
    "triggered_by_frames",
    "types_from_frames",
    "usable_state",
]

Usability = Literal["usable", "failed", "pending"]


@dataclass(frozen=True)
class ChainSnapshot:
    """What the butler records about a run, as far as the dependency chain needs it.

    Attributes
    ----------
    manifests : `~collections.abc.Mapping` [`str`, `AcquisitionManifest`]
        Image type → the manifest of its frames (present once they are all in).
    generated : `~collections.abc.Mapping` [`str`, `GenerationRecord`]
        Calibration type → what the generator did.
    verified : `~collections.abc.Mapping` [`str`, `VerificationRecord`]
        Calibration type → the verifier's verdict.
    """

    manifests: Mapping[str, AcquisitionManifest] = field(default_factory=dict)
    generated: Mapping[str, GenerationRecord] = field(default_factory=dict)
    verified: Mapping[str, VerificationRecord] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """What to do for one calibration type now.

    ``action`` is ``done`` (it has a generation record: ``record``), ``wait`` (frames or a
    prerequisite are not there yet), ``skip`` (a prerequisite failed: ``reason``) or ``build``
    (from the frames in ``manifest`` with the prerequisites in ``sources``).
    """

    calib_type: str
    action: Literal["done", "wait", "skip", "build"]
    reason: str = ""
    sources: dict[str, CalibSource] = field(default_factory=dict)
    manifest: AcquisitionManifest | None = None
    record: GenerationRecord | None = None


def dependants(calib_type: str, config: RunConfiguration) -> list[str]:
    """The run's calibration types that need ``calib_type``."""
    return [t for t in config.calib_types if calib_type in PREREQUISITES.get(t, ())]


def usable_state(config: RunConfiguration, snapshot: ChainSnapshot, calib_type: str) -> tuple[Usability, str]:
    """Whether this run's ``calib_type`` can be used to build its dependants, and if not, why."""
    generated = snapshot.generated.get(calib_type)
    if generated is None:
        return "pending", f"{calib_type} not generated yet"
    if generated.outcome != "ok":
        return "failed", f"{calib_type} was not generated ({generated.reason})"
    if not config.do_verify:
        return "usable", ""
    verified = snapshot.verified.get(calib_type)
    if verified is None:
        return "pending", f"{calib_type} not verified yet"
    if verified.verdict != "PASSED":
        return "failed", f"{calib_type} failed verification"
    return "usable", ""


def next_step(config: RunConfiguration, run_id: str, snapshot: ChainSnapshot, calib_type: str) -> Step:
    """What to do for ``calib_type`` of the run, given what the butler records."""
    done = snapshot.generated.get(calib_type)
    if done is not None:
        return Step(calib_type, "done", record=done)
    frames = FRAMES_OF[calib_type]
    manifest = snapshot.manifests.get(frames)
    if manifest is not None and manifest.outcome != "ok":
        return Step(calib_type, "skip", manifest.reason or f"no {frames} frames", manifest=manifest)
    if not config.generate_calibrations:
        # External verification builds nothing: each type's record is written when its frames are
        # in. A prerequisite's verdict that arrives before those frames' event must not build it.
        return Step(
            calib_type, "wait", "external verification: nothing is built, its frames' event records it"
        )
    if manifest is None:
        return Step(calib_type, "wait", f"{frames} frames are not in yet")
    run_types = {t.lower() for t in config.image_types}
    certified = (config.calib_collection, *config.input_collections(calib_type))
    sources: dict[str, CalibSource] = {}
    for prerequisite in PREREQUISITES[calib_type]:
        if prerequisite not in run_types:
            sources[prerequisite] = CalibSource(
                calib_type=prerequisite, kind="certified", collections=certified
            )
            continue
        state, reason = usable_state(config, snapshot, prerequisite)
        if state == "failed":
            return Step(calib_type, "skip", f"{calib_type} not built: {reason}", manifest=manifest)
        if state == "pending":
            return Step(calib_type, "wait", reason, manifest=manifest)
        sources[prerequisite] = CalibSource(
            calib_type=prerequisite,
            kind="run",
            collections=(type_collection(config.instrument, run_id, prerequisite),),
        )
    return Step(calib_type, "build", sources=sources, manifest=manifest)


def follow_ups(config: RunConfiguration, record: GenerationRecord) -> list[str]:
    """The types to try next once ``record`` is written.

    A type that failed or was skipped stops its dependants now; a built type makes them ready
    now only without verification (with verification, its verdict is what triggers them).
    """
    if record.outcome != "ok" or not config.do_verify:
        return dependants(record.calib_type, config)
    return []


def triggered_by_frames(config: RunConfiguration, image_type: str) -> list[str]:
    """The types to try when the frames of ``image_type`` are in (internal verification).

    The type of those frames first; once the flats are in, also defects, PTC and gains (which
    wait for their own prerequisites).
    """
    calib_type = image_type.lower()
    tried = [calib_type]
    if image_type == "FLAT":
        tried += [t for t in expected_calib_types(config) if t in FLAT_PRODUCTS]
    return tried


def types_from_frames(config: RunConfiguration, image_type: str) -> list[str]:
    """The run's types built from the frames of ``image_type`` (all skipped when there are none)."""
    return [t for t in expected_calib_types(config) if FRAMES_OF[t] == image_type]


def skipped_record(
    config: RunConfiguration,
    calib_type: str,
    reason: str | None,
    *,
    detectors: Iterable[int],
    exposures: Iterable[int] = (),
    image_type: str | None = None,
) -> GenerationRecord:
    """The generation record of a type that is not built, and why."""
    return GenerationRecord(
        instrument=config.instrument,
        calib_type=calib_type,
        image_type=image_type,  # type: ignore[arg-type]
        detectors=list(detectors),
        exposures=list(exposures),
        generated=False,
        outcome="skipped",
        reason=reason,
    )


def _types_needed(calib_types: Iterable[str]) -> set[str]:
    needed: set[str] = set()
    for calib_type in calib_types:
        needed.add(calib_type)
        needed.update(PREREQUISITES[calib_type])
    return needed


def load_snapshot(
    butler: Butler, config: RunConfiguration, run_id: str, calib_types: Iterable[str]
) -> ChainSnapshot:
    """Read what `next_step` needs to decide ``calib_types`` (and their prerequisites) of the run."""
    instrument = config.instrument
    needed = _types_needed(calib_types)
    manifests: dict[str, AcquisitionManifest] = {}
    for image_type in {FRAMES_OF[t] for t in needed}:
        manifest = read_record(butler, AcquisitionManifest, instrument, run_id, image_type)
        if manifest is not None:
            manifests[image_type] = manifest
    generated = {}
    verified = {}
    for calib_type in needed:
        record = read_record(butler, GenerationRecord, instrument, run_id, calib_type)
        if record is not None:
            generated[calib_type] = record
        verdict = read_record(butler, VerificationRecord, instrument, run_id, calib_type)
        if verdict is not None:
            verified[calib_type] = verdict
    return ChainSnapshot(manifests=manifests, generated=generated, verified=verified)
