"""Defect finding on combined darks and flats, after cp_pipe's ``MeasureDefectsTask``.

The behaviour follows cp_algorithms.md §3 and fact 10; the code is cpflow's own.

Per amplifier (``amp_boxes``), on the combined calibrations:

* **dark** (e⁻/s, as produced by the combine): the 3σ/3-pass afw clipped mean ``m`` and clipped
  stdev ``s`` of the amplifier are computed.

  - ``VALUE`` mode (default): a pixel is hot if ``pixel - m >= dark_current_threshold_e_per_s``
    (the combined dark has an effective exposure time of 1 s and is already in electrons, so
    cp_pipe's ``threshold * expTime / gain`` reduces to the threshold itself);
  - ``STDEV`` mode: hot if ``pixel - m >= n_sigma_hot * s``.

* **flat** (normalised, ≈ 1):

  - ``VALUE`` mode (default): cold if ``pixel < frac_threshold_flat * m``;
  - ``STDEV`` mode: cold if ``pixel - m <= n_sigma_cold * s`` (``n_sigma_cold`` is negative);
  - in both modes, hot if ``pixel - m >= flat_n_sigma_hot * s`` (``None`` disables this).

* Non-finite pixels of either input are defects, and so are the pixels its mask flags BAD
  (``bad_mask_is_defect``): the combine flags BAD the pixels that had no good input (cp_pipe's
  ``noGoodPixelsMask``, "treated as a defect") and sets them to the image median, so no
  threshold can find them. On a combined dark these are typically hot pixels that the
  cosmic-ray finder flagged in every input.

The hot and cold maps are OR-ed (cp_pipe's ``combinationMode='OR'`` of the combined-calibration
mode), then, per amplifier column:

1. *intermittent columns*: a column with at least ``bad_on_off_pixel_column_threshold`` bad pixels
   is filled between its bad pixels, except across runs of at least
   ``good_pixel_column_gap_threshold`` good pixels. Both thresholds are given for a 2000-row
   amplifier and are scaled by ``rows / reference_amp_rows`` for smaller amplifiers (with floors
   of 4 bad pixels and 2 good pixels, never above the configured values);
2. *bad columns*: a column with at least ``min(bad_pixels_to_fill_column,
   ceil(bad_column_fraction * rows))`` bad pixels is masked over the full amplifier height
   (``bad_pixels_to_fill_column=None`` uses the fraction alone: 1000 of 2000 rows on a full
   ITL amplifier, as cp_pipe's LSSTCam/LATISS value, and 20 of 40 rows on a small test frame).

Not implemented: bias frames, SAT-column dilation (combined calibrations carry no SAT plane),
edge defects, manual defects and the per-exposure FRACTION merge.

The final mask is converted to boxes ``(x0, y0, width, height)`` in detector pixels
(``x`` = column, ``y`` = row): each column's vertical runs of bad pixels are found, and runs with
the same ``y0``/``height`` in adjacent columns are merged into one box. A full bad column is one
box; an isolated pixel is a 1×1 box; a horizontal streak is one box.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from astropy.table import Table

from shared.images import CalibImage, MaskPlane
from shared.stats import clipped_stats

__all__ = [
    "DefectConfig",
    "DefectResult",
    "boxes_from_mask",
    "find_defects",
]

Box = tuple[int, int, int, int]
"""``(x0, y0, width, height)`` in detector pixels."""

_THRESHOLD_TYPES = ("VALUE", "STDEV")


@dataclass
class DefectConfig:
    """Thresholds of `find_defects` (defaults: LSSTCam/LATISS cp_pipe pipelines where they exist).

    Attributes
    ----------
    dark_threshold_type : `str`
        ``"VALUE"`` (default; hot above ``dark_current_threshold_e_per_s``) or ``"STDEV"``
        (hot above ``n_sigma_hot`` clipped sigma).
    dark_current_threshold_e_per_s : `float`
        VALUE-mode dark threshold above the amplifier clipped mean, in e⁻/s (pipelines: 3.0).
    n_sigma_hot : `float`
        STDEV-mode dark threshold, in clipped sigma.
    flat_threshold_type : `str`
        ``"VALUE"`` (default; cold below ``frac_threshold_flat`` × mean) or ``"STDEV"`` (cold below
        ``n_sigma_cold`` sigma).
    frac_threshold_flat : `float`
        VALUE-mode cold threshold as a fraction of the amplifier clipped mean (pipelines: 0.9).
    n_sigma_cold : `float`
        STDEV-mode cold threshold (negative), in clipped sigma.
    flat_n_sigma_hot : `float` or `None`
        Hot pixels in the flat above this many clipped sigma (both modes); ``None`` disables.
    clip_n_sigma, clip_n_iter : `float`, `int`
        Clipping of the amplifier statistics (afw default control: 3σ, 3 passes).
    bad_pixels_to_fill_column : `int` or `None`
        Absolute bad-pixel count that fills a whole amplifier column; ``None`` uses only
        ``bad_column_fraction``. The effective threshold is the smaller of the two.
    bad_column_fraction : `float`
        Fraction of the amplifier height that fills a whole column (0.5: 1000 of 2000 rows).
    bad_on_off_pixel_column_threshold : `int`
        Intermittent-column fill: minimum bad pixels in a column (at ``reference_amp_rows``).
    good_pixel_column_gap_threshold : `int`
        Intermittent-column fill: runs of at least this many good pixels stay good (at
        ``reference_amp_rows``).
    reference_amp_rows : `int`
        Amplifier height for which the two intermittent-column thresholds are given.
    bad_mask_is_defect : `bool`
        Pixels flagged BAD in the mask of the dark or flat are defects.
    """

    dark_threshold_type: str = "VALUE"
    dark_current_threshold_e_per_s: float = 3.0
    n_sigma_hot: float = 4.8
    flat_threshold_type: str = "VALUE"
    frac_threshold_flat: float = 0.9
    n_sigma_cold: float = -5.0
    flat_n_sigma_hot: float | None = 4.8
    clip_n_sigma: float = 3.0
    clip_n_iter: int = 3
    bad_pixels_to_fill_column: int | None = None
    bad_column_fraction: float = 0.5
    bad_on_off_pixel_column_threshold: int = 50
    good_pixel_column_gap_threshold: int = 30
    reference_amp_rows: int = 2000
    bad_mask_is_defect: bool = True

    def __post_init__(self) -> None:
        for name in ("dark_threshold_type", "flat_threshold_type"):
            value = str(getattr(self, name)).upper()
            if value not in _THRESHOLD_TYPES:
                raise ValueError(f"{name} must be one of {_THRESHOLD_TYPES}, got {value!r}")
            setattr(self, name, value)
        if not 0.0 < self.frac_threshold_flat < 1.0:
            raise ValueError(f"frac_threshold_flat must be in (0, 1), got {self.frac_threshold_flat}")
        if not 0.0 < self.bad_column_fraction <= 1.0:
            raise ValueError(f"bad_column_fraction must be in (0, 1], got {self.bad_column_fraction}")
        if self.n_sigma_cold >= 0:
            raise ValueError(f"n_sigma_cold must be negative, got {self.n_sigma_cold}")

    def column_fill_threshold(self, rows: int) -> int:
        """Bad pixels that fill a whole column of an amplifier ``rows`` high."""
        threshold = max(1, math.ceil(self.bad_column_fraction * rows))
        if self.bad_pixels_to_fill_column is not None and self.bad_pixels_to_fill_column > 0:
            threshold = min(threshold, self.bad_pixels_to_fill_column)
        return threshold

    def intermittent_thresholds(self, rows: int) -> tuple[int, int]:
        """``(min bad pixels, min good gap)`` of the intermittent-column fill for ``rows`` rows."""
        scale = min(1.0, rows / self.reference_amp_rows)
        n_bad = min(
            self.bad_on_off_pixel_column_threshold,
            max(4, math.ceil(scale * self.bad_on_off_pixel_column_threshold)),
        )
        gap = min(
            self.good_pixel_column_gap_threshold,
            max(2, math.ceil(scale * self.good_pixel_column_gap_threshold)),
        )
        return n_bad, gap


@dataclass
class DefectResult:
    """Output of `find_defects`.

    Attributes
    ----------
    boxes : `list` [`tuple` [`int`, `int`, `int`, `int`]]
        Defect boxes ``(x0, y0, width, height)`` in detector pixels (x = column, y = row).
    mask : `numpy.ndarray`
        Boolean detector mask, True on defects (exactly the union of ``boxes``).
    n_hot, n_cold : `dict` [`str`, `int`]
        Per amplifier, hot pixels (dark and flat) and cold pixels (flat) found by the thresholds,
        before the column fills.
    n_bad_columns : `dict` [`str`, `int`]
        Per amplifier, columns masked over the full amplifier height.
    """

    boxes: list[Box]
    mask: np.ndarray
    n_hot: dict[str, int] = field(default_factory=dict)
    n_cold: dict[str, int] = field(default_factory=dict)
    n_bad_columns: dict[str, int] = field(default_factory=dict)

    def to_table(self) -> Table:
        """Boxes as an astropy table (``x0, y0, width, height``) with the counters in ``meta``."""
        empty = np.zeros((4, 0), dtype=np.int64)
        columns = np.asarray(self.boxes, dtype=np.int64).T if self.boxes else empty
        table = Table(
            [columns[0], columns[1], columns[2], columns[3]],
            names=("x0", "y0", "width", "height"),
            dtype=(np.int64, np.int64, np.int64, np.int64),
        )
        table.meta["OBSTYPE"] = "defects"  # ip_isr's; the other IsrCalib keys: shared.isrcalib
        table.meta["LSST CALIB DEFECTS N_BAD_COLUMNS"] = int(sum(self.n_bad_columns.values()))
        for amp in sorted(set(self.n_hot) | set(self.n_cold) | set(self.n_bad_columns)):
            table.meta[f"LSST CALIB DEFECTS {amp} N_HOT"] = int(self.n_hot.get(amp, 0))
            table.meta[f"LSST CALIB DEFECTS {amp} N_COLD"] = int(self.n_cold.get(amp, 0))
            table.meta[f"LSST CALIB DEFECTS {amp} N_BAD_COLUMNS"] = int(self.n_bad_columns.get(amp, 0))
        return table


def _amp_stats(values: np.ndarray, config: DefectConfig) -> tuple[float, float]:
    stats = clipped_stats(values, n_sigma=config.clip_n_sigma, n_iter=config.clip_n_iter)
    return stats.mean, stats.stdev


def _above(deviation: np.ndarray, threshold: float) -> np.ndarray:
    """``deviation >= threshold`` for a finite positive threshold, else nothing."""
    if not (np.isfinite(threshold) and threshold > 0):
        return np.zeros(deviation.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        return deviation >= threshold


def _dark_hot(amp: np.ndarray, config: DefectConfig) -> np.ndarray:
    mean, stdev = _amp_stats(amp, config)
    deviation = amp - mean
    if config.dark_threshold_type == "VALUE":
        return _above(deviation, config.dark_current_threshold_e_per_s)
    return _above(deviation, config.n_sigma_hot * stdev)


def _flat_hot_cold(amp: np.ndarray, config: DefectConfig) -> tuple[np.ndarray, np.ndarray]:
    mean, stdev = _amp_stats(amp, config)
    deviation = amp - mean
    if config.flat_threshold_type == "VALUE":
        cold = _above(-deviation, (1.0 - config.frac_threshold_flat) * mean)
    else:
        cold = _above(-deviation, -config.n_sigma_cold * stdev)
    if config.flat_n_sigma_hot is None:
        hot = np.zeros(amp.shape, dtype=bool)
    else:
        hot = _above(deviation, config.flat_n_sigma_hot * stdev)
    return hot, cold


def _fill_intermittent(bad: np.ndarray, n_bad_min: int, gap_min: int) -> np.ndarray:
    """Fill gaps shorter than ``gap_min`` between bad pixels of columns with ≥ ``n_bad_min`` bad."""
    out = bad.copy()
    counts = bad.sum(axis=0)
    for col in np.flatnonzero(counts >= n_bad_min).tolist():
        rows = np.flatnonzero(bad[:, col])
        gaps = np.diff(rows) - 1  # good pixels between consecutive bad pixels
        for start, gap in zip(rows[:-1].tolist(), gaps.tolist(), strict=True):
            if 0 < gap < gap_min:
                out[start + 1 : start + 1 + gap, col] = True
    return out


def find_defects(
    *,
    dark: CalibImage | None,
    flat: CalibImage | None,
    amp_boxes: Mapping[str, tuple[slice, slice]],
    config: DefectConfig | None = None,
) -> DefectResult:
    """Find hot, cold and bad-column defects on a combined dark and/or flat.

    Parameters
    ----------
    dark : `shared.images.CalibImage` or `None`
        Combined dark in e⁻/s.
    flat : `shared.images.CalibImage` or `None`
        Combined flat normalised to ≈ 1.
    amp_boxes : `~collections.abc.Mapping` [`str`, `tuple` [`slice`, `slice`]]
        Each amplifier's ``(rows, columns)`` region of the detector (``IsrResult.amp_boxes``).
    config : `DefectConfig`, optional
        Thresholds; defaults to ``DefectConfig()``.

    Returns
    -------
    result : `DefectResult`

    Raises
    ------
    ValueError
        If neither input is given or their shapes differ.
    """
    config = config or DefectConfig()
    inputs = [c for c in (dark, flat) if c is not None]
    if not inputs:
        raise ValueError("find_defects needs a dark, a flat or both")
    shape = inputs[0].image.shape
    if any(c.image.shape != shape for c in inputs):
        raise ValueError(f"dark and flat shapes differ: {[c.image.shape for c in inputs]}")

    mask = np.zeros(shape, dtype=bool)
    n_hot: dict[str, int] = {}
    n_cold: dict[str, int] = {}
    n_bad_columns: dict[str, int] = {}
    for name, box in amp_boxes.items():
        rows = len(range(*box[0].indices(shape[0])))
        hot = np.zeros(mask[box].shape, dtype=bool)
        cold = np.zeros_like(hot)
        nonfinite = np.zeros_like(hot)
        if dark is not None:
            amp = np.asarray(dark.image[box], dtype=np.float64)
            hot |= _dark_hot(amp, config)
            nonfinite |= ~np.isfinite(amp)
            if config.bad_mask_is_defect:
                nonfinite |= (np.asarray(dark.mask[box]) & int(MaskPlane.BAD)) != 0
        if flat is not None:
            amp = np.asarray(flat.image[box], dtype=np.float64)
            flat_hot, flat_cold = _flat_hot_cold(amp, config)
            hot |= flat_hot
            cold |= flat_cold
            nonfinite |= ~np.isfinite(amp)
            if config.bad_mask_is_defect:
                nonfinite |= (np.asarray(flat.mask[box]) & int(MaskPlane.BAD)) != 0
        bad = hot | cold | nonfinite
        n_min, gap_min = config.intermittent_thresholds(rows)
        bad = _fill_intermittent(bad, n_min, gap_min)
        full = bad.sum(axis=0) >= config.column_fill_threshold(rows)
        bad[:, full] = True
        mask[box] |= bad
        n_hot[name] = int(hot.sum())
        n_cold[name] = int(cold.sum())
        n_bad_columns[name] = int(full.sum())
    return DefectResult(
        boxes=boxes_from_mask(mask),
        mask=mask,
        n_hot=n_hot,
        n_cold=n_cold,
        n_bad_columns=n_bad_columns,
    )


def boxes_from_mask(mask: np.ndarray) -> list[Box]:
    """Decompose a boolean mask into boxes ``(x0, y0, width, height)`` whose union is the mask.

    Vertical runs are found in each column; runs with the same ``y0`` and height in adjacent
    columns are merged. Boxes are sorted by ``(x0, y0)``.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-d, got shape {mask.shape}")
    padded = np.zeros((mask.shape[0] + 2, mask.shape[1]), dtype=np.int8)
    padded[1:-1] = mask
    step = np.diff(padded, axis=0)  # +1 at a run start (row index), -1 one past its end
    start_cols, start_rows = np.nonzero(step.T == 1)
    _, end_rows = np.nonzero(step.T == -1)
    if start_cols.size == 0:
        return []
    heights = end_rows - start_rows
    # Group equal (y0, height) runs, ordered by column, and merge adjacent columns.
    order = np.lexsort((start_cols, heights, start_rows))
    cols, y0s, hs = start_cols[order], start_rows[order], heights[order]
    new_box = np.ones(cols.size, dtype=bool)
    new_box[1:] = (y0s[1:] != y0s[:-1]) | (hs[1:] != hs[:-1]) | (cols[1:] != cols[:-1] + 1)
    starts = np.flatnonzero(new_box)
    stops = np.append(starts[1:], cols.size)
    boxes = [
        (int(cols[a]), int(y0s[a]), int(cols[b - 1] - cols[a] + 1), int(hs[a]))
        for a, b in zip(starts.tolist(), stops.tolist(), strict=True)
    ]
    boxes.sort(key=lambda b: (b[0], b[1]))
    return boxes
