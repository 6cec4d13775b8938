"""Helpers shared by the simulated-camera tests: raw data sections with the overscan removed."""

from __future__ import annotations

import numpy as np

from shared.images import RawDetectorImage
from shared.instruments import Detector


def overscan_corrected(raw: RawDetectorImage, det: Detector) -> dict[str, np.ndarray]:
    """Data section minus the per-row median of the serial overscan, ADU (readout order)."""
    out = {}
    for amp in det.amplifiers:
        arr = raw.amplifiers[amp.name].astype(np.float64)
        overscan = np.median(arr[amp.serial_overscan_slice], axis=1)
        out[amp.name] = arr[amp.data_slice] - overscan[:, None]
    return out
