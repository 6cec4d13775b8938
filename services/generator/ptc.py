"""Photon transfer curve: flat-pair extraction and fits, after cp_pipe's ``cpPtcExtract``/``cpPtcSolve``.

The behaviour follows cp_algorithms.md §4 and facts 11–12; the code is cpflow's own.

Inputs are ISR-processed flats **in ADU** (``IsrConfig(apply_gains=False)``), paired by exposure time
(`pair_exposures`).

Extraction (`extract_pair`), per amplifier, with masked (SUSPECT, BAD, NO_DATA, SAT) and non-finite
pixels excluded:

* ``mu1, mu2`` = afw clipped means (5.5σ, 3 passes); ``mean = (mu1 + mu2) / 2``;
* symmetric difference ``d = (mu2·I1 − mu1·I2) / mean`` (cancels the fixed pattern and a flux
  difference between the two exposures);
* ``variance = ½ · VARIANCECLIP(d) · k²`` with ``k`` the sigma-clipping correction of a Gaussian
  truncated at ``n_sigma`` (`sigma_clip_correction`);
* covariances ``C_ij`` (``i`` = lag along x/columns, ``j`` = lag along y/rows, ``0 ≤ i, j < max_lag``)
  of ``d`` over the pixels kept by the clipping, by zero-padded FFT (Astier+19 App. A)::

      cov(dx, dy) = Σ d(x)d(x+δ)/n − Σ₊ d · Σ₋ d / n²      (n = number of overlapping pixel pairs)

  averaged over ``(dx, dy)`` and ``(dx, −dy)`` when both are non-zero, then ``C_ij = ½·cov·k²``.
  Their inverse standard errors are ``1/sqrt(Var(C_ij))`` with ``Var(C_ij) = (½·var(d))²/n``
  (twice that at (0, 0)).

Departures from cp_pipe, because cpflow's ISR neither linearises nor models the overscan noise:

* ``variance`` excludes the noise common to whole rows or columns of one exposure (the per-row
  serial and per-column parallel overscan medians add ~(π/2)·σ²·(1/58 + 1/42) ≈ 6 % to the
  read-noise variance): the excess variance of the row and column means of the difference over
  the pixel noise is subtracted (``remove_line_noise``; `PairMeasurement.line_noise_variance`).
* ``fit_nonlinearity`` (default) adds a residual-nonlinearity factor ``1 − c·(μg)²`` to Eq. 16
  and starts the outlier rejection from every point below the roll-over (`_rollover_mean`)
  instead of the points under ``max_signal_initial_e``; the outlier fits are then weighted by
  1/sqrt(variance). ``fit_nonlinearity=False`` is cp_pipe's procedure.

Solve (`solve_ptc`), per amplifier:

1. pre-selection: finite, ``0 < mean < 1e6`` ADU, variance > 0;
2. ``approx_gain = median(mean/variance)``; first fit (unweighted, Astier+19 Eq. 16 via
   `fit_exp_approximation`) only on points with mean and variance ≤ ``max_signal_initial_e /
   approx_gain``;
3. keep the points with ``|variance − model| / sqrt(variance) < sigma_cut`` (5); going up in signal, a
   kept point that follows a rejected one with a mean jump ≥ ``max_delta_initial_e / approx_gain``
   (9000 e⁻) is rejected with every point above it; refit on the kept points; at most
   ``max_iterations`` (2) passes or until the mask stops changing;
4. final fit weighted by the C00 inverse standard errors, parameter errors scaled by the reduced
   χ²; ``gain = g``, ``noise = sqrt(n00)`` e⁻, ``turnoff`` = largest retained mean (ADU),
   ``turnoff_e = turnoff × gain``.

Points past full well have a *decreasing* variance, so they fall far below the model and are
rejected by step 3: the turnoff is the last point before the PTC rolls over (resolution = spacing
of the exposure levels; `AmpPtc.turnoff_sampling_error` is half the gap to the next point).

``fit_type="FULLCOVARIANCE"`` additionally fits the Astier+19 Eq. 20 model (`fit_full_covariance`)
to the covariance matrices of the retained pairs, up to lag ``full_cov_range``; gain, noise and
a00 then come from that fit (turnoff and mask always come from the EXPAPPROXIMATION step, as in
cp_pipe). The simplification with respect to cp_pipe: the start values come from one weighted
parabola per lag (no iterated parabola outlier clipping), there is no long-range covariance
subtraction and no bootstrap errors.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.fft
from astropy.table import Table
from scipy.optimize import least_squares
from scipy.signal import fftconvolve

from shared.images import CalibImage, MaskPlane
from shared.stats import clipped_stats

__all__ = [
    "DEFAULT_MASK_PLANES",
    "FIT_TYPES",
    "AmpPtc",
    "FullCovarianceFit",
    "PairMeasurement",
    "exp_approximation_model",
    "extract_pair",
    "fit_exp_approximation",
    "fit_full_covariance",
    "full_covariance_model",
    "gain_from_flat_pairs",
    "pair_exposures",
    "ptc_table",
    "sigma_clip_correction",
    "solve_ptc",
]

DEFAULT_MASK_PLANES = int(MaskPlane.SUSPECT | MaskPlane.BAD | MaskPlane.NO_DATA | MaskPlane.SAT)
"""Mask planes excluded from the PTC statistics (cp_pipe's ``maskNameList``)."""

FIT_TYPES = ("EXPAPPROXIMATION", "FULLCOVARIANCE", "FULLCOVARIANCE_NO_B")

_EXP_LOWER = (-1e-4, 0.1, 0.0)
_EXP_UPPER = (0.0, 10.0, 2000.0)
_EXP_START = (-2e-6, 1.5, 25.0)
_A_SCALE = 1e6
"""a00 is fitted as ``a00 * 1e6`` so that the three parameters have similar magnitudes."""
_NL_SCALE = 1e11
"""The nonlinearity coefficient (1/e⁻², ~1e-11) is fitted as ``c * 1e11``."""
_NL_BOUND = 1e-10
"""Bound on ``|c|``: a 100 % variance deficit at 100 000 e⁻."""
_FULL_PIXELS = 10_000
"""cp_pipe's minimum number of pixels per amplifier and pair."""


# --------------------------------------------------------------------------------------------------
# Pairing and extraction


def pair_exposures(exposures: Sequence[tuple[int, float]], tolerance: float = 5e-3) -> list[tuple[int, int]]:
    """Pair flat exposures by exposure time (cp_pipe ``matchExposuresType='TIME'``).

    Exposures are grouped with the first exposure of an existing group whose time is within
    ``tolerance`` seconds, in input order. Each group with at least two exposures gives one pair,
    its first two exposures in input order; extra exposures are ignored and singletons dropped.

    Parameters
    ----------
    exposures : `~collections.abc.Sequence` [`tuple` [`int`, `float`]]
        ``(exposure id, exposure time in s)``.
    tolerance : `float`
        Maximum exposure-time difference within a pair, in s.

    Returns
    -------
    pairs : `list` [`tuple` [`int`, `int`]]
        Pairs of exposure ids, sorted by exposure time.
    """
    groups: list[tuple[float, list[int]]] = []
    for exp_id, exp_time in exposures:
        for time, members in groups:
            if abs(float(exp_time) - time) <= tolerance:
                members.append(int(exp_id))
                break
        else:
            groups.append((float(exp_time), [int(exp_id)]))
    paired = [(time, (members[0], members[1])) for time, members in groups if len(members) >= 2]
    paired.sort(key=lambda item: item[0])
    return [pair for _, pair in paired]


def sigma_clip_correction(n_sigma: float) -> float:
    """Stdev correction of a Gaussian clipped at ``±n_sigma``: ``1/sqrt(1 − 2nφ(n)/(Φ(n) − Φ(−n)))``."""
    phi = math.exp(-0.5 * n_sigma**2) / math.sqrt(2.0 * math.pi)
    inside = math.erf(n_sigma / math.sqrt(2.0))
    return 1.0 / math.sqrt(1.0 - 2.0 * n_sigma * phi / inside)


@dataclass
class PairMeasurement:
    """One flat pair measured on one amplifier (ADU).

    Attributes
    ----------
    exposure_ids : `tuple` [`int`, `int`]
        The two exposure ids.
    exposure_time : `float`
        Exposure time of the pair (s).
    mean : `float`
        Average of the two clipped means (ADU); NaN for an invalid pair.
    variance : `float`
        ½ · clipped variance of the symmetric difference, clip-corrected (ADU²).
    covariances : `numpy.ndarray`
        ``(max_lag, max_lag)`` covariances ``C[i, j]`` (i = x lag, j = y lag) in ADU².
    cov_weights : `numpy.ndarray`
        ``1/sqrt(Var(C_ij))`` of the same shape (ADU⁻²).
    n_pixels : `int`
        Pixels used for the difference statistics.
    mean1, mean2 : `float`
        Clipped means of the two exposures (ADU).
    row_mean_variance : `float`
        Clipped variance of the row means of the difference image (ADU²).
    line_noise_variance : `float`
        Noise common to whole rows or whole columns of one exposure (ADU², on the scale of
        ``variance``) that was removed from ``variance`` (0 if not removed; see `extract_pair`).
    valid : `bool`
        False if the pair cannot be used (non-positive mean, too few pixels, NaNs).
    """

    exposure_ids: tuple[int, int]
    exposure_time: float
    mean: float
    variance: float
    covariances: np.ndarray
    cov_weights: np.ndarray
    n_pixels: int
    mean1: float = math.nan
    mean2: float = math.nan
    row_mean_variance: float = math.nan
    line_noise_variance: float = 0.0
    valid: bool = True

    @property
    def variance_weight(self) -> float:
        """Inverse standard error of ``variance`` (``cov_weights[0, 0]`` or ``sqrt(n/2)/variance``)."""
        if self.cov_weights.size and np.isfinite(self.cov_weights[0, 0]) and self.cov_weights[0, 0] > 0:
            return float(self.cov_weights[0, 0])
        if self.variance > 0 and self.n_pixels > 0:
            return math.sqrt(self.n_pixels / 2.0) / self.variance
        return math.nan


def _invalid(
    ids: tuple[int, int], exp_time: float, max_lag: int, mu1: float, mu2: float, n: int
) -> PairMeasurement:
    nan = np.full((max_lag, max_lag), np.nan)
    return PairMeasurement(
        exposure_ids=ids,
        exposure_time=exp_time,
        mean=math.nan,
        variance=math.nan,
        covariances=nan,
        cov_weights=nan.copy(),
        n_pixels=n,
        mean1=mu1,
        mean2=mu2,
        valid=False,
    )


def _covariances_fft(diff: np.ndarray, good: np.ndarray, max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Covariances ``cov[i=dx, j=dy]`` of ``diff`` over ``good`` pixels and their pixel-pair counts."""
    ny, nx = diff.shape
    shape = (
        scipy.fft.next_fast_len(ny + max_lag, real=True),
        scipy.fft.next_fast_len(nx + max_lag, real=True),
    )
    weights = good.astype(np.float64)
    values = np.where(good, diff, 0.0)
    f_values = np.fft.rfft2(values, s=shape)
    f_weights = np.fft.rfft2(weights, s=shape)
    # irfft2(F(a)·conj(F(b)))[δ] = Σ_x a(x+δ) b(x)
    products = np.fft.irfft2(f_values * np.conj(f_values), s=shape)
    counts = np.fft.irfft2(f_weights * np.conj(f_weights), s=shape)
    plus = np.fft.irfft2(f_values * np.conj(f_weights), s=shape)  # Σ d(x+δ) over overlapping pairs
    minus = np.fft.irfft2(f_weights * np.conj(f_values), s=shape)  # Σ d(x) over overlapping pairs

    def at(dx: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        iy, ix = dy % shape[0], dx % shape[1]
        n = np.round(counts[iy, ix])
        with np.errstate(divide="ignore", invalid="ignore"):
            cov = products[iy, ix] / n - plus[iy, ix] * minus[iy, ix] / n**2
        return np.where(n > 0, cov, np.nan), n

    lags = np.arange(max_lag)
    dx, dy = np.meshgrid(lags, lags, indexing="ij")
    cov_pos, n_pos = at(dx, dy)
    cov_neg, n_neg = at(dx, -dy)
    both = (dx > 0) & (dy > 0)
    cov = np.where(both, 0.5 * (cov_pos + cov_neg), cov_pos)
    n_pix = np.where(both, n_pos + n_neg, n_pos)
    return cov, n_pix


def extract_pair(
    image1: CalibImage,
    image2: CalibImage,
    amp_boxes: Mapping[str, tuple[slice, slice]],
    *,
    n_sigma: float = 5.5,
    n_iter: int = 3,
    max_lag: int = 8,
    exposure_ids: tuple[int, int] | None = None,
    exposure_time: float | None = None,
    min_pixels: int | None = None,
    mask_planes: int = DEFAULT_MASK_PLANES,
    remove_line_noise: bool = True,
) -> dict[str, PairMeasurement]:
    """Measure mean, variance and covariances of one flat pair, per amplifier.

    Parameters
    ----------
    image1, image2 : `shared.images.CalibImage`
        ISR-processed flats of the same exposure time, in ADU.
    amp_boxes : `~collections.abc.Mapping` [`str`, `tuple` [`slice`, `slice`]]
        Amplifier regions (``IsrResult.amp_boxes``).
    n_sigma, n_iter : `float`, `int`
        afw clipping of the means and of the difference variance (cp_pipe: 5.5σ, 3 passes).
    max_lag : `int`
        Covariances are measured for lags ``0..max_lag-1`` in x and y.
    exposure_ids : `tuple` [`int`, `int`], optional
        Defaults to the headers' ``EXPID`` (−1 if absent).
    exposure_time : `float`, optional
        Defaults to ``image1``'s ``EXPTIME`` header (NaN if absent).
    min_pixels : `int`, optional
        Minimum kept pixels per amplifier; default ``min(10000, amplifier pixels // 4)``
        (cp_pipe's 10 000 on full-size amplifiers, scaled for small simulated frames).
    mask_planes : `int`
        `MaskPlane` bits whose pixels are excluded.
    remove_line_noise : `bool`
        Remove from ``variance`` the noise common to whole rows and whole columns of one
        exposure (see below).

    Returns
    -------
    measurements : `dict` [`str`, `PairMeasurement`]
        By amplifier name; pairs that cannot be measured have ``valid=False`` and NaN values.
    """
    if image1.image.shape != image2.image.shape:
        raise ValueError(f"pair images differ in shape: {image1.image.shape} vs {image2.image.shape}")
    if max_lag < 1:
        raise ValueError(f"max_lag must be at least 1, got {max_lag}")
    if exposure_ids is None:
        exposure_ids = (int(image1.header.get("EXPID", -1)), int(image2.header.get("EXPID", -1)))
    if exposure_time is None:
        exposure_time = float(image1.header.get("EXPTIME", math.nan))
    correction = sigma_clip_correction(n_sigma) ** 2

    results: dict[str, PairMeasurement] = {}
    for name, box in amp_boxes.items():
        im1 = np.asarray(image1.image[box], dtype=np.float64)
        im2 = np.asarray(image2.image[box], dtype=np.float64)
        bad = ((np.asarray(image1.mask[box]) | np.asarray(image2.mask[box])) & mask_planes) != 0
        bad |= ~(np.isfinite(im1) & np.isfinite(im2))
        needed = min_pixels if min_pixels is not None else min(_FULL_PIXELS, im1.size // 4)
        mu1 = clipped_stats(im1, n_sigma=n_sigma, n_iter=n_iter, mask=bad).mean
        mu2 = clipped_stats(im2, n_sigma=n_sigma, n_iter=n_iter, mask=bad).mean
        mu = 0.5 * (mu1 + mu2)
        if not (np.isfinite(mu1) and np.isfinite(mu2) and mu1 > 0 and mu2 > 0):
            results[name] = _invalid(exposure_ids, exposure_time, max_lag, mu1, mu2, 0)
            continue
        diff = (mu2 * im1 - mu1 * im2) / mu
        stats = clipped_stats(diff, n_sigma=n_sigma, n_iter=n_iter, mask=bad)
        if not np.isfinite(stats.variance):
            results[name] = _invalid(exposure_ids, exposure_time, max_lag, mu1, mu2, 0)
            continue
        with np.errstate(invalid="ignore"):
            good = ~bad & (np.abs(diff - stats.mean) <= n_sigma * math.sqrt(stats.variance))
        n_good = int(good.sum())
        if n_good < needed:
            results[name] = _invalid(exposure_ids, exposure_time, max_lag, mu1, mu2, n_good)
            continue
        centred = diff - stats.mean
        cov, n_pix = _covariances_fft(centred, good, max_lag)
        half_var = 0.5 * stats.variance
        with np.errstate(divide="ignore", invalid="ignore"):
            var_c = half_var**2 / n_pix
            var_c[0, 0] *= 2.0
            cov_weights = 1.0 / np.sqrt(var_c)
        row_var, row_excess = _line_excess(centred, good, stats.variance, 1, n_sigma, n_iter)
        _, column_excess = _line_excess(centred, good, stats.variance, 0, n_sigma, n_iter)
        line_noise = 0.5 * (row_excess + column_excess) if remove_line_noise else 0.0
        if not np.isfinite(line_noise):
            line_noise = 0.0
        half_cov = 0.5 * cov
        if line_noise != 0.0:
            # A term common to a whole row is correlated at every lag along the row (cov[dx, 0]),
            # one common to a whole column at every lag along the column (cov[0, dy]).
            half_cov[:, 0] -= 0.5 * row_excess
            half_cov[0, :] -= 0.5 * column_excess
        results[name] = PairMeasurement(
            exposure_ids=exposure_ids,
            exposure_time=exposure_time,
            mean=float(mu),
            variance=float((half_var - line_noise) * correction),
            covariances=half_cov * correction,
            cov_weights=cov_weights / correction,
            n_pixels=n_good,
            mean1=float(mu1),
            mean2=float(mu2),
            row_mean_variance=float(row_var),
            line_noise_variance=float(line_noise * correction),
            valid=True,
        )
    return results


def _line_excess(
    centred: np.ndarray, good: np.ndarray, variance: float, axis: int, n_sigma: float, n_iter: int
) -> tuple[float, float]:
    """Clipped variance of the line means of ``centred`` and its excess over pixel noise (ADU²).

    ``axis=1`` averages along rows (one mean per row), ``axis=0`` along columns. With
    independent pixels of variance ``variance`` the line means have variance
    ``variance · mean(1/n_line)``; the excess is the variance of a component common to whole
    lines (its expectation is 0 without one, so it is not clipped at 0).
    """
    counts = good.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(good, centred, 0.0).sum(axis=axis) / counts
    used = counts > 1
    if used.sum() < 3:
        return math.nan, math.nan
    line_var = clipped_stats(means[used], n_sigma=n_sigma, n_iter=n_iter).variance
    return float(line_var), float(line_var - variance * np.mean(1.0 / counts[used]))


# --------------------------------------------------------------------------------------------------
# EXPAPPROXIMATION


def exp_approximation_model(params: Sequence[float] | np.ndarray, means: np.ndarray) -> np.ndarray:
    """Astier+19 Eq. 16: ``C00(μ) = (exp(2·a00·μ·g) − 1)/(2·a00·g²) + n00/g²`` (μ in ADU).

    ``params = (a00 [1/e⁻], g [e⁻/ADU], n00 [e⁻²])``; the a00 → 0 limit is ``μ/g + n00/g²``.
    An optional fourth parameter ``c`` (1/e⁻²) multiplies the shot-noise term by
    ``1 − c·(μ·g)²``: the variance deficit of a quadratic amplifier nonlinearity
    ``ADU = e/g·(1 − k·(e/FW)²)`` seen through a non-linearised ISR (``c ≈ 5k/FW²``, see
    `solve_ptc`).
    """
    a00, gain, noise_sq = (float(p) for p in params[:3])
    nonlinearity = float(params[3]) if len(params) > 3 else 0.0
    means = np.asarray(means, dtype=np.float64)
    x = 2.0 * a00 * means * gain
    small = np.abs(x) < 1e-10
    safe = np.where(small, 1.0, x)
    ratio = np.where(small, 1.0 + 0.5 * x, np.expm1(safe) / safe)
    if nonlinearity != 0.0:
        ratio = ratio * (1.0 - nonlinearity * (means * gain) ** 2)
    return means / gain * ratio + noise_sq / gain**2


def _fit_exp(
    means: np.ndarray, variances: np.ndarray, weights: np.ndarray | None, start: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, float]:
    """Bounded least squares of Eq. 16 (with the nonlinearity term when ``start`` has 4 values).

    Returns ``(params, errors scaled by χ²_red, χ²_red)``.
    """
    means = np.asarray(means, dtype=np.float64)
    variances = np.asarray(variances, dtype=np.float64)
    w = np.ones_like(means) if weights is None else np.asarray(weights, dtype=np.float64)
    n_par = len(start)
    scale = np.array([_A_SCALE, 1.0, 1.0, _NL_SCALE])[:n_par]
    lower = np.array((*_EXP_LOWER, -_NL_BOUND))[:n_par] * scale
    upper = np.array((*_EXP_UPPER, _NL_BOUND))[:n_par] * scale
    span = upper - lower
    x0 = np.clip(np.asarray(start, dtype=np.float64) * scale, lower + 1e-6 * span, upper - 1e-6 * span)

    def residuals(p: np.ndarray) -> np.ndarray:
        return (exp_approximation_model(p / scale, means) - variances) * w

    fit = least_squares(residuals, x0, bounds=(lower, upper), method="trf", x_scale="jac")
    params = fit.x / scale
    dof = means.size - params.size
    chi2_red = float(np.sum(fit.fun**2) / dof) if dof > 0 else math.nan
    try:
        cov = np.linalg.pinv(fit.jac.T @ fit.jac) * (chi2_red if np.isfinite(chi2_red) else 1.0)
        errors = np.sqrt(np.clip(np.diag(cov), 0.0, None)) / scale
    except np.linalg.LinAlgError:
        errors = np.full(n_par, math.nan)
    return params, errors, chi2_red


def fit_exp_approximation(
    means: Sequence[float] | np.ndarray,
    variances: Sequence[float] | np.ndarray,
    *,
    weights: Sequence[float] | np.ndarray | None = None,
) -> tuple[float, float, float]:
    """Fit the Astier+19 Eq. 16 PTC model once (no outlier rejection; see `solve_ptc`).

    Parameters
    ----------
    means : array-like
        Pair means (ADU).
    variances : array-like
        Pair variances (ADU²).
    weights : array-like, optional
        Inverse standard errors of the variances; unweighted if omitted.

    Returns
    -------
    a00, gain, noise_sq_e : `float`
        a00 in 1/e⁻ (bounded to [−1e-4, 0]), gain in e⁻/ADU ([0.1, 10]) and the read-noise variance
        n00 in e⁻² ([0, 2000]).
    """
    m = np.asarray(means, dtype=np.float64)
    v = np.asarray(variances, dtype=np.float64)
    if m.shape != v.shape or m.size < 3:
        raise ValueError(f"need at least 3 matching means and variances, got {m.shape} and {v.shape}")
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    params, _, _ = _fit_exp(m, v, w, _start(m, v))
    return float(params[0]), float(params[1]), float(params[2])


def _start(means: np.ndarray, variances: np.ndarray) -> tuple[float, float, float]:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = means / variances
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    gain = float(np.median(ratio)) if ratio.size else _EXP_START[1]
    return (_EXP_START[0], gain, _EXP_START[2])


# --------------------------------------------------------------------------------------------------
# FULLCOVARIANCE (Astier+19 Eq. 20)


def _symmetric_full(quadrant: np.ndarray) -> np.ndarray:
    """Quadrant ``q[i, j]`` (i, j ≥ 0) → full ``(2r−1)²`` array with ``q[|i|, |j|]``."""
    r = quadrant.shape[0]
    idx = np.abs(np.arange(-(r - 1), r))
    return quadrant[np.ix_(idx, idx)]


def _quadrant(full: np.ndarray, r: int) -> np.ndarray:
    centre = full.shape[0] // 2
    return full[centre : centre + r, centre : centre + r]


def _convolve(q1: np.ndarray, q2: np.ndarray) -> np.ndarray:
    """Quadrant of the 2-d convolution ``q1 ⊗ q2`` of two symmetric kernels given by quadrants."""
    r = q1.shape[0]
    return _quadrant(fftconvolve(_symmetric_full(q1), _symmetric_full(q2), mode="full"), r)


def full_covariance_model(
    means: np.ndarray, a: np.ndarray, c: np.ndarray, noise: np.ndarray, gain: float
) -> np.ndarray:
    """Astier+19 Eq. 20 covariances ``(n_pairs, r, r)`` in ADU² (cp_pipe ``evalCovModel``).

    ``C_ij = (m/g²)[a_ij·m + ⅔m²(a⊗a + c)_ij + (⅓ a⊗a⊗a + ⅚ a⊗c)_ij·m³] + n_ij/g² + δ_i0·δ_j0·μ/g``
    with ``m = μ·g`` (μ in ADU, a in 1/e⁻, c = a·b in 1/e⁻², n in e⁻²).
    """
    r = a.shape[0]
    aa = _convolve(a, a)
    aaa = _convolve(aa, a)
    ac = _convolve(a, c)
    mu = np.asarray(means, dtype=np.float64)[:, None, None]
    m = mu * gain
    model = (m / gain**2) * (
        a[None] * m + (2.0 / 3.0) * m**2 * (aa + c)[None] + (aaa / 3.0 + 5.0 * ac / 6.0)[None] * m**3
    )
    model = model + noise[None] / gain**2
    delta = np.zeros((r, r))
    delta[0, 0] = 1.0
    return model + delta[None] * mu / gain


@dataclass
class FullCovarianceFit:
    """Result of `fit_full_covariance` (matrices indexed ``[i = x lag, j = y lag]``)."""

    a_matrix: np.ndarray
    b_matrix: np.ndarray
    c_matrix: np.ndarray
    noise_matrix: np.ndarray
    gain: float
    gain_err: float
    a_matrix_err: np.ndarray
    noise_matrix_err: np.ndarray
    chi2_red: float

    @property
    def noise(self) -> float:
        """Read noise sqrt(|n00|) in e⁻."""
        return math.sqrt(abs(float(self.noise_matrix[0, 0])))


def fit_full_covariance(
    means: np.ndarray,
    covariances: np.ndarray,
    weights: np.ndarray,
    *,
    gain_start: float,
    with_b: bool = True,
) -> FullCovarianceFit:
    """Fit Astier+19 Eq. 20 to covariance matrices (simplified cp_pipe ``FULLCOVARIANCE``).

    Start values: one weighted parabola ``C_ij(μ) = p0 + p1·μ + p2·μ²`` per lag gives
    ``a_ij = p2`` and ``n_ij = p0·g²``; the gain starts at ``gain_start`` and ``c = 0``. Then one
    weighted least-squares fit of all of ``a`` (r²), ``c`` (r², unless ``with_b`` is False),
    ``n`` (r²) and ``g``. ``b = c/a``.

    Parameters
    ----------
    means : `numpy.ndarray`
        ``(n_pairs,)`` means in ADU (retained pairs only).
    covariances, weights : `numpy.ndarray`
        ``(n_pairs, r, r)`` covariances (ADU²) and their inverse standard errors.
    gain_start : `float`
        Starting gain (e.g. the EXPAPPROXIMATION gain), e⁻/ADU.
    with_b : `bool`
        Fit ``c`` (False: cp_pipe's ``FULLCOVARIANCE_NO_B``).
    """
    mu = np.asarray(means, dtype=np.float64)
    cov = np.asarray(covariances, dtype=np.float64)
    w = np.where(np.isfinite(weights) & np.isfinite(cov), weights, 0.0)
    cov = np.where(np.isfinite(cov), cov, 0.0)
    _, r, _ = cov.shape
    a0 = np.zeros((r, r))
    n0 = np.zeros((r, r))
    for i in range(r):
        for j in range(r):
            if np.count_nonzero(w[:, i, j]) < 3:
                continue
            p2, _, p0 = np.polyfit(mu, cov[:, i, j], 2, w=w[:, i, j])
            a0[i, j] = p2
            n0[i, j] = p0 * gain_start**2
    a_scale, c_scale = 1e6, 1e12
    n_a = r * r
    n_c = n_a if with_b else 0

    def unpack(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        a = p[:n_a].reshape(r, r) / a_scale
        c = p[n_a : n_a + n_c].reshape(r, r) / c_scale if with_b else np.zeros((r, r))
        noise = p[n_a + n_c : 2 * n_a + n_c].reshape(r, r)
        return a, c, noise, float(p[-1])

    def residuals(p: np.ndarray) -> np.ndarray:
        a, c, noise, gain = unpack(p)
        return ((full_covariance_model(mu, a, c, noise, gain) - cov) * w).ravel()

    start = np.concatenate([a0.ravel() * a_scale, np.zeros(n_c), n0.ravel(), [gain_start]])
    fit = least_squares(residuals, start, method="trf", x_scale="jac")
    a, c, noise, gain = unpack(fit.x)
    dof = int(np.count_nonzero(w)) - fit.x.size
    chi2_red = float(np.sum(fit.fun**2) / dof) if dof > 0 else math.nan
    try:
        pcov = np.linalg.pinv(fit.jac.T @ fit.jac) * (chi2_red if np.isfinite(chi2_red) else 1.0)
        errors = np.sqrt(np.clip(np.diag(pcov), 0.0, None))
    except np.linalg.LinAlgError:
        errors = np.full(fit.x.size, math.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        b = np.where(a != 0, c / a, np.nan)
    return FullCovarianceFit(
        a_matrix=a,
        b_matrix=b,
        c_matrix=c,
        noise_matrix=noise,
        gain=gain,
        gain_err=float(errors[-1]),
        a_matrix_err=errors[:n_a].reshape(r, r) / a_scale,
        noise_matrix_err=errors[n_a + n_c : 2 * n_a + n_c].reshape(r, r),
        chi2_red=chi2_red,
    )


# --------------------------------------------------------------------------------------------------
# Solve


@dataclass
class AmpPtc:
    """PTC result of one amplifier. Per-pair arrays are in the order of the input measurements.

    Attributes
    ----------
    amp_name : `str`
    fit_type : `str`
        ``EXPAPPROXIMATION``, ``FULLCOVARIANCE`` or ``FULLCOVARIANCE_NO_B``.
    gain, gain_err : `float`
        e⁻/ADU.
    noise, noise_err : `float`
        Read noise in e⁻ (``sqrt(n00)``).
    a00, a00_err : `float`
        Brighter-fatter coefficient in 1/e⁻.
    turnoff : `float`
        Largest retained mean (ADU); ``turnoff_e = turnoff × gain`` (e⁻).
    turnoff_sampling_error : `float`
        Half the gap (ADU) between the turnoff and the next valid point above it (NaN if none).
    n_used : `int`
        Pairs retained by the outlier rejection.
    mask : `numpy.ndarray`
        Boolean per pair: True if retained (cp_pipe ``expIdMask``).
    means, variances, model_variances : `numpy.ndarray`
        Per pair, ADU / ADU² (the EXPAPPROXIMATION model).
    fit_pars, fit_pars_err : `numpy.ndarray`
        EXPAPPROXIMATION ``(a00, gain, n00)`` and their errors (scaled by χ²_red).
    chi2_red : `float`
        Reduced χ² of the final EXPAPPROXIMATION fit.
    bad : `bool`
        True if too few pairs survive (all results NaN).
    full_covariance : `FullCovarianceFit` or `None`
        The Eq. 20 fit for the FULLCOVARIANCE fit types.
    """

    amp_name: str
    fit_type: str
    gain: float
    gain_err: float
    noise: float
    noise_err: float
    a00: float
    a00_err: float
    turnoff: float
    turnoff_e: float
    turnoff_sampling_error: float
    n_used: int
    mask: np.ndarray
    means: np.ndarray
    variances: np.ndarray
    model_variances: np.ndarray
    fit_pars: np.ndarray = field(default_factory=lambda: np.full(3, np.nan))
    fit_pars_err: np.ndarray = field(default_factory=lambda: np.full(3, np.nan))
    chi2_red: float = math.nan
    bad: bool = False
    full_covariance: FullCovarianceFit | None = None


def _rollover_mean(means: np.ndarray, variances: np.ndarray, valid: np.ndarray, drop: float) -> float:
    """Mean (ADU) of the first point of the PTC roll-over, ``inf`` if the PTC does not roll over.

    Going up in mean, the roll-over starts at the first point from which on *every* variance is
    more than ``drop`` below the largest variance seen under it: past full well the pixels stop
    fluctuating, so the variance collapses and stays low (a single low outlier pair does not
    qualify, the points after it recover).
    """
    order = [i for i in np.argsort(means, kind="stable").tolist() if valid[i]]
    if len(order) < 2:
        return math.inf
    ordered = variances[order]
    # suffix_max[k] = largest variance of the points from k on.
    suffix_max = np.maximum.accumulate(ordered[::-1])[::-1]
    running = -math.inf
    for k, index in enumerate(order):
        if k > 0 and suffix_max[k] < (1.0 - drop) * running:
            return float(means[index])
        running = max(running, float(ordered[k]))
    return math.inf


def _jump_cut(keep: np.ndarray, means: np.ndarray, valid: np.ndarray, max_delta: float) -> np.ndarray:
    """Reject every point from the first kept one that follows a rejected one by ≥ ``max_delta``."""
    keep = keep.copy()
    order = [i for i in np.argsort(means, kind="stable").tolist() if valid[i]]
    for prev, cur in itertools.pairwise(order):
        if keep[cur] and not keep[prev] and means[cur] - means[prev] >= max_delta:
            for later in order[order.index(cur) :]:
                keep[later] = False
            break
    return keep


def _bad_amp(name: str, fit_type: str, means: np.ndarray, variances: np.ndarray) -> AmpPtc:
    nan = math.nan
    return AmpPtc(
        amp_name=name,
        fit_type=fit_type,
        gain=nan,
        gain_err=nan,
        noise=nan,
        noise_err=nan,
        a00=nan,
        a00_err=nan,
        turnoff=nan,
        turnoff_e=nan,
        turnoff_sampling_error=nan,
        n_used=0,
        mask=np.zeros(means.size, dtype=bool),
        means=means,
        variances=variances,
        model_variances=np.full(means.size, nan),
        bad=True,
    )


def solve_ptc(
    measurements: Mapping[str, Sequence[PairMeasurement]],
    *,
    fit_type: str = "EXPAPPROXIMATION",
    max_signal_initial_e: float = 50_000.0,
    max_delta_initial_e: float = 9_000.0,
    sigma_cut: float = 5.0,
    max_iterations: int = 2,
    min_mean_signal: float = 0.0,
    max_mean_signal: float = 1e6,
    full_cov_range: int = 4,
    fit_nonlinearity: bool = True,
    rollover_drop: float = 0.05,
) -> dict[str, AmpPtc]:
    """Fit the PTC of every amplifier (see the module docstring for the algorithm).

    Parameters
    ----------
    measurements : `~collections.abc.Mapping` [`str`, `~collections.abc.Sequence` [`PairMeasurement`]]
        Per amplifier, one measurement per flat pair (any order).
    fit_type : `str`
        ``EXPAPPROXIMATION`` (default), ``FULLCOVARIANCE`` or ``FULLCOVARIANCE_NO_B``.
    max_signal_initial_e : `float`
        Signal limit (e⁻, converted with ``median(mean/variance)``) of the first outlier fit.
    max_delta_initial_e : `float`
        Jump (e⁻) above a rejected point that rejects everything above.
    sigma_cut : `float`
        Cut on ``|variance − model| / sqrt(variance)``.
    max_iterations : `int`
        Outlier-rejection passes.
    min_mean_signal, max_mean_signal : `float`
        Pre-selection window on the means (ADU; exclusive).
    full_cov_range : `int`
        Lags ``0..full_cov_range-1`` used by the FULLCOVARIANCE fit (capped by the measured range).
    fit_nonlinearity : `bool`
        Fit the residual-nonlinearity term ``c`` of `exp_approximation_model` as a fourth
        parameter (the flats are not linearised by cpflow's ISR). Without it a 1–2 % quadratic
        nonlinearity at full well is absorbed into a00 and g (gain biased by ~1 %) and rejects
        the points above ~half full well, so the turnoff comes out far too low.
    rollover_drop : `float`
        With ``fit_nonlinearity``, the outlier rejection starts from the points below the PTC
        roll-over: the first point (by mean) from which on every variance is more than this
        fraction below the largest variance of the points under it (`_rollover_mean`).

    Returns
    -------
    ptc : `dict` [`str`, `AmpPtc`]
    """
    fit_type = fit_type.upper()
    if fit_type not in FIT_TYPES:
        raise ValueError(f"fit_type must be one of {FIT_TYPES}, got {fit_type!r}")
    results: dict[str, AmpPtc] = {}
    for name, pairs in measurements.items():
        means = np.array([p.mean for p in pairs], dtype=np.float64)
        variances = np.array([p.variance for p in pairs], dtype=np.float64)
        with np.errstate(invalid="ignore"):
            valid = (
                np.array([p.valid for p in pairs], dtype=bool)
                & np.isfinite(means)
                & np.isfinite(variances)
                & (means > min_mean_signal)
                & (means < max_mean_signal)
                & (variances > 0)
            )
        if valid.sum() < 3:
            results[name] = _bad_amp(name, fit_type, means, variances)
            continue
        approx_gain = float(np.median(means[valid] / variances[valid]))
        max_initial = max_signal_initial_e / approx_gain
        max_delta = max_delta_initial_e / approx_gain
        if fit_nonlinearity:
            # The model follows the PTC up to full well: start from every point below the
            # roll-over instead of the low-signal points only.
            mask = valid & (means < _rollover_mean(means, variances, valid, rollover_drop))
        else:
            mask = valid & (means <= max_initial) & (variances <= max_initial)
        if mask.sum() < 3:
            lowest = [i for i in np.argsort(means).tolist() if valid[i]][:3]
            mask = np.zeros_like(valid)
            mask[lowest] = True
        start: tuple[float, ...] = _start(means[valid], variances[valid])
        if fit_nonlinearity:
            start = (*start, 0.0)
        # cp_pipe's outlier fits are unweighted, over the low-signal points only. Over the whole
        # PTC they are weighted by 1/sqrt(variance), the scale of the rejection residual below,
        # or the brightest points alone would set the model at low signal.
        with np.errstate(divide="ignore", invalid="ignore"):
            outlier_weights = 1.0 / np.sqrt(variances) if fit_nonlinearity else None
        for _ in range(max_iterations):
            params, _, _ = _fit_exp(
                means[mask],
                variances[mask],
                None if outlier_weights is None else outlier_weights[mask],
                start,
            )
            model = exp_approximation_model(params, np.where(valid, means, 0.0))
            with np.errstate(invalid="ignore", divide="ignore"):
                residual = (variances - model) / np.sqrt(variances)
            new_mask = valid & (np.abs(residual) < sigma_cut)
            new_mask = _jump_cut(new_mask, means, valid, max_delta)
            if new_mask.sum() < 3:
                break
            if np.array_equal(new_mask, mask):
                break
            mask = new_mask
            start = tuple(float(p) for p in params)
        if mask.sum() < 3:
            results[name] = _bad_amp(name, fit_type, means, variances)
            continue
        weights = np.array([p.variance_weight for p in pairs], dtype=np.float64)
        if not np.all(np.isfinite(weights[mask])):
            weights = np.ones_like(means)
        params, errors, chi2_red = _fit_exp(means[mask], variances[mask], weights[mask], start)
        a00, gain, noise_sq = (float(p) for p in params[:3])
        noise = math.sqrt(abs(noise_sq))
        noise_err = 0.5 * float(errors[2]) / noise if noise > 0 else math.nan
        turnoff = float(means[mask].max())
        above = means[valid & (means > turnoff)]
        sampling = 0.5 * float(above.min() - turnoff) if above.size else math.nan
        model_variances = np.where(
            valid, exp_approximation_model(params, np.where(valid, means, 0.0)), np.nan
        )
        amp = AmpPtc(
            amp_name=name,
            fit_type=fit_type,
            gain=gain,
            gain_err=float(errors[1]),
            noise=noise,
            noise_err=noise_err,
            a00=a00,
            a00_err=float(errors[0]),
            turnoff=turnoff,
            turnoff_e=turnoff * gain,
            turnoff_sampling_error=sampling,
            n_used=int(mask.sum()),
            mask=mask,
            means=means,
            variances=variances,
            model_variances=model_variances,
            fit_pars=params,
            fit_pars_err=errors,
            chi2_red=chi2_red,
        )
        if fit_type != "EXPAPPROXIMATION":
            _apply_full_covariance(amp, pairs, full_cov_range, with_b=fit_type == "FULLCOVARIANCE")
        results[name] = amp
    return results


def _apply_full_covariance(amp: AmpPtc, pairs: Sequence[PairMeasurement], r: int, *, with_b: bool) -> None:
    used = [p for p, keep in zip(pairs, amp.mask.tolist(), strict=True) if keep]
    r = min(r, min(p.covariances.shape[0] for p in used))
    if len(used) < 4 or r < 1:
        return
    fit = fit_full_covariance(
        np.array([p.mean for p in used]),
        np.stack([p.covariances[:r, :r] for p in used]),
        np.stack([p.cov_weights[:r, :r] for p in used]),
        gain_start=amp.gain,
        with_b=with_b,
    )
    amp.full_covariance = fit
    amp.gain = fit.gain
    amp.gain_err = fit.gain_err
    amp.noise = fit.noise
    n00_err = float(fit.noise_matrix_err[0, 0])
    amp.noise_err = 0.5 * n00_err / amp.noise if amp.noise > 0 else math.nan
    amp.a00 = float(fit.a_matrix[0, 0])
    amp.a00_err = float(fit.a_matrix_err[0, 0])
    amp.turnoff_e = amp.turnoff * fit.gain


# --------------------------------------------------------------------------------------------------
# Gain from flat pairs and output table


def gain_from_flat_pairs(
    measurements: Mapping[str, Sequence[PairMeasurement]],
    read_noise_adu: Mapping[str, float] | None = None,
    *,
    a00: Mapping[str, float] | None = None,
    min_mean: float | None = None,
    max_mean: float | None = None,
) -> dict[str, float]:
    """Gain per amplifier from flat pairs (cp_pipe's GAIN mode), the median over pairs.

    Per pair, with ``μ`` the mean (ADU), ``V`` the variance (ADU², ½ the clipped variance of the
    symmetric difference, i.e. cp_pipe's ``K·μ`` with ``K = MEAN((I1−I2)²/(I1+I2))``), ``σ`` the
    read noise (ADU) and optionally the brighter-fatter coefficient ``a00`` (1/e⁻)::

        g = μ / (V − σ² − a00·μ²)

    This is the first-order expansion of Eq. 16, ``V ≈ μ/g + a00·μ² + σ²``. Without ``a00`` it is
    cp_pipe's per-pair gain with the read-noise correction (``1/(K − σ²/μ)``); without ``σ`` either
    it is ``1/K`` (``gainCorrectionType='NONE'``). Without ``a00`` the gain is biased high by
    about ``−a00·μ_e`` (1% at 4000 e⁻ for a00 = −2.5e-6), so use mid-level flats.

    Parameters
    ----------
    measurements : `~collections.abc.Mapping` [`str`, `~collections.abc.Sequence` [`PairMeasurement`]]
        Per amplifier, the pair measurements.
    read_noise_adu : `~collections.abc.Mapping` [`str`, `float`], optional
        Read noise per amplifier in ADU (e.g. ``IsrResult.overscan_noise_adu``); 0 if absent.
    a00 : `~collections.abc.Mapping` [`str`, `float`], optional
        Brighter-fatter a00 per amplifier in 1/e⁻; 0 if absent.
    min_mean, max_mean : `float`, optional
        Only pairs with a mean in this range (ADU) are used.

    Returns
    -------
    gains : `dict` [`str`, `float`]
        e⁻/ADU; NaN for an amplifier without a usable pair.
    """
    gains: dict[str, float] = {}
    for name, pairs in measurements.items():
        sigma = float(read_noise_adu.get(name, 0.0)) if read_noise_adu is not None else 0.0
        bf = float(a00.get(name, 0.0)) if a00 is not None else 0.0
        values = []
        for p in pairs:
            if not (p.valid and np.isfinite(p.mean) and np.isfinite(p.variance) and p.mean > 0):
                continue
            if (min_mean is not None and p.mean < min_mean) or (max_mean is not None and p.mean > max_mean):
                continue
            denominator = p.variance - sigma**2 - bf * p.mean**2
            if denominator > 0:
                values.append(p.mean / denominator)
        gains[name] = float(np.median(values)) if values else math.nan
    return gains


PTC_SCALAR_NAN = (
    "OVERSCAN_MEDIAN",
    "OVERSCAN_MEDIAN_SIGMA",
    "PTC_ROLLOFF",
    "PTC_ROLLOFF_ERROR",
    "PTC_ROLLOFF_TAU",
    "PTC_ROLLOFF_TAU_ERROR",
)
"""ip_isr PTC columns (one value per amplifier) that cpflow does not measure: NaN."""
PTC_PER_PAIR_NAN = (
    "INPUT_EXP_PAIR_MJD_START",
    "GAIN_LIST",
    "OVERSCAN_MEDIAN_LIST",
    "NOISE_LIST",
    "HIST_VARS",
    "HIST_CHI2_DOFS",
    "KS_PVALUES",
    "PHOTO_CHARGE",
    "PHOTO_CHARGE_DELTAS",
    "AMP_OFFSETS",
)
"""ip_isr PTC columns (one value per flat pair) that cpflow does not measure: NaN."""


def ptc_table(result: Mapping[str, AmpPtc], measurements: Mapping[str, Sequence[PairMeasurement]]) -> Table:
    """PTC dataset as ip_isr's ``PhotonTransferCurveDataset`` table: one row per amplifier (by name).

    The columns are those of ip_isr's PTC schema version 2.6 (rubin_formats.md §7.3), upper-case:
    per amplifier ``AMPLIFIER_NAME, PTC_FIT_TYPE, GAIN, GAIN_ERR, GAIN_UNADJUSTED, NOISE, NOISE_ERR``
    (e⁻), ``PTC_FIT_PARS``/``PTC_FIT_PARS_ERROR`` (EXPAPPROXIMATION ``a00, gain, n00``),
    ``PTC_FIT_CHI_SQ, PTC_TURNOFF`` (ADU), ``PTC_TURNOFF_SAMPLING_ERROR``, ``COV_MATRIX_SIDE``,
    ``COV_MATRIX_SIDE_FULL_COV_FIT``, ``A_MATRIX, B_MATRIX, NOISE_MATRIX`` (F×F raveled; NaN
    without a full-covariance fit), ``BAD_AMPS``; per flat pair (N, padded to the most pairs)
    ``INPUT_EXP_ID_PAIRS`` (N×2, −1 padded), ``EXP_ID_MASK``, ``EXP_ID_ROLLOFF_MASK``,
    ``RAW_EXP_TIMES, RAW_MEANS, RAW_VARS, RAW_DELTAS, ROW_MEAN_VARIANCE`` (ADU, ADU²),
    ``FINAL_MEANS, FINAL_VARS, FINAL_MODEL_VARS`` (NaN where the pair is not used),
    ``COVARIANCES, COVARIANCES_SQRT_WEIGHTS, COVARIANCES_MODEL`` (N×S×S raveled),
    ``NPIXEL_COVARIANCES`` (N×S×S). Columns cpflow does not measure (`PTC_SCALAR_NAN`,
    `PTC_PER_PAIR_NAN`) are NaN, as ip_isr fills what it has not measured. ``meta`` holds the
    IsrCalib keys ``OBSTYPE='PTC'``, ``PTC_SCHEMA``, ``PTC_VERSION`` (the rest is added where the
    detector is known, `shared.isrcalib.isrcalib_metadata`).
    """
    names = sorted(result)
    missing = [n for n in names if n not in measurements]
    if missing:
        raise KeyError(f"no measurements for amplifiers {missing}")
    n_max = max((len(measurements[n]) for n in names), default=0)
    sides = {m.covariances.shape[0] for n in names for m in measurements[n] if m.covariances.ndim == 2}
    side = max(sides, default=1)
    fits_full = [result[n].full_covariance for n in names]
    full_side = next((f.a_matrix.shape[0] for f in fits_full if f is not None), side)
    bad_amps = [n for n in names if result[n].bad]

    def padded(values: Sequence[float] | np.ndarray, fill: float | bool, dtype: type) -> np.ndarray:
        out: np.ndarray = np.full(n_max, fill, dtype=dtype)
        out[: len(values)] = values
        return out

    def lagged(arrays: Sequence[np.ndarray], size: int, fill: float, dtype: type) -> np.ndarray:
        out: np.ndarray = np.full((n_max, size, size), fill, dtype=dtype)
        for k, a in enumerate(arrays):
            n = min(size, a.shape[0]) if a.ndim == 2 else 0
            out[k, :n, :n] = a[:n, :n]
        return out.ravel()

    def square(matrix: np.ndarray | None) -> np.ndarray:
        out: np.ndarray = np.full((full_side, full_side), np.nan)
        if matrix is not None:
            out[: matrix.shape[0], : matrix.shape[1]] = matrix
        return out.ravel()

    rows: dict[str, list[object]] = {}

    def add(key: str, value: object) -> None:
        rows.setdefault(key, []).append(value)

    for name in names:
        amp = result[name]
        pairs = measurements[name]
        used = padded(amp.mask, False, np.bool_)
        means = padded([p.mean for p in pairs], np.nan, np.float64)
        variances = padded([p.variance for p in pairs], np.nan, np.float64)
        model = padded(amp.model_variances, np.nan, np.float64)
        ids = np.full((n_max, 2), -1, dtype=np.int64)
        if pairs:
            ids[: len(pairs)] = [p.exposure_ids for p in pairs]
        full = amp.full_covariance
        add("AMPLIFIER_NAME", name)
        add("PTC_FIT_TYPE", amp.fit_type)
        add("COV_MATRIX_SIDE", side)
        add("COV_MATRIX_SIDE_FULL_COV_FIT", full_side)
        add("INPUT_EXP_ID_PAIRS", ids)
        add("EXP_ID_MASK", used)
        add("EXP_ID_ROLLOFF_MASK", used.copy())
        add("RAW_EXP_TIMES", padded([p.exposure_time for p in pairs], np.nan, np.float64))
        add("RAW_MEANS", means)
        add("RAW_VARS", variances)
        add("RAW_DELTAS", padded([p.mean1 - p.mean2 for p in pairs], np.nan, np.float64))
        add("ROW_MEAN_VARIANCE", padded([p.row_mean_variance for p in pairs], np.nan, np.float64))
        add("GAIN", float(amp.gain))
        add("GAIN_ERR", float(amp.gain_err))
        add("GAIN_UNADJUSTED", float(amp.gain))
        add("NOISE", float(amp.noise))
        add("NOISE_ERR", float(amp.noise_err))
        for key in PTC_PER_PAIR_NAN:
            add(key, np.full(n_max, np.nan))
        for key in PTC_SCALAR_NAN:
            add(key, math.nan)
        add("PTC_FIT_PARS", np.asarray(amp.fit_pars, dtype=np.float64))
        add("PTC_FIT_PARS_ERROR", np.asarray(amp.fit_pars_err, dtype=np.float64))
        add("PTC_FIT_CHI_SQ", float(amp.chi2_red))
        add("PTC_TURNOFF", float(amp.turnoff))
        add("PTC_TURNOFF_SAMPLING_ERROR", float(amp.turnoff_sampling_error))
        add("A_MATRIX", square(full.a_matrix if full is not None else None))
        add("B_MATRIX", square(full.b_matrix if full is not None else None))
        add("NOISE_MATRIX", square(full.noise_matrix if full is not None else None))
        add("BAD_AMPS", np.asarray(bad_amps or [""], dtype=str))
        add(
            "NPIXEL_COVARIANCES",
            lagged([np.full((side, side), p.n_pixels) for p in pairs], side, -1, np.int64),
        )
        add("COVARIANCES", lagged([p.covariances for p in pairs], side, np.nan, np.float64))
        add("COVARIANCES_SQRT_WEIGHTS", lagged([p.cov_weights for p in pairs], side, np.nan, np.float64))
        add("COVARIANCES_MODEL", np.full(n_max * full_side * full_side, np.nan))
        add("FINAL_VARS", np.where(used, variances, np.nan))
        add("FINAL_MODEL_VARS", np.where(used, model, np.nan))
        add("FINAL_MEANS", np.where(used, means, np.nan))
    table = Table({key: np.asarray(values) for key, values in rows.items()}) if rows else Table()
    table.meta["OBSTYPE"] = "PTC"
    table.meta["PTC_SCHEMA"] = "Gen3 Photon Transfer Curve"
    table.meta["PTC_VERSION"] = 2.6
    return table
