"""Building a run's calibrations: combined bias, dark and flat; defects; PTC; gains. No Kafka here.

"Build type T for run R" is one idempotent function per type: it looks in the butler for what is
already built and builds only the detectors that are missing. Prerequisite calibrations come
from the sources that `services.generator.readiness` resolved (this run's, or certified ones).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from lsst.daf.butler import Butler

from services.generator.combine import (
    combine_clipped_mean,
    prepare_combine,
    provenance_header,
    qa_percentiles,
)
from services.generator.defects import find_defects
from services.generator.ptc import extract_pair, gain_from_flat_pairs, pair_exposures, ptc_table, solve_ptc
from shared import isrcalib
from shared.butler import datasets
from shared.butler.calibrations import CalibrationCache, load_calibration
from shared.butler.collections import type_collection
from shared.butler.raws import detector_for_raw, load_raw
from shared.cosmic_rays import TooManyCosmicRays, find_and_repair
from shared.images import CalibImage, MaskPlane, RawDetectorImage
from shared.instruments import Detector, Instrument
from shared.isr import IsrConfig, run_isr
from shared.isrcalib import isrcalib_metadata
from shared.records import CalibSource
from shared.runconfig import RunConfiguration
from shared.settings import load_settings
from shared.stats import clipped_stats

__all__ = ["BUILDERS", "BuildRequest", "BuildResult", "ScratchInputs", "flat_scales"]


@dataclass(frozen=True)
class BuildRequest:
    """Everything a builder needs."""

    instrument: Instrument
    config: RunConfiguration
    run_id: str
    exposures: tuple[int, ...]
    detectors: tuple[int, ...]
    physical_filter: str
    sources: Mapping[str, CalibSource] = field(default_factory=dict)


@dataclass
class BuildResult:
    dataset_ids: dict[int, str] = field(default_factory=dict)
    products: dict[str, Any] = field(default_factory=dict)
    """Per detector results that are reported rather than stored as calibrations (gains)."""


def _calib_header(
    calib_type: str, request: BuildRequest, detector: Detector, first: RawDetectorImage
) -> dict[str, object]:
    return {
        "INSTRUME": request.instrument.name,
        "DETECTOR": detector.id,
        "DETNAME": detector.name,
        "DETSER": detector.serial,
        "OBSTYPE": calib_type,
        "CALIBDATE": datetime.now(UTC).strftime("%Y-%m-%d"),
        "BUNIT": {"bias": "electron", "dark": "electron/s", "flat": ""}.get(calib_type, ""),
        "CPFRUNID": request.run_id,
        "FILTER": request.physical_filter,
        "DARKTIME": 1.0 if calib_type == "dark" else 0.0,
        # ip_isr compares this with its own units (adu or electron); a flat is a relative response.
        **({"HIERARCH LSST ISR UNITS": "electron"} if calib_type in ("bias", "dark") else {}),
        "EXPTIME": 0.0 if calib_type == "bias" else 1.0,
    }


def _existing(
    butler: Butler, dataset_type: str, collection: str, instrument: str, detector: int
) -> str | None:
    refs = butler.query_datasets(
        dataset_type, collections=[collection], instrument=instrument, detector=detector, explain=False
    )
    return str(refs[0].id) if refs else None


def _isr_inputs(
    butler: Butler, request: BuildRequest, detector_id: int, *, isr_config: IsrConfig | None = None
) -> Iterator[tuple[int, RawDetectorImage, Detector, Any]]:
    """ISR of each input exposure of one detector, with this type's prerequisite calibrations.

    A certified prerequisite is looked up for each exposure but read once per dataset (a
    `CalibrationCache` that lives as long as this detector's pass over its inputs).
    """
    name = request.instrument.name
    cache = CalibrationCache(butler)
    for exposure in request.exposures:
        raw = load_raw(butler, name, exposure, detector_id)
        geometry = detector_for_raw(request.instrument, raw)
        calibs = {
            calib_type: cache.get(source, name, detector_id, exposure, request.physical_filter)
            for calib_type, source in request.sources.items()
        }
        result = run_isr(
            raw,
            geometry,
            config=isr_config,
            bias=calibs.get("bias"),
            dark=calibs.get("dark"),
        )
        if exposure == request.exposures[0]:  # the combine's network compiles while ISR goes on
            prepare_combine(len(request.exposures), result.image.image.shape)
        yield exposure, raw, geometry, result


def _mask_cosmic_rays(image: CalibImage, amp_boxes: Mapping[str, tuple[slice, slice]]) -> None:
    """Flag cosmic rays on a dark input (CR mask plane) so the combine rejects them."""
    for box in amp_boxes.values():
        data = image.image[box]
        stats = clipped_stats(data, n_sigma=3.0, n_iter=3)
        try:
            _repaired, cr_mask, _n = find_and_repair(data, image.mask[box], stats.stdev)
        except TooManyCosmicRays:
            continue
        image.mask[box][cr_mask] |= int(MaskPlane.CR)


def _combine_and_put(
    butler: Butler,
    request: BuildRequest,
    calib_type: str,
    detector_id: int,
    geometry: Detector,
    first: RawDetectorImage,
    images: list[CalibImage],
    inputs: list[dict[str, object]],
    amp_boxes: Mapping[str, tuple[slice, slice]],
    reject_mask: int,
) -> str:
    scales = [float(i["scale"]) for i in inputs]  # type: ignore[arg-type]
    combined = combine_clipped_mean(images, scales=scales, reject_mask=reject_mask)
    image = combined.image
    header = provenance_header(inputs, calib_type, len(images))
    for key, value in _calib_header(calib_type, request, geometry, first).items():
        header[key] = value
    for key, value in qa_percentiles(image, amp_boxes, calib_type).items():
        header[f"HIERARCH {key}"] = value
    image.header = fits.Header(header)
    data_id: dict[str, Any] = {"instrument": request.instrument.name, "detector": detector_id}
    if calib_type == "flat":
        data_id["physical_filter"] = request.physical_filter
    collection = type_collection(request.instrument.name, request.run_id, calib_type)
    ref = butler.put(image, calib_type, data_id, run=collection)
    return str(ref.id)


def _input_record(exposure: int, raw: RawDetectorImage, scale: float) -> dict[str, object]:
    return {
        "exposure": exposure,
        "date": str(raw.header.get("DATE-BEG", "")),
        "exposure_time": raw.exposure_time,
        "scale": scale,
    }


def build_bias(butler: Butler, request: BuildRequest) -> BuildResult:
    """Combined bias: per-pixel clipped mean of the ISR-processed biases (electrons)."""
    return _build_combined(butler, request, "bias")


def build_dark(butler: Butler, request: BuildRequest) -> BuildResult:
    """Combined dark in e⁻/s: bias-subtracted darks scaled by dark time, cosmic rays rejected."""
    return _build_combined(butler, request, "dark")


class ScratchInputs:
    """ISR'd combine inputs held in RAM up to a budget, and in local scratch files beyond it.

    A full-size LATISS input is 195 MB (float32 image and variance, int32 mask), so 23 darks are
    4.5 GB and an LSSTCam-sized stack of 100 inputs would not fit a pod. Inputs past the budget
    (``CPFLOW_COMBINE_MEMORY_MB``, `shared.settings.Settings.combine_memory_mb`) are written to a temporary
    directory (``$TMPDIR``, removed on `close`) and read back strip by strip through memory maps,
    whose pages the kernel can evict. Spilling costs disk bandwidth (about 8 s for 4 GB here), so
    the budget should be as large as the deployment's memory allows.

    Parameters
    ----------
    budget_mb : `float`, optional
        RAM budget in MB; default from the environment.
    """

    def __init__(self, budget_mb: float | None = None, prefix: str = "cpflow-inputs-") -> None:
        if budget_mb is None:
            budget_mb = load_settings().combine_memory_mb
        self.budget_bytes = int(budget_mb * 1024 * 1024)
        self._prefix = prefix
        self._directory: tempfile.TemporaryDirectory[str] | None = None
        self._in_memory = 0
        self.n_spilled = 0

    def keep(self, image: CalibImage) -> CalibImage:
        """``image`` itself while the budget lasts, else a copy backed by scratch files."""
        size = image.image.nbytes + image.mask.nbytes + image.variance.nbytes
        if self._in_memory + size <= self.budget_bytes:
            self._in_memory += size
            return image
        if self._directory is None:
            self._directory = tempfile.TemporaryDirectory(prefix=self._prefix)
        index, self.n_spilled = self.n_spilled, self.n_spilled + 1
        arrays: dict[str, np.ndarray] = {}
        for plane in ("image", "mask", "variance"):
            path = Path(self._directory.name) / f"{index:04d}-{plane}.npy"
            np.save(path, np.ascontiguousarray(getattr(image, plane)))
            arrays[plane] = np.load(path, mmap_mode="r+")
        return CalibImage(
            image=arrays["image"], mask=arrays["mask"], variance=arrays["variance"], header=image.header
        )

    def close(self) -> None:
        if self._directory is not None:
            self._directory.cleanup()
            self._directory = None

    def __enter__(self) -> ScratchInputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


PERSISTENT_CR_FRACTION = 0.5
"""A "cosmic ray" found at the same pixel in more than this fraction of the darks is a defect."""


def unflag_persistent_cosmic_rays(images: Sequence[CalibImage]) -> None:
    """Clear the CR flag where it is set in more than `PERSISTENT_CR_FRACTION` of ``images``.

    Each dark input is searched for cosmic rays on its own (`_mask_cosmic_rays`). A hot pixel or a
    hot column looks like a cosmic ray on each single dark (a sharp excess), but a cosmic ray does
    not hit the same pixel in most frames: such pixels keep their dark current in the combined
    dark (and become defects there) instead of being rejected in every input.
    """
    if len(images) < 2:
        return
    cr = int(MaskPlane.CR)
    counts = np.zeros(images[0].mask.shape, dtype=np.int32)
    for image in images:
        counts += (image.mask & cr) != 0
    persistent = counts > PERSISTENT_CR_FRACTION * len(images)
    if persistent.any():
        for image in images:
            image.mask[persistent] &= ~cr


def _build_combined(butler: Butler, request: BuildRequest, calib_type: str) -> BuildResult:
    name = request.instrument.name
    collection = type_collection(name, request.run_id, calib_type)
    butler.collections.register(collection)
    result = BuildResult()
    reject = int(MaskPlane.SAT | MaskPlane.DETECTED | MaskPlane.INTRP)
    if calib_type == "dark":
        reject |= int(MaskPlane.CR)
    for detector_id in request.detectors:
        existing = _existing(butler, calib_type, collection, name, detector_id)
        if existing is not None:
            result.dataset_ids[detector_id] = existing
            continue
        images: list[CalibImage] = []
        inputs: list[dict[str, object]] = []
        first = geometry = None
        amp_boxes: Mapping[str, tuple[slice, slice]] = {}
        with ScratchInputs() as scratch:
            for exposure, raw, det, isr in _isr_inputs(butler, request, detector_id):
                first, geometry, amp_boxes = first or raw, geometry or det, isr.amp_boxes
                scale = raw.dark_time if calib_type == "dark" else 1.0
                if calib_type == "dark":
                    _mask_cosmic_rays(isr.image, amp_boxes)
                images.append(scratch.keep(isr.image))
                inputs.append(_input_record(exposure, raw, scale))
            assert first is not None and geometry is not None
            if calib_type == "dark":
                unflag_persistent_cosmic_rays(images)
            result.dataset_ids[detector_id] = _combine_and_put(
                butler, request, calib_type, detector_id, geometry, first, images, inputs, amp_boxes, reject
            )
            del images[:]
    return result


def flat_scales(means: Mapping[tuple[int, int], float], n_iter: int = 10) -> dict[tuple[int, int], float]:
    """Scale of each (detector, exposure) flat input.

    One detector: each input is divided by its own clipped mean (the flat's mean is 1). Several
    detectors: the focal-plane normalisation B[d, e] ≈ G[d]·E[e] solved in log space, with G
    normalised to mean 1; each input is divided by its exposure's E, so the combined flats keep
    the detectors' relative responses.
    """
    detectors = sorted({d for d, _ in means})
    exposures = sorted({e for _, e in means})
    if len(detectors) == 1:
        return dict(means)
    log_b = np.full((len(detectors), len(exposures)), np.nan)
    for (d, e), value in means.items():
        if value > 0 and np.isfinite(value):
            log_b[detectors.index(d), exposures.index(e)] = np.log(value)
    good = np.isfinite(log_b)
    log_g = np.zeros(len(detectors))
    log_e = np.zeros(len(exposures))
    for _ in range(n_iter):
        log_e = np.array(
            [
                np.mean((log_b[:, j] - log_g)[good[:, j]]) if good[:, j].any() else 0.0
                for j in range(len(exposures))
            ]
        )
        log_g = np.array(
            [
                np.mean((log_b[i, :] - log_e)[good[i, :]]) if good[i, :].any() else 0.0
                for i in range(len(detectors))
            ]
        )
        log_g -= np.log(np.mean(np.exp(log_g)))
    return {(d, e): float(np.exp(log_e[exposures.index(e)])) for d, e in means}


def build_flat(butler: Butler, request: BuildRequest) -> BuildResult:
    """Combined flat: bias- and dark-corrected flats, each divided by its normalisation, combined."""
    name = request.instrument.name
    collection = type_collection(name, request.run_id, "flat")
    butler.collections.register(collection)
    result = BuildResult()
    missing = []
    for detector_id in request.detectors:
        existing = _existing(butler, datasets.FLAT, collection, name, detector_id)
        if existing is not None:
            result.dataset_ids[detector_id] = existing
        else:
            missing.append(detector_id)
    if not missing:
        return result
    # Pass 1: the clipped mean of every input of every detector (the focal-plane normalisation
    # needs all of them before any detector can be combined). The ISR outputs of one detector to
    # build (processed last) are kept in scratch files, so that pass 2 does not run ISR on them
    # again. Pass 2: one detector at a time (ISR again except for the kept one), and combine; its
    # inputs are spilled to scratch files too, removed after each detector.
    keep_id = missing[-1]
    order = [d for d in request.detectors if d != keep_id] + [keep_id]
    means: dict[tuple[int, int], float] = {}
    with ScratchInputs() as kept_scratch:
        kept: list[tuple[int, dict[str, object], CalibImage]] = []  # (exposure, input record, image)
        kept_first: tuple[RawDetectorImage, Detector] | None = None
        kept_boxes: Mapping[str, tuple[slice, slice]] = {}
        for detector_id in order:
            for exposure, raw, det, isr in _isr_inputs(butler, request, detector_id):
                good = isr.image.mask == 0
                means[(detector_id, exposure)] = clipped_stats(isr.image.image[good], 3.0, 3).mean
                if detector_id == keep_id:
                    record = _input_record(exposure, raw, 1.0)
                    kept.append((exposure, record, kept_scratch.keep(isr.image)))
                    kept_first = kept_first or (raw, det)
                    kept_boxes = isr.amp_boxes
        scales = flat_scales(means)
        assert kept_first is not None
        images = [image for _, _, image in kept]
        inputs = [{**record, "scale": scales[(keep_id, exposure)]} for exposure, record, _ in kept]
        result.dataset_ids[keep_id] = _combine_and_put(
            butler,
            request,
            "flat",
            keep_id,
            kept_first[1],
            kept_first[0],
            images,
            inputs,
            kept_boxes,
            _FLAT_REJECT,
        )
        del images, kept
    for detector_id in [d for d in missing if d != keep_id]:
        with ScratchInputs() as scratch:
            images = []
            inputs = []
            first = geometry = None
            amp_boxes: Mapping[str, tuple[slice, slice]] = {}
            for exposure, raw, det, isr in _isr_inputs(butler, request, detector_id):
                first, geometry, amp_boxes = first or raw, geometry or det, isr.amp_boxes
                images.append(scratch.keep(isr.image))
                inputs.append(_input_record(exposure, raw, scales[(detector_id, exposure)]))
            assert first is not None and geometry is not None
            result.dataset_ids[detector_id] = _combine_and_put(
                butler, request, "flat", detector_id, geometry, first, images, inputs, amp_boxes, _FLAT_REJECT
            )
            del images
    return result


_FLAT_REJECT = int(MaskPlane.SAT | MaskPlane.DETECTED | MaskPlane.INTRP)


def build_defects(butler: Butler, request: BuildRequest) -> BuildResult:
    """Defects from this run's combined dark (hot pixels) and flat (cold pixels), merged."""
    name = request.instrument.name
    collection = type_collection(name, request.run_id, "defects")
    butler.collections.register(collection)
    result = BuildResult()
    exposure = request.exposures[0]
    for detector_id in request.detectors:
        existing = _existing(butler, datasets.DEFECTS, collection, name, detector_id)
        if existing is not None:
            result.dataset_ids[detector_id] = existing
            continue
        dark = load_calibration(butler, request.sources["dark"], name, detector_id, exposure)
        flat = load_calibration(
            butler, request.sources["flat"], name, detector_id, exposure, request.physical_filter
        )
        raw = load_raw(butler, name, exposure, detector_id)
        geometry = detector_for_raw(request.instrument, raw)
        amp_boxes = {a.name: a.detector_slice for a in geometry.amplifiers}
        defects = find_defects(dark=dark, flat=flat, amp_boxes=amp_boxes)
        table = defects.to_table()
        table.meta.update(isrcalib_metadata(isrcalib.DEFECTS, name, geometry))
        table.meta["CPFRUNID"] = request.run_id
        ref = butler.put(table, datasets.DEFECTS, instrument=name, detector=detector_id, run=collection)
        result.dataset_ids[detector_id] = str(ref.id)
        result.products[str(detector_id)] = {"n_boxes": len(defects.boxes)}
    return result


def _bias_in_adu(bias: CalibImage, geometry: Detector) -> CalibImage:
    """A combined bias (e⁻ at the nominal gains) converted to ADU amplifier by amplifier."""
    image = bias.image.astype(np.float32, copy=True)
    variance = bias.variance.astype(np.float32, copy=True)
    for amp in geometry.amplifiers:
        image[amp.detector_slice] /= np.float32(amp.gain)
        variance[amp.detector_slice] /= np.float32(amp.gain**2)
    return CalibImage(image=image, mask=bias.mask.copy(), variance=variance, header=bias.header.copy())


def _ptc_measurements(
    butler: Butler, request: BuildRequest, detector_id: int
) -> tuple[dict[str, list[Any]], Detector]:
    """Flat pairs of one detector (matched by exposure time), ISR'd in ADU, measured per amplifier.

    The ISR is overscan, trim and, when the request has a bias source, subtraction of the
    combined bias converted to ADU (the PTC means must not include the 2-D bias structure,
    which the overscans do not remove; it cancels in the pair difference but not in the means).
    """
    name = request.instrument.name
    # Exposure times from the exposure records written at ingest: no raw is read twice.
    records = butler.query_dimension_records(
        "exposure",
        instrument=name,
        where="exposure.id IN (exposures)",
        bind={"exposures": list(request.exposures)},
        explain=False,
    )
    times = sorted((int(r.id), float(r.exposure_time)) for r in records)
    pairs = pair_exposures(times)
    measurements: dict[str, list[Any]] = {}
    geometry: Detector | None = None
    bias_adu: CalibImage | None = None
    isr_config = IsrConfig(apply_gains=False)
    for first_id, second_id in pairs:
        images = []
        for exposure in (first_id, second_id):
            raw = load_raw(butler, name, exposure, detector_id)
            geometry = detector_for_raw(request.instrument, raw)
            if bias_adu is None and "bias" in request.sources:
                bias_e = load_calibration(butler, request.sources["bias"], name, detector_id, exposure)
                bias_adu = _bias_in_adu(bias_e, geometry)
            images.append(run_isr(raw, geometry, config=isr_config, bias=bias_adu))
        per_amp = extract_pair(images[0].image, images[1].image, images[0].amp_boxes)
        for amp, measurement in per_amp.items():
            measurements.setdefault(amp, []).append(measurement)
    if geometry is None:
        raise ValueError(
            f"no flat pairs with equal exposure times among {len(times)} flats; PTC and gain need pairs"
        )
    return measurements, geometry


def build_ptc(butler: Butler, request: BuildRequest) -> BuildResult:
    """Photon transfer curve per amplifier from flat pairs (exponential approximation)."""
    name = request.instrument.name
    collection = type_collection(name, request.run_id, "ptc")
    butler.collections.register(collection)
    result = BuildResult()
    for detector_id in request.detectors:
        existing = _existing(butler, datasets.PTC, collection, name, detector_id)
        if existing is not None:
            result.dataset_ids[detector_id] = existing
            continue
        measurements, geometry = _ptc_measurements(butler, request, detector_id)
        solved = solve_ptc(measurements, fit_type=request.config.ptc_fit_type)
        table = ptc_table(solved, measurements)
        table.meta.update(isrcalib_metadata(isrcalib.PTC, name, geometry))
        table.meta["CPFRUNID"] = request.run_id
        ref = butler.put(table, datasets.PTC, instrument=name, detector=detector_id, run=collection)
        result.dataset_ids[detector_id] = str(ref.id)
        result.products[str(detector_id)] = {
            amp: {"gain": float(p.gain), "noise": float(p.noise), "turnoff_e": float(p.turnoff_e)}
            for amp, p in solved.items()
        }
    return result


def build_gain(butler: Butler, request: BuildRequest) -> BuildResult:
    """Gains from flat pairs (the reference's GAIN mode): reported, never certified."""
    result = BuildResult()
    for detector_id in request.detectors:
        measurements, _geometry = _ptc_measurements(butler, request, detector_id)
        gains = gain_from_flat_pairs(measurements)
        result.products[str(detector_id)] = {amp: round(float(g), 5) for amp, g in gains.items()}
    return result


BUILDERS: dict[str, Callable[[Butler, BuildRequest], BuildResult]] = {
    "bias": build_bias,
    "dark": build_dark,
    "flat": build_flat,
    "defects": build_defects,
    "ptc": build_ptc,
    "gain": build_gain,
}
