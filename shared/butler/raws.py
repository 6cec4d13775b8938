"""Raw frames from the butler, and the detector geometry that matches them."""

from __future__ import annotations

from lsst.daf.butler import Butler

from shared.images import RawDetectorImage
from shared.instruments import Detector, Instrument
from shared.rawformat import image_geometry

from . import datasets
from .collections import raw_collection

__all__ = ["detector_for_raw", "load_raw"]


def detector_for_raw(instrument: Instrument, raw: RawDetectorImage) -> Detector:
    """The detector geometry of ``raw``: the camera's data boxes, overscans from the segment shapes.

    (Simulated small frames also have smaller data boxes, see `shared.rawformat`.)
    """
    return image_geometry(raw, instrument)


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
