"""Raw frames from the butler, and the detector geometry that matches them."""

from __future__ import annotations

from lsst.daf.butler import Butler

from shared.images import RawDetectorImage
from shared.instruments import Detector, Instrument

from . import datasets
from .collections import raw_collection

__all__ = ["detector_for_raw", "load_raw"]


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
    """The raw of one detector of one exposure, from ``<INSTR>/raw/all``."""
    raw = butler.get(
        datasets.RAW,
        instrument=instrument,
        exposure=exposure,
        detector=detector,
        collections=[raw_collection(instrument)],
    )
    assert isinstance(raw, RawDetectorImage)
    return raw
