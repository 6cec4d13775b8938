"""Per-pixel clipped-mean combination of calibration inputs, strip by strip.

This is cp_pipe's ``CalibCombineTask`` with ``combine="MEANCLIP"`` (cp_algorithms.md §2.2): each
input is divided by its scale, inputs flagged in ``reject_mask`` or non-finite are dropped, and
each pixel is the afw-style clipped mean (first pass about the median with sigma = 0.7413·IQR, later
passes about the mean with the sample stdev) of the remaining inputs.

The per-pixel work is the compiled kernel `shared.clipkernel.clip_stack` (one fused pass per row,
threads over rows). Memory is bounded by processing ``rows_per_strip`` full-width rows at a time:
only one float32 stack of ``N x rows_per_strip x columns`` exists at once (none at all when the
inputs are given as one in-memory 3-D float32 array, which is read in place). Inputs are *strip
readers*: callables
that return the image (and optionally mask and variance) of a row slice, so a later version can
read strips lazily from FITS files; in-memory `CalibImage` inputs are wrapped automatically.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from astropy.io import fits

from shared.clipkernel import ClipResult, clip_stack, sorting_network_for
from shared.images import CalibImage, MaskPlane

__all__ = [
    "CombineResult",
    "StripReader",
    "combine_clipped_mean",
    "prepare_combine",
    "provenance_header",
    "qa_percentiles",
]

StripReader = Callable[[slice], tuple[np.ndarray, ...]]
"""``reader(rows) -> (image, mask | None[, variance])`` for the full-width rows ``rows``."""

_DEFAULT_REJECT = int(MaskPlane.SAT | MaskPlane.DETECTED | MaskPlane.INTRP)
QA_PERCENTILES = (0, 5, 16, 50, 84, 95, 100)
ROWS_PER_STRIP = 128
"""Full-width rows stacked at once when the inputs are strip readers or images."""


@dataclass
class CombineResult:
    """Output of `combine_clipped_mean`.

    Attributes
    ----------
    image : `shared.images.CalibImage`
        The combined image (empty header; the caller adds provenance), with only the BAD mask
        plane set.
    n_good : `numpy.ndarray`
        int16 per pixel: number of inputs kept by the last clipping pass.
    n_inputs : `int`
        Number of inputs.
    """

    image: CalibImage
    n_good: np.ndarray
    n_inputs: int


def _calib_reader(calib: CalibImage) -> StripReader:
    def read(rows: slice) -> tuple[np.ndarray, ...]:
        return calib.image[rows], calib.mask[rows], calib.variance[rows]

    return read


def _unpack(strip: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    if len(strip) == 2:
        return strip[0], strip[1], None
    if len(strip) == 3:
        return strip[0], strip[1], strip[2]
    raise ValueError(f"a strip reader must return 2 or 3 arrays, got {len(strip)}")


def _strip_stack(
    readers: Sequence[StripReader],
    strip: slice,
    cols: int,
    scale_values: np.ndarray,
    reject_mask: int,
) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Scaled float32 stack of one strip (rejected inputs NaN) and the raw input variances."""
    n_rows = strip.stop - strip.start
    stack = np.empty((len(readers), n_rows, cols), dtype=np.float32)
    variances: list[np.ndarray | None] = []
    for i, read in enumerate(readers):
        data, mask, var = _unpack(read(strip))
        if data.shape != (n_rows, cols):
            raise ValueError(f"input {i}: strip {strip} has shape {data.shape}, expected {(n_rows, cols)}")
        np.divide(data, scale_values[i], out=stack[i], casting="unsafe")
        if mask is not None:
            stack[i][(mask & reject_mask) != 0] = np.nan
        variances.append(var)
    return stack, variances


def prepare_combine(n_inputs: int, shape: tuple[int, int], rows_per_strip: int = ROWS_PER_STRIP) -> None:
    """Start compiling the sorting network a combine of ``n_inputs`` images of ``shape`` sorts with.

    Only strips large enough use one (`shared.clipkernel.sorting_network_for`). The compile
    (seconds, once per depth and machine) runs in the background: called before the inputs'
    ISR, the network is usually ready when the combine starts. Without it the combine gives the
    same result, sorting from the comparator table.
    """
    sorting_network_for(n_inputs, min(rows_per_strip, shape[0]) * shape[1])


def combine_clipped_mean(
    inputs: Sequence[StripReader] | Sequence[CalibImage] | np.ndarray,
    *,
    scales: Sequence[float] | None = None,
    n_sigma: float = 3.0,
    n_iter: int = 3,
    rows_per_strip: int = ROWS_PER_STRIP,
    reject_mask: int = _DEFAULT_REJECT,
    shape: tuple[int, int] | None = None,
    method: str = "afw",
) -> CombineResult:
    """Combine images with a per-pixel afw-style clipped mean.

    Parameters
    ----------
    inputs : `~collections.abc.Sequence` of `shared.images.CalibImage` or strip readers, or `numpy.ndarray`
        The images to combine, all of one shape. A strip reader is called with a row slice and
        returns ``(image, mask_or_None)`` or ``(image, mask_or_None, variance)`` for those rows.
        A 3-D array ``(N, rows, cols)`` is N images without mask or variance; it is read in place
        (float32 strips are not copied).
    scales : `~collections.abc.Sequence` [`float`], optional
        Each input is divided by its scale (variance by its square); default 1.
    n_sigma, n_iter : `float`, `int`
        Clipping half-width and number of passes (cp_pipe: 3sigma, 3 passes).
    rows_per_strip : `int`
        Number of full-width rows stacked at once.
    reject_mask : `int`
        Inputs whose mask has any of these bits at a pixel are dropped there.
    shape : `tuple` [`int`, `int`], optional
        Image shape; required when ``inputs`` are strip readers.
    method : `str`
        Clipping definition of `shared.clipkernel.clip_stack`: ``"afw"`` (cp_pipe's MEANCLIP,
        the default) or ``"astropy"`` (``astropy.stats.sigma_clip`` with a median centre; used to
        compare with astropy).

    Returns
    -------
    result : `CombineResult`
        Image = clipped mean; variance = clipped variance / n_kept (n_kept ≥ 2), else the
        scaled input variance (the median output variance if a reader gives none). Pixels with
        no good input, or a non-finite result, are flagged BAD and set to the median of the good
        pixels.
    """
    n_inputs = len(inputs)
    if n_inputs == 0:
        raise ValueError("nothing to combine")
    if rows_per_strip < 1:
        raise ValueError(f"rows_per_strip must be positive, got {rows_per_strip}")
    readers: list[StripReader] = []
    shapes = set()
    cube = inputs if isinstance(inputs, np.ndarray) else None
    if cube is not None:
        if cube.ndim != 3:
            raise ValueError(f"an array of inputs must be 3-D (N, rows, cols), got shape {cube.shape}")
        shapes.add(cube.shape[1:])
    else:
        for item in inputs:
            if isinstance(item, CalibImage):
                readers.append(_calib_reader(item))
                shapes.add(item.image.shape)
            else:
                readers.append(item)
    if shape is not None:
        shapes.add(tuple(shape))
    if len(shapes) != 1:
        raise ValueError(f"inputs must share one shape (pass shape= for strip readers), got {sorted(shapes)}")
    rows, cols = shapes.pop()
    scale_values = np.ones(n_inputs) if scales is None else np.asarray(scales, dtype=np.float64)
    if scale_values.shape != (n_inputs,):
        raise ValueError(f"{len(scale_values)} scales for {n_inputs} inputs")
    if not (np.all(np.isfinite(scale_values)) and np.all(scale_values != 0)):
        raise ValueError(f"scales must be finite and non-zero, got {scale_values.tolist()}")

    # The kernel writes straight into the output images (float32 mean, variance of the mean,
    # int16 counts); only pixels with fewer than two kept inputs need a second look.
    image = np.empty((rows, cols), dtype=np.float32)
    variance = np.empty((rows, cols), dtype=np.float32)
    n_good = np.empty((rows, cols), dtype=np.int16)
    kept_index = np.empty((rows, cols), dtype=np.int16)
    single_variance_missing: np.ndarray | None = None
    n_empty = 0
    n_single = 0
    in_place = cube is not None and cube.dtype == np.float32
    step = rows if in_place else rows_per_strip
    for r0 in range(0, rows, max(step, 1)):
        strip = slice(r0, min(r0 + step, rows))
        out = ClipResult(image[strip], variance[strip], n_good[strip], kept_index[strip])
        variances: list[np.ndarray | None]
        if cube is not None:
            # Float32 planes are read in place and scaled inside the kernel, exactly as
            # np.divide would; other dtypes are converted a strip at a time.
            stack = cube[:, strip].astype(np.float32, copy=False)
            clip_stack(
                stack,
                method=method,
                n_sigma=n_sigma,
                n_iter=n_iter,
                scales=scale_values,
                out=out,
                variance_of_mean=True,
            )
            variances = [None] * n_inputs
        else:
            stack, variances = _strip_stack(readers, strip, cols, scale_values, reject_mask)
            clip_stack(stack, method=method, n_sigma=n_sigma, n_iter=n_iter, out=out, variance_of_mean=True)
        del stack
        n_empty += out.n_empty
        n_single += out.n_single
        if out.n_single:
            # Exactly one input is kept there: take its (scaled) variance.
            single = out.n_kept == 1
            filled = np.zeros(single.shape, dtype=bool)
            for i, var in enumerate(variances):
                if var is None:
                    continue
                here = single & (out.kept_index == i)
                out.variance[here] = var[here] / scale_values[i] ** 2
                filled |= here
            missing = single & ~filled
            if missing.any():
                if single_variance_missing is None:
                    single_variance_missing = np.zeros((rows, cols), dtype=bool)
                single_variance_missing[strip] = missing

    mask = np.zeros((rows, cols), dtype=np.int32)
    # The mean of kept finite values is finite, and with two or more kept the variance is too:
    # only frames with empty or single-input pixels need the searches below.
    if n_empty:
        bad = (n_good == 0) | ~np.isfinite(image)
        if bad.all():
            raise ValueError("no pixel has a good input")
        mask[bad] = MaskPlane.BAD
        image[bad] = _typical(image, ~bad)
    else:
        bad = None
    if n_empty or n_single:
        fill_variance = ~np.isfinite(variance)
        if single_variance_missing is not None:
            fill_variance |= single_variance_missing
        to_fill = fill_variance if bad is None else fill_variance | bad
        if to_fill.any():
            usable = ~to_fill
            variance[to_fill] = _typical(variance, usable) if usable.any() else np.nan
            mask[~np.isfinite(variance)] |= MaskPlane.BAD
    return CombineResult(
        image=CalibImage(image=image, mask=mask, variance=variance),
        n_good=n_good,
        n_inputs=n_inputs,
    )


def _typical(values: np.ndarray, usable: np.ndarray, max_samples: int = 1 << 20) -> float:
    """Median of ``values[usable]``, from at most ``max_samples`` evenly spaced pixels.

    It only fills the few pixels without a good value; a full-frame median (16 M pixels) would
    cost a third of the whole combine.
    """
    step = max(1, values.size // max_samples)
    sample = values.ravel()[::step][usable.ravel()[::step]]
    if sample.size == 0:
        sample = values[usable]
    return float(np.median(sample))


def provenance_header(inputs: Sequence[Mapping], calib_type: str, n_combined: int) -> fits.Header:
    """Provenance cards of a combined calibration.

    Parameters
    ----------
    inputs : `~collections.abc.Sequence` of `~collections.abc.Mapping`
        One mapping per input with keys ``exposure``, ``date``, ``exposure_time`` and ``scale``.
    calib_type : `str`
        ``bias``, ``dark``, ``flat``, ... (written upper-case as OBSTYPE).
    n_combined : `int`
        Number of inputs combined.
    """
    header = fits.Header()
    header["OBSTYPE"] = (calib_type.upper(), "calibration type")
    header["NCOMBINE"] = (int(n_combined), "number of inputs combined")
    created = datetime.now(UTC)
    header["HIERARCH CALIB_CREATION_DATETIME"] = created.isoformat(timespec="seconds")
    # ip_isr's provenance cards (read by IsrTaskLSST; "Unknown" without them).
    header["HIERARCH CALIB_CREATION_DATE"] = created.strftime("%Y-%m-%d")
    header["HIERARCH CALIB_CREATION_TIME"] = created.strftime("%H:%M:%S")
    for i, item in enumerate(inputs):
        header[f"HIERARCH CPP_INPUT_{i}"] = int(item["exposure"])
        header[f"HIERARCH CPP_INPUT_DATE_{i}"] = str(item["date"])
        header[f"HIERARCH CPP_INPUT_EXPT_{i}"] = float(item["exposure_time"])
        header[f"HIERARCH CPP_INPUT_SCALE_{i}"] = float(item["scale"])
    return header


def qa_percentiles(
    image: CalibImage, amp_boxes: Mapping[str, tuple[slice, slice]], calib_type: str
) -> dict[str, float]:
    """Per-amplifier distribution percentiles and BAD pixel counts of a combined calibration.

    Keys are ``LSST CALIB {TYPE} {amp} DISTRIBUTION {p}-PCT`` for p in 0, 5, 16, 50, 84, 95, 100
    (over the pixels not flagged BAD, NaN if none) and ``LSST CALIB {TYPE} {amp} BADPIX-NUM``.
    """
    kind = calib_type.upper()
    result: dict[str, float] = {}
    for amp, box in amp_boxes.items():
        pixels = image.image[box]
        bad = ((image.mask[box] & MaskPlane.BAD) != 0) | ~np.isfinite(pixels)
        values = pixels[~bad].astype(np.float64)
        levels = np.percentile(values, QA_PERCENTILES) if values.size else [np.nan] * len(QA_PERCENTILES)
        for p, level in zip(QA_PERCENTILES, levels, strict=True):
            result[f"LSST CALIB {kind} {amp} DISTRIBUTION {p}-PCT"] = float(level)
        result[f"LSST CALIB {kind} {amp} BADPIX-NUM"] = float(bad.sum())
    return result
