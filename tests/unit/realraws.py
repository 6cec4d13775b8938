"""Real raw headers (tests/data/headers) and real-format raw files built from them, for the tests."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import yaml
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

from shared.images import RawDetectorImage
from shared.instruments import Detector
from shared.rawformat import write_raw

HEADERS = Path(__file__).resolve().parents[1] / "data" / "headers"
LATISS_DARK = "latiss-AT_O_20240624_000169_R00_S00.yaml"
COMCAM_OBJECT = "comCam-CC_O_20241108_000266_R22_S00.yaml"
LATISS_CCS_2022 = "latiss-AT_C_20220426_000004_R00_S00.yaml"


def real_header(name: str, **changes: object) -> fits.Header:
    """The primary header of a real raw (YAML cards in file order; ``null`` = undefined value)."""
    cards = yaml.safe_load((HEADERS / name).read_text())
    header = fits.Header()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)  # keys with blanks become HIERARCH cards
        for key, value in {**cards, **changes}.items():
            header[key] = value
    return header


def write_real_raw(
    path: Path,
    header: fits.Header,
    detector: Detector,
    amplifiers: dict[str, np.ndarray] | None = None,
    *,
    compress: bool = True,
    fill: int = 1000,
) -> Path:
    """A raw in the camera's format: ``header``, the segments of ``detector`` (constant ``fill``)."""
    if amplifiers is None:
        amplifiers = {
            a.name: np.full((a.raw_rows, a.raw_cols), fill, dtype=np.int32) for a in detector.amplifiers
        }
    write_raw(RawDetectorImage(header=header, amplifiers=amplifiers), detector, path, compress=compress)
    return path
