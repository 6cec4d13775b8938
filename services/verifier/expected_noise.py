"""The noise a bias or dark residual is expected to have, given the reference it was made against.

cp_verify's NOISE test compares a residual's clipped standard deviation with the bare read noise
RN (DMTN-101 4.3/5.3). A residual against a combined calibration of N frames also carries that
calibration's own noise, so a healthy frame that was *not* one of the N (external verification)
exceeds RN by ≈ 1/(2N) in relative terms, plus what the ISR adds. cpflow's NOISE rule compares
with the expected noise instead (README "Verification: the NOISE rules"):

Per-frame noise after ISR (e⁻²), with ``n_s`` the serial-overscan pixels per row used (when the
serial overscan was fitted per row; 0 when it was smoothed, `shared.isr.fit_overscan_levels`)::

    σ_f² = RN² (1 + 1/n_s)

Bias residual of a frame not among the N_b frames of the combined bias::

    σ_bias² = σ_f² (1 + k(N_b)/N_b)

where ``k(N)`` is the variance of the combine's per-pixel 3σ, 3-pass afw clipped mean of N
Gaussian values relative to the plain mean's σ²/N (`clipped_mean_efficiency`; the clipping
drops good values: k ≈ 1.17 for N = 5, 1.07 for 20, 1.03 for 50).

Dark residual of a frame of dark time t not among the N_d darks (dark times t_i) of the
combined dark, the bias (N_b frames) subtracted from both, dark current μ (e⁻/s)::

    s = (t / N_d) Σ 1/t_i
    σ_dark² = σ_f² + μ t  +  k(N_d) (t / N_d)² Σ (σ_f² + μ t_i) / t_i²  +  (1 - s)² k(N_b) σ_f² / N_b

The combined dark is the mean of ``(d_i - B) / t_i`` and ISR subtracts ``B + t · dark`` from the
frame, so the combined bias B enters the residual with weight ``1 - s``: it cancels when the
frame's dark time is the references' (s = 1), and the bias's noise only counts otherwise. With
equal dark times the rule is ``σ_dark² = (σ_f² + μ t)(1 + k(N_d)/N_d)``.

A frame that is one of the reference's own inputs (internal verification) is compared with RN,
as cp_verify does: its residual is *less* noisy than RN (≈ (1 - 1/N) in variance), and cpflow
keeps that comparison unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from shared.clipkernel import clip_stack

__all__ = ["bias_residual_noise", "clipped_mean_efficiency", "dark_residual_noise", "frame_noise"]

_EFFICIENCY_PIXELS = 1 << 16
"""Gaussian draws per N for `clipped_mean_efficiency` (standard error of k ≈ 0.6 %)."""


@lru_cache(maxsize=256)
def clipped_mean_efficiency(n: int, n_sigma: float = 3.0, n_iter: int = 3) -> float:
    """k(N): variance of the afw clipped mean of N unit Gaussian values, times N.

    Computed once per N (cached) with the combine's own kernel (`shared.clipkernel.clip_stack`)
    on a fixed-seed Monte Carlo of `_EFFICIENCY_PIXELS` pixels, so it is deterministic.
    """
    if n < 1:
        raise ValueError(f"the combined calibration must have at least one input, got {n}")
    if n == 1:
        return 1.0
    rng = np.random.default_rng(n)
    stack = rng.standard_normal((n, 256, _EFFICIENCY_PIXELS // 256), dtype=np.float32)
    mean = np.asarray(clip_stack(stack, n_sigma=n_sigma, n_iter=n_iter).mean, dtype=np.float64)
    return float(np.var(mean) * n)


def frame_noise(read_noise: float, serial_pixels: int = 0) -> float:
    """σ_f: the noise of one frame after ISR (e⁻), its serial overscan fitted over ``serial_pixels``.

    ``serial_pixels = 0`` means the serial level had no per-row noise (a smooth fit).
    """
    if not (read_noise > 0):
        raise ValueError(f"read noise must be positive, got {read_noise}")
    if serial_pixels < 0:
        raise ValueError(f"serial_pixels must be >= 0, got {serial_pixels}")
    return read_noise * math.sqrt(1.0 + (1.0 / serial_pixels if serial_pixels else 0.0))


def bias_residual_noise(read_noise: float, n_bias: int, *, serial_pixels: int = 0) -> float:
    """Expected noise (e⁻) of a new bias frame minus a combined bias of ``n_bias`` frames."""
    if n_bias < 1:
        raise ValueError(f"the combined bias must have at least one input, got {n_bias}")
    return frame_noise(read_noise, serial_pixels) * math.sqrt(1.0 + clipped_mean_efficiency(n_bias) / n_bias)


def dark_residual_noise(
    read_noise: float,
    *,
    dark_time: float,
    reference_dark_times: Sequence[float],
    n_bias: int,
    dark_current: float = 0.0,
    serial_pixels: int = 0,
) -> float:
    """Expected noise (e⁻) of a new dark frame after bias and combined-dark subtraction.

    Parameters
    ----------
    read_noise : `float`
        RN, e⁻ (the PTC's or the nominal).
    dark_time : `float`
        The frame's dark time t, s.
    reference_dark_times : `~collections.abc.Sequence` [`float`]
        Dark times t_i of the combined dark's inputs, s.
    n_bias : `int`
        Inputs of the combined bias subtracted from the frame and from the darks.
    dark_current : `float`
        μ, e⁻/s (negative values count as 0).
    serial_pixels : `int`
        See `frame_noise`.
    """
    times = [float(t) for t in reference_dark_times]
    if not times or any(not (t > 0) for t in times):
        raise ValueError(f"reference dark times must be positive and not empty, got {times}")
    if n_bias < 1:
        raise ValueError(f"the combined bias must have at least one input, got {n_bias}")
    if dark_time < 0:
        raise ValueError(f"dark time must be >= 0, got {dark_time}")
    mu = max(float(dark_current), 0.0)
    var_f = frame_noise(read_noise, serial_pixels) ** 2
    n_dark = len(times)
    weight = dark_time / n_dark
    s = weight * sum(1.0 / t for t in times)
    reference = clipped_mean_efficiency(n_dark) * weight**2 * sum((var_f + mu * t) / t**2 for t in times)
    bias = (1.0 - s) ** 2 * clipped_mean_efficiency(n_bias) * var_f / n_bias
    return math.sqrt(var_f + mu * dark_time + reference + bias)
