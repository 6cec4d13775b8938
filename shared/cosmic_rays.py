"""A small cosmic-ray finder and repairer for verification residual images (no afw).

cp_verify measures ``CR_NOISE``, the unclipped standard deviation of a residual image after its
cosmic rays have been found and interpolated over by ``RepairTask`` (a Gaussian PSF of FWHM
3 px; cp_algorithms.md §1.1). This module is cpflow's own, simpler version of that step, in the
spirit of afw's ``findCosmicRays``:

1. **Candidates.** Unmasked pixels more than ``threshold`` σ (5) above their local background,
   the median of the unmasked pixels of the 5×5 box centred on the pixel. σ is given by the
   caller (the amplifier's clipped standard deviation). The 5×5 median is only evaluated at
   pixels more than ``threshold - 3`` σ above the image median, which leaves the result
   unchanged unless the local background is more than 3σ below the image median (never the
   case for a bias or dark residual) and makes the finder ~50× faster than a full median filter.
2. **Sharpness.** A candidate is a cosmic ray if it is sharper than the PSF allows along at
   least one of the four directions through it (rows, columns, both diagonals)::

       (v - sharpness·σ) · ρ(r) > (m - b) + sharpness·σ/√2

   where ``v`` is the candidate above the background ``b``, ``m`` the mean of the two opposite
   neighbours at distance ``r`` (1 or √2 px) and ``ρ(r) = exp(-r² / 2s²)`` the ratio of a
   Gaussian PSF of FWHM 3 px (``s = FWHM / 2.355``) at ``r`` to its peak (0.74 at 1 px, 0.54
   at √2 px). A star or any PSF-like source fails this for every direction; a single hot pixel
   or a track of a few pixels passes it across the track. ``sharpness`` (2.5, afw's
   ``cond3_fac``) allows for the noise of the candidate and of the pair mean (σ/√2), so that
   noise does not turn the wing of a PSF-like source into a cosmic ray (a ~3.5σ margin). σ is
   the same for every pixel: shot noise is not modelled, which is right for bias and dark
   residuals, the intended input. Masked
   neighbours count as background. Here ``b`` is the lower of the 5×5 median and the image
   median: over-estimating the background by δ makes a PSF look sharp once
   ``δ(1 - ρ) > sharpness·σ·ρ``, and the 5×5 median of a star sits high on its wings;
   under-estimating it only costs sensitivity to cosmic rays far fainter than 1000 e⁻.
3. **Growth.** The cosmic-ray pixels are grown by ``grow`` px (1; 3×3 dilation) to catch their
   fainter edges; masked pixels are never flagged.
4. **Repair.** Each flagged pixel is replaced by the median of the unflagged, unmasked pixels of
   the 5×5 box around it (9×9, then 17×17 when the box holds none, then the image median).

If more than ``max_fraction`` (5 %) of the unmasked pixels would be flagged,
`TooManyCosmicRays` is raised: the analogue of afw's ``LengthError``, which makes cp_verify set
``FORCE_FAILURE`` and fail the ``PROCESSING`` test.

The number of cosmic rays is the number of 8-connected groups of cosmic-ray pixels before growth.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = [
    "CR_GROW",
    "CR_MAX_FRACTION",
    "CR_PSF_FWHM",
    "CR_SHARPNESS",
    "CR_THRESHOLD",
    "TooManyCosmicRays",
    "find_and_repair",
]

CR_THRESHOLD = 5.0
"""Candidates are more than this many σ above the local (5×5 median) background."""
CR_SHARPNESS = 2.5
"""σ subtracted from a candidate before the PSF sharpness test (afw ``cond3_fac``)."""
CR_PSF_FWHM = 3.0
"""FWHM (px) of the Gaussian PSF a cosmic ray must be sharper than (cp_verify's ``psfFwhm``)."""
CR_GROW = 1
"""Pixels by which the cosmic rays are grown before repair."""
CR_MAX_FRACTION = 0.05
"""Largest fraction of the unmasked pixels that may be flagged (else `TooManyCosmicRays`)."""

_BACKGROUND_HALF = 2  # 5×5 background box
_PREFILTER_MARGIN = 3.0  # σ below the threshold at which the local background is evaluated
_REPAIR_HALVES = (2, 4, 8)  # 5×5, 9×9, 17×17 repair boxes
# (dy, dx) of one neighbour of each opposite pair; the other is (-dy, -dx).
_DIRECTIONS = ((0, 1), (1, 0), (1, 1), (1, -1))


class TooManyCosmicRays(RuntimeError):
    """More than the allowed fraction of the pixels would be flagged as cosmic rays.

    Attributes
    ----------
    n_flagged : `int`
        Number of pixels that would be flagged (after growth).
    n_pixels : `int`
        Number of unmasked pixels of the image.
    """

    def __init__(self, n_flagged: int, n_pixels: int, max_fraction: float) -> None:
        super().__init__(
            f"{n_flagged} of {n_pixels} pixels ({n_flagged / max(n_pixels, 1):.1%}) would be flagged as "
            f"cosmic rays, more than {max_fraction:.0%}"
        )
        self.n_flagged = n_flagged
        self.n_pixels = n_pixels


def find_and_repair(
    image: np.ndarray,
    mask: np.ndarray | None,
    sigma: float,
    *,
    threshold: float = CR_THRESHOLD,
    sharpness: float = CR_SHARPNESS,
    psf_fwhm: float = CR_PSF_FWHM,
    grow: int = CR_GROW,
    max_fraction: float = CR_MAX_FRACTION,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Find the cosmic rays of a residual image and interpolate over them (see the module doc).

    Parameters
    ----------
    image : `numpy.ndarray`
        2-d residual image (e⁻), background ≈ 0 or smooth.
    mask : `numpy.ndarray` or `None`
        Pixels to ignore (True or non-zero), of the shape of ``image``. Non-finite pixels are
        ignored too. Ignored pixels are neither flagged nor changed, nor used as background.
    sigma : `float`
        Noise per pixel (e⁻), e.g. the clipped standard deviation of the amplifier; > 0.
    threshold, sharpness, psf_fwhm, grow, max_fraction
        See the module constants.

    Returns
    -------
    repaired : `numpy.ndarray`
        Float64 copy of ``image`` with the cosmic-ray pixels replaced.
    cr_mask : `numpy.ndarray`
        Boolean mask of the replaced pixels (grown cosmic rays).
    n_cr : `int`
        Number of cosmic rays (8-connected groups before growth).

    Raises
    ------
    TooManyCosmicRays
        If more than ``max_fraction`` of the unmasked pixels would be flagged.
    ValueError
        If ``image`` is not 2-d, ``mask`` has another shape, or ``sigma`` is not positive.
    """
    data = np.asarray(image, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"image must be 2-d, got shape {data.shape}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be positive and finite, got {sigma}")
    bad = ~np.isfinite(data)
    if mask is not None:
        mask_arr = np.asarray(mask)
        if mask_arr.shape != data.shape:
            raise ValueError(f"mask has shape {mask_arr.shape}, image has {data.shape}")
        bad |= mask_arr.astype(bool)
    n_good = int(np.count_nonzero(~bad))
    cr_mask = np.zeros(data.shape, dtype=bool)
    if n_good == 0:
        return data.copy(), cr_mask, 0

    work = np.where(bad, np.nan, data)
    image_median = _median(np.asarray(image)[~bad])

    # 1. Candidates above the local 5×5 median.
    prefilter = ~bad & (work - image_median > (threshold - _PREFILTER_MARGIN) * sigma)
    ys, xs = np.nonzero(prefilter)
    h = _BACKGROUND_HALF
    if ys.size:
        # The 5×5 boxes of the candidates, reflected at the edges (as np.pad mode "reflect").
        background = _nanmedian_rows(_boxes(work, ys, xs, h))
        value = data[ys, xs] - background
        keep = value > threshold * sigma
        ys, xs, background, value = ys[keep], xs[keep], background[keep], value[keep]

    # 2. Sharper than the PSF along at least one direction, above a background that a source
    # cannot raise (the 5×5 median sits on the wings of a star, which would make it look sharp).
    if ys.size:
        background = np.minimum(background, image_median)
        value = data[ys, xs] - background
        psf_sigma = psf_fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        sharp = np.zeros(ys.size, dtype=bool)
        for dy, dx in _DIRECTIONS:
            ratio = math.exp(-(dy * dy + dx * dx) / (2.0 * psf_sigma**2))
            pair = np.stack([_at(work, ys + dy, xs + dx), _at(work, ys - dy, xs - dx)])
            n_pair = np.count_nonzero(np.isfinite(pair), axis=0)
            pair_sum = np.nansum(pair - background, axis=0)
            neighbour = np.divide(pair_sum, n_pair, out=np.zeros_like(pair_sum), where=n_pair > 0)
            neighbour_noise = sigma / np.sqrt(np.maximum(n_pair, 1))
            sharp |= (value - sharpness * sigma) * ratio > neighbour + sharpness * neighbour_noise
        ys, xs = ys[sharp], xs[sharp]

    if ys.size == 0:
        return data.copy(), cr_mask, 0
    cr_mask[ys, xs] = True
    n_cr = int(ndimage.label(cr_mask, structure=np.ones((3, 3), dtype=bool))[1])

    # 3. Growth.
    if grow > 0:
        # ``grow`` 3×3 dilations (outside pixels False) = one (2·grow + 1)² square dilation,
        # done on the few seed pixels only.
        seeds_y, seeds_x = ys, xs
        for dy in range(-grow, grow + 1):
            for dx in range(-grow, grow + 1):
                yy, xx = seeds_y + dy, seeds_x + dx
                inside = (yy >= 0) & (yy < data.shape[0]) & (xx >= 0) & (xx < data.shape[1])
                cr_mask[yy[inside], xx[inside]] = True
    cr_mask &= ~bad
    n_flagged = int(np.count_nonzero(cr_mask))
    if n_flagged > max_fraction * n_good:
        raise TooManyCosmicRays(n_flagged, n_good, max_fraction)

    # 4. Repair with the median of the unflagged, unmasked neighbours.
    repaired = data.copy()
    source = np.where(cr_mask, np.nan, work)
    ys, xs = np.nonzero(cr_mask)
    values = np.full(ys.size, np.nan)
    todo = np.arange(ys.size)
    for half in _REPAIR_HALVES:
        if todo.size == 0:
            break
        boxes = _boxes(source, ys[todo], xs[todo], half)
        has_any = np.isfinite(boxes).any(axis=1)
        if has_any.any():
            values[todo[has_any]] = _nanmedian_rows(boxes[has_any])
        todo = todo[~has_any]
    if todo.size:
        remaining = source[np.isfinite(source)]
        values[todo] = float(np.median(remaining)) if remaining.size else image_median
    repaired[ys, xs] = values
    return repaired, cr_mask, n_cr


def _reflect(index: np.ndarray, size: int) -> np.ndarray:
    """Indices past either edge reflected back (the edge not repeated), as ``np.pad`` "reflect"."""
    if size == 1:
        return np.zeros_like(index)
    period = 2 * (size - 1)
    folded = np.mod(index, period)
    return np.where(folded < size, folded, period - folded)


def _at(image: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """``image[ys, xs]`` with out-of-range indices reflected (a reflect-padded image, not built)."""
    return image[_reflect(ys, image.shape[0]), _reflect(xs, image.shape[1])]


def _boxes(image: np.ndarray, ys: np.ndarray, xs: np.ndarray, half: int) -> np.ndarray:
    """The ``(2·half + 1)²`` boxes centred on ``(ys, xs)``, one per row, reflected at the edges."""
    offsets = np.arange(-half, half + 1)
    rows = _reflect(ys[:, None] + offsets, image.shape[0])
    cols = _reflect(xs[:, None] + offsets, image.shape[1])
    return image[rows[:, :, None], cols[:, None, :]].reshape(ys.size, -1)


def _nanmedian_rows(rows: np.ndarray) -> np.ndarray:
    """``np.nanmedian(rows, axis=1)`` (same values: the two middle values' sum / 2), NaN if none."""
    ordered = np.sort(rows, axis=1)  # NaN last
    counts = np.count_nonzero(~np.isnan(ordered), axis=1)
    high = counts // 2
    low = np.where(counts % 2 == 1, high, high - 1)
    index = np.arange(rows.shape[0])
    with np.errstate(invalid="ignore"):
        result = (ordered[index, low] + ordered[index, high]) / 2.0
    return np.where(counts > 0, result, np.nan)


def _median(values: np.ndarray) -> float:
    """``np.median`` of the float64 values of ``values`` (1-D; float32 is not converted first)."""
    work = np.array(values, dtype=values.dtype if values.dtype == np.float32 else np.float64)
    n = work.size
    middle = (n - 1) // 2
    if n % 2:
        work.partition(middle)
        return float(work[middle])
    work.partition([middle, middle + 1])
    return (float(work[middle]) + float(work[middle + 1])) / 2.0
