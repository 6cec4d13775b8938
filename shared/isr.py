"""Instrument signature removal (ISR) for calibration inputs and verification residuals.

The steps and their order follow IsrTaskLSST as configured for calibration products
(cp_algorithms.md §2.1): float conversion → serial overscan per row (ADU) → saturation mask →
gains (→ e⁻) → parallel overscan per column → assemble/trim → bias → dark (scaled by dark time)
→ variance → flat → NO_DATA mask for non-finite pixels.

Crosstalk, linearity, CTI, brighter-fatter and integer dithering are not applied.

Overscan fits (issue 13). IsrTaskLSST takes a median per row (serial) and per column
(parallel); each median's noise goes into every pixel of its row or column, ≈ (π/2)·σ²/n in
variance, plus a quantisation error on integer ADU. cpflow's default (``AUTO``, see
`fit_overscan_levels`) uses per-row *means* of the outlier-masked overscan (σ²/n) where the
overscan shows real row-to-row (column-to-column) structure, and a smooth polynomial along the
rows (columns) where it does not. ``MEDIAN_PER_ROW`` reproduces IsrTaskLSST.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from shared.images import CalibImage, MaskPlane, RawDetectorImage
from shared.instruments import AmplifierGeometry, Detector
from shared.stats import IQ_TO_STDEV, clipped_stdev, nanquantile_sorted

__all__ = [
    "OVERSCAN_FITS",
    "SMOOTH",
    "IsrConfig",
    "IsrResult",
    "OverscanFit",
    "assemble",
    "fit_overscan_levels",
    "parallel_overscan_per_column",
    "run_isr",
    "serial_overscan_per_row",
]

_OUTLIER_SIGMA = 3.0
"""Per-row outlier rejection in the overscan, in IQR-estimated sigma."""
_FILL_HALF_WIDTH = 5
"""Undefined overscan rows are filled from the median of this many neighbours on each side."""

OverscanFit = Literal["AUTO", "MEAN_PER_ROW", "MEDIAN_PER_ROW"]
"""How an overscan is turned into one level per row (serial) or per column (parallel).

``MEDIAN_PER_ROW`` is IsrTaskLSST's default (cp_algorithms.md §2.1): the median of each row's
overscan pixels after the outlier mask; its variance is ≈ (π/2)·σ²/n (n pixels per row) and,
on integer ADU, it carries a quantisation error that does not average down. ``MEAN_PER_ROW``
(also an ip_isr fit type) is the mean of the same kept pixels: variance σ²/n. ``AUTO`` (cpflow's
default) uses the per-row means when the overscan shows real row-to-row structure and a smooth
fit along the rows otherwise (see `fit_overscan_levels`).
"""
OVERSCAN_FITS: tuple[str, ...] = ("AUTO", "MEAN_PER_ROW", "MEDIAN_PER_ROW")
SMOOTH = "SMOOTH"
"""What ``AUTO`` reports when it used the smooth fit."""


@dataclass(frozen=True)
class _RowStatistics:
    """Per-row robust statistics of an overscan block (rows = the levels to estimate)."""

    median: np.ndarray
    mean: np.ndarray
    n_kept: np.ndarray
    sigma: float
    """Pooled standard deviation of a kept pixel about its row's mean (NaN if undefined)."""


def _row_statistics(block: np.ndarray) -> _RowStatistics:
    """Per-row median and mean of ``block`` after masking outliers at 3 IQR-sigma about the row median.

    Rows whose IQR-sigma exceeds twice the median IQR-sigma use the median sigma instead, so one
    noisy row cannot widen its own rejection window.
    """
    block = np.asarray(block, dtype=np.float64)
    if block.shape[1] == 0:
        raise ValueError("overscan region is empty after skipping leading/trailing pixels")
    n_good = np.isfinite(block).sum(axis=1)
    ordered = np.sort(block, axis=1)
    median = nanquantile_sorted(ordered, n_good, 0.5, axis=1)
    sigma = IQ_TO_STDEV * (
        nanquantile_sorted(ordered, n_good, 0.75, axis=1) - nanquantile_sorted(ordered, n_good, 0.25, axis=1)
    )
    if np.isfinite(sigma).any():
        typical = np.nanmedian(sigma)
        sigma = np.where(sigma > 2.0 * typical, typical, sigma)
    with np.errstate(invalid="ignore"):
        keep = np.abs(block - median[:, None]) <= _OUTLIER_SIGMA * sigma[:, None]
    clipped = np.where(keep, block, np.nan)
    n_kept = keep.sum(axis=1)
    ordered = np.sort(clipped, axis=1)
    medians = nanquantile_sorted(ordered, n_kept, 0.5, axis=1)
    sums = np.where(keep, block, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(n_kept > 0, sums / np.maximum(n_kept, 1), np.nan)
        deviations = np.where(keep, block - means[:, None], 0.0)
        dof = int(np.maximum(n_kept - 1, 0).sum())
        pooled = math.sqrt(float((deviations**2).sum()) / dof) if dof > 0 else math.nan
    return _RowStatistics(median=medians, mean=means, n_kept=n_kept, sigma=pooled)


def _smooth_fit(values: np.ndarray, variance: np.ndarray, order: int) -> np.ndarray:
    """Legendre polynomial of ``order`` fitted to the finite ``values`` (one 5-sigma rejection pass)."""
    x = np.linspace(-1.0, 1.0, values.size)
    good = np.isfinite(values) & np.isfinite(variance)
    coefficients = np.polynomial.legendre.legfit(x[good], values[good], order)
    fit = np.polynomial.legendre.legval(x, coefficients)
    inliers = good & (np.abs(values - fit) <= 5.0 * np.sqrt(variance))
    if order + 1 < inliers.sum() < good.sum():
        coefficients = np.polynomial.legendre.legfit(x[inliers], values[inliers], order)
        fit = np.polynomial.legendre.legval(x, coefficients)
    return np.asarray(fit, dtype=np.float64)


def fit_overscan_levels(
    block: np.ndarray, fit: str = "AUTO", *, order: int = 3, structure_sigma: float = 5.0
) -> tuple[np.ndarray, str]:
    """One overscan level per row of ``block``, and the fit that was used.

    ``MEDIAN_PER_ROW`` and ``MEAN_PER_ROW``: the robust median or mean of each row (outliers
    masked at 3 IQR-sigma; rows with no usable pixel filled from the median of their ±5
    neighbouring rows). ``AUTO``: the per-row means ``v_i`` (each with variance
    ``e_i = s²/n_i``, ``s`` the pooled pixel scatter, ``n_i`` the kept pixels) are compared with a
    Legendre polynomial ``p`` of ``order`` fitted along the rows. If
    ``r = mean((v_i - p_i)² / e_i)`` is within ``structure_sigma · sqrt(2 / (M - order - 1))``
    of 1 (M rows), the rows scatter about ``p`` as their own noise predicts, there is no
    row-to-row structure to keep, and ``p`` is used: its noise per row is ≈ (order + 1)/M of a
    per-row mean's. Otherwise (real structure such as row jitter, a bias jump, a badly fitted
    drift) the per-row means are kept, so structure is never smoothed away; the reported fit is
    then ``MEAN_PER_ROW``, else ``SMOOTH``.
    """
    if fit not in OVERSCAN_FITS:
        raise ValueError(f"unknown overscan fit {fit!r}; choose one of {', '.join(OVERSCAN_FITS)}")
    stats = _row_statistics(block)
    if fit == "MEDIAN_PER_ROW":
        return _fill_undefined(stats.median), fit
    values = _fill_undefined(stats.mean)
    if fit == "MEAN_PER_ROW":
        return values, fit
    defined = stats.n_kept > 0
    dof = int(defined.sum()) - order - 1
    if dof < 2 * (order + 1) or not (math.isfinite(stats.sigma) and stats.sigma > 0):
        return values, "MEAN_PER_ROW"
    with np.errstate(divide="ignore"):
        variance = np.where(defined, stats.sigma**2 / np.maximum(stats.n_kept, 1), np.nan)
    smooth = _smooth_fit(np.where(defined, values, np.nan), variance, order)
    ratio = float(np.mean((values[defined] - smooth[defined]) ** 2 / variance[defined]))
    if ratio <= 1.0 + structure_sigma * math.sqrt(2.0 / dof):
        return smooth, SMOOTH
    return values, "MEAN_PER_ROW"


def _fill_undefined(values: np.ndarray) -> np.ndarray:
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size == 0:
        return values
    if bad.size == values.size:
        raise ValueError("overscan has no usable pixel")
    filled = values.copy()
    for i in bad.tolist():
        window = values[max(0, i - _FILL_HALF_WIDTH) : i + _FILL_HALF_WIDTH + 1]
        window = window[np.isfinite(window)]
        filled[i] = np.median(window) if window.size else np.nanmedian(values)
    return filled


def _check_skip(size: int, leading: int, trailing: int, what: str) -> None:
    if leading < 0 or trailing < 0 or leading + trailing >= size:
        raise ValueError(f"cannot skip {leading}+{trailing} of the {size} {what}")


def _serial_overscan_block(
    raw_amp: np.ndarray, amp: AmplifierGeometry, leading_to_skip: int, trailing_to_skip: int, n_rows: int
) -> np.ndarray:
    _check_skip(amp.serial_overscan_cols, leading_to_skip, trailing_to_skip, "serial overscan columns")
    cols = amp.serial_overscan_slice[1]
    start = cols.start + leading_to_skip
    stop = cols.stop - trailing_to_skip
    return np.asarray(raw_amp[:n_rows, start:stop], dtype=np.float64)


def serial_overscan_per_row(
    raw_amp: np.ndarray,
    amp: AmplifierGeometry,
    *,
    leading_to_skip: int = 3,
    trailing_to_skip: int = 3,
    include_parallel_rows: bool = False,
    fit: OverscanFit = "AUTO",
    order: int = 3,
) -> np.ndarray:
    """Per-row level of the serial overscan, in the units of ``raw_amp``.

    Parameters
    ----------
    raw_amp : `numpy.ndarray`
        Raw amplifier array (``amp.raw_rows x amp.raw_cols``) in readout order.
    amp : `shared.instruments.AmplifierGeometry`
        Geometry of the amplifier.
    leading_to_skip, trailing_to_skip : `int`
        Overscan columns ignored next to the data section and at the far end.
    include_parallel_rows : `bool`
        Also return values for the parallel-overscan rows (needed before the parallel fit).
    fit, order : `str`, `int`
        See `fit_overscan_levels`.

    Returns
    -------
    level : `numpy.ndarray`
        Float64, one value per data row (or per raw row with ``include_parallel_rows``).
    """
    _check_shape(raw_amp, amp)
    n_rows = amp.raw_rows if include_parallel_rows else amp.data_rows
    block = _serial_overscan_block(raw_amp, amp, leading_to_skip, trailing_to_skip, n_rows)
    return fit_overscan_levels(block, fit, order=order)[0]


def parallel_overscan_per_column(
    amp_array: np.ndarray,
    amp: AmplifierGeometry,
    *,
    leading_to_skip: int = 3,
    trailing_to_skip: int = 3,
    max_deviation: float | None = 100.0,
    fit: OverscanFit = "AUTO",
    order: int = 3,
) -> np.ndarray:
    """Per-column level of the parallel overscan, one value per data column.

    Parameters
    ----------
    amp_array : `numpy.ndarray`
        Raw-shaped amplifier array from which the serial overscan has already been subtracted.
    amp : `shared.instruments.AmplifierGeometry`
        Geometry of the amplifier.
    leading_to_skip, trailing_to_skip : `int`
        Parallel-overscan rows ignored next to the data section and at the far end.
    max_deviation : `float`, optional
        Pixels more than this above zero (charge bleeding from saturated columns) are ignored,
        in the units of ``amp_array``. `None` disables the cut.
    fit, order : `str`, `int`
        See `fit_overscan_levels` (here along the columns).
    """
    return _parallel_levels(
        amp_array, amp, leading_to_skip, trailing_to_skip, max_deviation, fit=fit, order=order
    )[0]


def _parallel_levels(
    amp_array: np.ndarray,
    amp: AmplifierGeometry,
    leading_to_skip: int,
    trailing_to_skip: int,
    max_deviation: float | None,
    *,
    fit: str,
    order: int,
) -> tuple[np.ndarray, str]:
    _check_shape(amp_array, amp)
    _check_skip(amp.parallel_overscan_rows, leading_to_skip, trailing_to_skip, "parallel overscan rows")
    rows, cols = amp.parallel_overscan_slice
    block = np.asarray(
        amp_array[rows.start + leading_to_skip : rows.stop - trailing_to_skip, cols], dtype=np.float64
    )
    if max_deviation is not None:
        block = np.where(block > max_deviation, np.nan, block)
    return fit_overscan_levels(block.T, fit, order=order)


def _check_shape(array: np.ndarray, amp: AmplifierGeometry) -> None:
    if array.shape != (amp.raw_rows, amp.raw_cols):
        raise ValueError(
            f"amplifier {amp.name}: raw array has shape {array.shape}, geometry expects "
            f"{(amp.raw_rows, amp.raw_cols)}"
        )


def _orient(data: np.ndarray, amp: AmplifierGeometry) -> np.ndarray:
    if amp.flip_y:
        data = data[::-1, :]
    if amp.flip_x:
        data = data[:, ::-1]
    return data


def _place(data_sections: Mapping[str, np.ndarray], detector: Detector, dtype: np.dtype) -> np.ndarray:
    out = np.zeros(detector.shape, dtype=dtype)
    for amp in detector.amplifiers:
        out[amp.detector_slice] = _orient(data_sections[amp.name], amp)
    return out


def assemble(amplifier_arrays: Mapping[str, np.ndarray], detector: Detector) -> np.ndarray:
    """Assemble raw-shaped amplifier arrays into the trimmed detector image.

    Each amplifier's data section is flipped into detector orientation (``flip_y`` then
    ``flip_x``) and placed at ``amp.detector_slice``. The output dtype is the common dtype of
    the inputs.
    """
    missing = [a.name for a in detector.amplifiers if a.name not in amplifier_arrays]
    if missing:
        raise KeyError(f"detector {detector.name}: missing amplifiers {missing}")
    for amp in detector.amplifiers:
        _check_shape(amplifier_arrays[amp.name], amp)
    dtype = np.result_type(*(amplifier_arrays[a.name] for a in detector.amplifiers))
    return _place(
        {a.name: amplifier_arrays[a.name][a.data_slice] for a in detector.amplifiers}, detector, dtype
    )


@dataclass
class IsrConfig:
    """Switches of `run_isr`."""

    do_parallel_overscan: bool = True
    apply_gains: bool = True
    do_saturation: bool = True
    serial_leading_to_skip: int = 3
    serial_trailing_to_skip: int = 3
    parallel_leading_to_skip: int = 3
    parallel_trailing_to_skip: int = 3
    parallel_max_deviation: float | None = 100.0
    serial_fit: OverscanFit = "AUTO"
    parallel_fit: OverscanFit = "AUTO"
    overscan_order: int = 3
    """Order of the Legendre polynomial of the ``AUTO`` smooth fits."""


@dataclass
class IsrResult:
    """Output of `run_isr`.

    Attributes
    ----------
    image : `shared.images.CalibImage`
        Assembled, trimmed image (e⁻ if gains were applied, else ADU), mask and variance.
    overscan_noise_adu : `dict` [`str`, `float`]
        Per amplifier, the clipped stdev (3sigma, 3 passes) of the serial overscan minus its
        per-row fit, in ADU (cp_verify's ``READ_NOISE_ADU``).
    amp_boxes : `dict` [`str`, `tuple` [`slice`, `slice`]]
        Each amplifier's region in the assembled image.
    overscan_fits : `dict` [`str`, `dict` [`str`, `str`]]
        Per amplifier, the fit used for ``serial`` and ``parallel`` (``MEAN_PER_ROW``,
        ``MEDIAN_PER_ROW`` or ``SMOOTH``; see `fit_overscan_levels`).
    """

    image: CalibImage
    overscan_noise_adu: dict[str, float] = field(default_factory=dict)
    amp_boxes: dict[str, tuple[slice, slice]] = field(default_factory=dict)
    overscan_fits: dict[str, dict[str, str]] = field(default_factory=dict)


def _check_calib(calib: CalibImage | None, shape: tuple[int, int], what: str) -> None:
    if calib is not None and calib.image.shape != shape:
        raise ValueError(f"{what} has shape {calib.image.shape}, the detector is {shape}")


def run_isr(
    raw: RawDetectorImage,
    detector: Detector,
    *,
    config: IsrConfig | None = None,
    bias: CalibImage | None = None,
    dark: CalibImage | None = None,
    flat: CalibImage | None = None,
    gains: Mapping[str, float] | None = None,
) -> IsrResult:
    """Remove the instrument signature from one raw detector image.

    Parameters
    ----------
    raw : `shared.images.RawDetectorImage`
        Raw amplifier arrays in ADU, with ``DARKTIME`` in the header when ``dark`` is given.
    detector : `shared.instruments.Detector`
        Geometry (use `Detector.with_data_shape` for small simulated frames).
    config : `IsrConfig`, optional
        Step switches; defaults to ``IsrConfig()``.
    bias, dark, flat : `shared.images.CalibImage`, optional
        Combined calibrations in the output units. The dark is per second of dark time (header
        ``DARKTIME``, 1.0 if absent) and is scaled by ``raw.dark_time / DARKTIME``.
    gains : `~collections.abc.Mapping` [`str`, `float`], optional
        Gains in e⁻/ADU by amplifier name; amplifiers not listed use the nominal gain.

    Returns
    -------
    result : `IsrResult`
    """
    config = config or IsrConfig()
    shape = detector.shape
    _check_calib(bias, shape, "bias")
    _check_calib(dark, shape, "dark")
    _check_calib(flat, shape, "flat")
    missing = [a.name for a in detector.amplifiers if a.name not in raw.amplifiers]
    if missing:
        raise KeyError(f"raw image of detector {detector.name} lacks amplifiers {missing}")

    data_sections: dict[str, np.ndarray] = {}
    saturated: dict[str, np.ndarray] = {}
    overscan_noise: dict[str, float] = {}
    overscan_fits: dict[str, dict[str, str]] = {}
    read_noise_sq = np.empty(shape, dtype=np.float32)
    inverse_gain = np.empty(shape, dtype=np.float32)
    for amp in detector.amplifiers:
        raw_amp = raw.amplifiers[amp.name]
        _check_shape(raw_amp, amp)
        block = _serial_overscan_block(
            raw_amp, amp, config.serial_leading_to_skip, config.serial_trailing_to_skip, amp.raw_rows
        )
        serial, serial_fit = fit_overscan_levels(block, config.serial_fit, order=config.overscan_order)
        overscan_fits[amp.name] = {"serial": serial_fit}
        overscan_noise[amp.name] = clipped_stdev(block[: amp.data_rows] - serial[: amp.data_rows, None])

        array = raw_amp.astype(np.float32)
        array -= serial.astype(np.float32)[:, None]
        if config.do_saturation:
            saturated[amp.name] = raw_amp[amp.data_slice] >= amp.saturation
        gain = float(gains.get(amp.name, amp.gain)) if gains is not None else amp.gain
        if config.apply_gains:
            array *= np.float32(gain)
            read_noise, poisson_scale = amp.read_noise, 1.0
        else:
            read_noise, poisson_scale = amp.read_noise / gain, 1.0 / gain
        if config.do_parallel_overscan:
            columns, parallel_fit = _parallel_levels(
                array,
                amp,
                config.parallel_leading_to_skip,
                config.parallel_trailing_to_skip,
                config.parallel_max_deviation,
                fit=config.parallel_fit,
                order=config.overscan_order,
            )
            overscan_fits[amp.name]["parallel"] = parallel_fit
            array[amp.data_slice] -= columns.astype(np.float32)[None, :]
        data_sections[amp.name] = array[amp.data_slice]
        read_noise_sq[amp.detector_slice] = read_noise**2
        inverse_gain[amp.detector_slice] = poisson_scale

    image = _place(data_sections, detector, np.dtype(np.float32))
    mask = np.zeros(shape, dtype=np.int32)
    if saturated:
        mask[_place(saturated, detector, np.dtype(bool))] |= MaskPlane.SAT
    calib_variance = np.zeros(shape, dtype=np.float32)
    if bias is not None:
        image -= bias.image
        calib_variance += bias.variance
        mask |= bias.mask
    if dark is not None:
        scale = raw.dark_time / float(dark.header.get("DARKTIME", 1.0))
        image -= np.float32(scale) * dark.image
        calib_variance += np.float32(scale**2) * dark.variance
        mask |= dark.mask
    variance = np.maximum(image, 0.0) * inverse_gain + read_noise_sq + calib_variance
    if flat is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            flat_image = np.where(flat.image > 0, flat.image, np.nan).astype(np.float32)
            image /= flat_image
            variance /= flat_image**2
        mask |= flat.mask
    mask[~(np.isfinite(image) & np.isfinite(variance))] |= MaskPlane.NO_DATA

    header = raw.header.copy()
    if raw.exposure_id is not None:  # as afw writes EXPID into the images it writes
        header["EXPID"] = raw.exposure_id
    header["BUNIT"] = "electron" if config.apply_gains else "adu"
    for name, value in overscan_noise.items():
        if not np.isfinite(value):
            continue  # FITS headers cannot hold NaN
        header[f"HIERARCH LSST ISR OVERSCAN RESIDUAL SERIAL STDEV {name}"] = value
    return IsrResult(
        image=CalibImage(image=image, mask=mask, variance=variance.astype(np.float32), header=header),
        overscan_noise_adu=overscan_noise,
        amp_boxes={a.name: a.detector_slice for a in detector.amplifiers},
        overscan_fits=overscan_fits,
    )
