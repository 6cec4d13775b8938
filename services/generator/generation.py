"""Building a run's combined calibrations. No Kafka here.

"Build type T for run R" is one idempotent function: it looks in the butler for what is
already built and builds only the detectors that are missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from astropy.io import fits
from lsst.daf.butler import Butler

from services.generator.combine import combine_clipped_mean, provenance_header, qa_percentiles
from shared.butler import datasets
from shared.butler.repo import raw_collection
from shared.images import CalibImage, RawDetectorImage
from shared.instruments import Detector, Instrument
from shared.isr import IsrConfig, run_isr
from shared.runstate import type_collection

__all__ = ["detector_for_raw", "generate_bias", "load_raw"]


def detector_for_raw(instrument: Instrument, raw: RawDetectorImage) -> Detector:
    """The detector geometry that matches ``raw`` (simulated small frames have smaller amplifiers)."""
    detector = instrument.detector(raw.detector_id)
    amp = detector.amplifiers[0]
    rows, cols = raw.amplifiers[amp.name].shape
    data_rows = rows - amp.parallel_overscan_rows
    data_cols = cols - amp.prescan_cols - amp.serial_overscan_cols
    if (data_rows, data_cols) == (amp.data_rows, amp.data_cols):
        return detector
    return detector.with_data_shape(data_rows, data_cols)


def load_raw(butler: Butler, instrument: str, exposure: int, detector: int) -> RawDetectorImage:
    raw = butler.get(
        datasets.RAW,
        instrument=instrument,
        exposure=exposure,
        detector=detector,
        collections=[raw_collection(instrument)],
    )
    assert isinstance(raw, RawDetectorImage)
    return raw


def _calib_header(
    calib_type: str, instrument: Instrument, detector: Detector, run_id: str, first: RawDetectorImage
) -> dict[str, object]:
    return {
        "INSTRUME": instrument.name,
        "DETECTOR": detector.id,
        "DETNAME": detector.name,
        "DETSER": detector.serial,
        "OBSTYPE": calib_type,
        "CALIBDATE": datetime.now(UTC).strftime("%Y-%m-%d"),
        "BUNIT": "electron",
        "CPFRUNID": run_id,
        "FILTER": str(first.header.get("FILTER", "")),
    }


def generate_bias(
    butler: Butler,
    instrument: Instrument,
    run_id: str,
    exposures: Sequence[int],
    detectors: Sequence[int],
) -> dict[int, str]:
    """Build the combined bias of every detector that does not have one yet.

    Returns
    -------
    dataset_ids : `dict` [`int`, `str`]
        Detector id → dataset id of its bias in the run's ``bias`` collection.
    """
    collection = type_collection(instrument.name, run_id, "bias")
    butler.collections.register(collection)
    out: dict[int, str] = {}
    for detector_id in detectors:
        existing = butler.query_datasets(
            datasets.BIAS,
            collections=[collection],
            instrument=instrument.name,
            detector=detector_id,
            explain=False,
        )
        if existing:
            out[detector_id] = str(existing[0].id)
            continue
        images: list[CalibImage] = []
        inputs: list[dict[str, object]] = []
        geometry: Detector | None = None
        amp_boxes: dict[str, tuple[slice, slice]] = {}
        first: RawDetectorImage | None = None
        for exposure in exposures:
            raw = load_raw(butler, instrument.name, exposure, detector_id)
            first = first or raw
            geometry = geometry or detector_for_raw(instrument, raw)
            result = run_isr(raw, geometry, config=IsrConfig())
            amp_boxes = result.amp_boxes
            images.append(result.image)
            inputs.append(
                {
                    "exposure": exposure,
                    "date": str(raw.header.get("DATE-BEG", "")),
                    "exposure_time": raw.exposure_time,
                    "scale": 1.0,
                }
            )
        assert geometry is not None and first is not None
        combined = combine_clipped_mean(images, scales=[1.0] * len(images))
        image = combined.image
        header = provenance_header(inputs, "bias", len(images))
        for key, value in _calib_header("bias", instrument, geometry, run_id, first).items():
            header[key] = value
        for key, value in qa_percentiles(image, amp_boxes, "bias").items():
            header[f"HIERARCH {key}"] = value
        image.header = fits.Header(header)
        ref = butler.put(
            image, datasets.BIAS, instrument=instrument.name, detector=detector_id, run=collection
        )
        out[detector_id] = str(ref.id)
    return out
