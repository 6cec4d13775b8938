"""A simulated camera: a physical model of an ITL CCD readout with known truth.

`SimulatedCamera` implements `~services.acquirer.camera.CameraDriver` by synthesising raw
frames in readout order (see `shared.instruments`) and writing one FITS file per detector per
exposure in the cameras' own format (`shared.rawformat`: real primary and segment keywords,
``SegmentNN`` order, RICE compression, condition tables; no exposure id, detector number or
simulation keyword in the headers). Everything injected is recorded so tests and the
verification stages can compare what cpflow measures with what was put in
(`SimulatedCamera.truth`, `SimulatedCamera.bias_structure_e`, `SimulatedCamera.dark_current_map_e_per_s`,
`SimulatedCamera.flat_response`, `SimulatedCamera.defect_mask`, `SimulatedCamera.write_truth`).

Units. "True electrons" are the charge in the pixel. Each amplifier has an *actual* gain ``g``
(e⁻/ADU) = nominal gain x (1 + uniform(±``gain_spread``)); the ISR converts ADU to electrons
with the *nominal* gain ``g0`` of the instrument geometry, so every truth image that is
compared with an ISR'd product is given in "ISR electrons" = ADU x ``g0`` (true electrons x
``g0 / g``). Scalar truth (gain, read noise, a00, full well, dark current) is in true electrons.

Model of one amplifier (ADU unless stated)::

    raw[r, c] = clip(round(
          level + exposure_level                  # per-amp bias level (+ small per-exposure wander)
        + row_structure[r] + row_jitter[r]        # whole row: prescan, data, serial overscan
        + [data only] column_structure[c] + bias_structure_2d[r, c]
        + [data only] NL(e[r, c]) / g             # collected charge, amplifier nonlinearity
        + read_noise_e / g * N(0, 1)              # every pixel
    ), 0, saturation)

    e = min(mean + (poisson(mean) - mean) * sqrt(f(mean)) + cosmic_rays, full_well_e)
    mean = dark_map_e_per_s * DARKTIME            # DARK and FLAT frames (not BIAS)
         + flat_flux_e_per_s * EXPTIME * response # FLAT frames
    f(m) = (exp(2 a00 m) - 1) / (2 a00 m)         # brighter-fatter variance deficit (f → 1 as m → 0)
    NL(e) = e * (1 - k (e / full_well_e)**2)      # mild quadratic nonlinearity

so the variance of a flat-pair difference follows Astier et al. (2019) Eq. 16,
``C00 = (exp(2 a00 mu g) - 1) / (2 g² a00) + n / g²`` (``mu`` in ADU, ``n`` = read noise² in e⁻²),
and the photon-transfer curve turns over where the clipped signal stops fluctuating: at
``NL(full_well_e) / g = (1 - k) full_well_e / g`` ADU above the bias (``turnoff_adu``, in the
raw, not linearised, ADU a PTC measures). For speed the shot noise is drawn Gaussian (same mean and
variance) where the mean exceeds `GAUSSIAN_SHOT_MIN_E` electrons and Poisson below.

Per detector and amplifier, fixed by ``seed`` (identical for every exposure of a camera built
with the same seed; drawn from `numpy.random.SeedSequence` spawn keys of (stream, detector,
amplifier) so the scalars do not depend on ``amp_data_shape``):

* bias level: ``bias_level_adu`` plus a uniform offset in ±`BIAS_OFFSET_RANGE_ADU`;
* row structure: a slow sinusoidal drift plus a linear slope of a few ADU over the raw rows,
  added to the *whole* row (prescan, data and serial overscan), so a per-row serial-overscan
  subtraction removes it;
* column structure: a fixed per-column pattern (Gaussian, `COLUMN_STRUCTURE_RMS_ADU` rms)
  in the data section only;
* 2-D bias structure: an exponential rise over the first rows read plus an exponential
  "readout corner" bump, data section only;
* actual gain, a00 (`A00_RANGE`), full well (`FULL_WELL_RANGE_E`) and nonlinearity coefficient
  (`NONLINEARITY_K_RANGE`);
* dark current: ``dark_current_e_per_s`` on every pixel plus hot pixels (fraction
  ``hot_pixel_fraction``, extra dark current log-uniform in `HOT_PIXEL_RANGE_E_PER_S`) and one hot
  column per detector (`HOT_COLUMN_RANGE_E_PER_S` along a whole amplifier column);
* flat response (multiplies the illumination): detector factor (`DETECTOR_RESPONSE_RANGE`) x
  radial vignetting (depth `VIGNETTING_DEPTH_RANGE`, computed in assembled detector coordinates,
  continuous across amplifiers) x (1 + `PRNU_RMS` x N(0, 1)) x cold pixels (fraction
  ``cold_pixel_fraction``, response in `COLD_PIXEL_RESPONSE_RANGE`, a fifth of them dead = 0) x one
  dead column per detector (`DEAD_COLUMN_RESPONSE_RANGE`) in another amplifier than the hot one.

Defects (`SimulatedCamera.defect_mask`): hot pixels with extra dark current >=
`HOT_DEFECT_THRESHOLD_E_PER_S` (all injected ones), the hot column, cold pixels with a response
< `COLD_DEFECT_THRESHOLD` of the local (smooth) response (all injected ones) and the dead column.

Per exposure (noise keyed by (exposure id, detector)): a Gaussian per-row jitter
(`ROW_JITTER_RMS_ADU`, common to the whole row) and a small per-amplifier level wander
(`EXPOSURE_LEVEL_RMS_ADU`), both removed by the serial overscan; Gaussian read noise in every
pixel; shot noise; on DARK frames only, cosmic rays: Poisson(``cosmic_ray_rate`` x area (10 µm
pixels) x DARKTIME) tracks or blobs of 1-10 pixels with 300-3000 e⁻ per pixel (their number is
``n_cosmic_rays`` of the frame's truth file, `SimulatedCamera.frame_truth`). Faults
(`shared.runconfig.SimulatorFault`) apply to the ``i``-th frame of an image type taken by the
camera instance: ``light_leak`` (uniform extra illumination, with shot noise, on every
amplifier, BIAS frames included), ``hot_amplifier`` (read noise x factor) and
``dark_ramp`` (``i`` x step extra dark current); the frame's truth file
(``<obs_id>_det<NNN>.truth.json``) lists the kinds applied (``faults``), ``index`` = ``i``, the
light-leak level (``light_leak_e``, e⁻) and the extra dark current (``dark_ramp_e_per_s``). The
truth maps (`SimulatedCamera.bias_structure_e`, ...) are in DM's assembled frame.

Timing: DARKTIME = EXPTIME + `READOUT_OVERHEAD_S` (0.2 s of shutter/readout overhead during
which the sensor integrates dark current) for every image type, so a bias has DARKTIME 0.2 s.
Bias frames are read out immediately and carry *no* dark charge in the model (a real bias
would collect 0.02 x 0.2 = 0.004 e⁻, 1/2000 of the read noise); this keeps the bias truth
exact. SHUTTIME is EXPTIME for flats and 0 for biases and darks (the shutter stays closed).

Seams: `SimulatedCamera._signal_e` (electrons collected in the data section) and
`SimulatedCamera._electrons_to_adu` (the amplifier response).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.time import Time, TimeDelta

from services.acquirer.camera import IMAGE_TYPES, CameraDriver, CameraError, CapturedFrame, ExposureRequest
from shared.images import RawDetectorImage
from shared.instruments import AmplifierGeometry, Detector, Instrument
from shared.rawformat import write_raw
from shared.runconfig.simulator import (
    DEFAULT_BIAS_LEVEL_ADU,
    DEFAULT_COLD_PIXEL_FRACTION,
    DEFAULT_COSMIC_RAY_RATE,
    DEFAULT_DARK_CURRENT_E_PER_S,
    DEFAULT_FLAT_FLUX_E_PER_S,
    DEFAULT_GAIN_SPREAD,
    DEFAULT_HOT_PIXEL_FRACTION,
    SimulatorConfig,
    SimulatorFault,
)
from shared.translation import compute_exposure_id

__all__ = [
    "A00_RANGE",
    "BIAS_OFFSET_RANGE_ADU",
    "COLD_DEFECT_THRESHOLD",
    "COLUMN_STRUCTURE_RMS_ADU",
    "DEFAULT_COLD_PIXEL_FRACTION",
    "DEFAULT_COSMIC_RAY_RATE",
    "DEFAULT_DARK_CURRENT_E_PER_S",
    "DEFAULT_FLAT_FLUX_E_PER_S",
    "DEFAULT_GAIN_SPREAD",
    "DEFAULT_HOT_PIXEL_FRACTION",
    "DEFECT_BITS",
    "EXPOSURE_LEVEL_RMS_ADU",
    "FULL_WELL_RANGE_E",
    "HOT_DEFECT_THRESHOLD_E_PER_S",
    "PIXEL_SIZE_CM",
    "READOUT_OVERHEAD_S",
    "ROW_JITTER_RMS_ADU",
    "SimulatedCamera",
    "assemble",
    "unassemble",
]

READOUT_OVERHEAD_S = 0.2
"""DARKTIME - EXPTIME: shutter and readout overhead during which dark current accumulates."""
BIAS_OFFSET_RANGE_ADU = 300.0
"""Per-amplifier bias offsets are uniform in ±this around ``bias_level_adu``."""
ROW_DRIFT_RANGE_ADU = (1.0, 4.0)
"""Amplitude range of the fixed slow row drift (sinusoid), ADU."""
ROW_SLOPE_RANGE_ADU = (-3.0, 3.0)
"""Range of the fixed linear row slope over the whole amplifier, ADU."""
COLUMN_STRUCTURE_RMS_ADU = 2.0
"""rms of the fixed per-column pattern, ADU."""
BIAS_RISE_RANGE_ADU = (20.0, 50.0)
"""Amplitude of the exponential rise on the first rows read, ADU."""
BIAS_RISE_SCALE_ROWS = (5.0, 15.0)
"""e-folding length of that rise, rows."""
CORNER_RANGE_ADU = (10.0, 30.0)
"""Amplitude of the exponential bump at the readout corner (first row, first column), ADU."""
CORNER_SCALE_PIXELS = (3.0, 10.0)
"""e-folding length of the corner bump along rows and columns, pixels."""
ROW_JITTER_RMS_ADU = 1.0
"""rms of the per-exposure, per-row offset common to a whole row (data and overscan), ADU."""
EXPOSURE_LEVEL_RMS_ADU = 2.0
"""rms of the per-exposure wander of an amplifier's bias level, ADU."""
A00_RANGE = (-3.5e-6, -2.0e-6)
"""Brighter-fatter a00 (1/e⁻, Astier et al. 2019), uniform per amplifier (ITL range)."""
FULL_WELL_RANGE_E = (90_000.0, 110_000.0)
"""Full well (true e⁻), uniform per amplifier; the collected charge is clipped there."""
NONLINEARITY_K_RANGE = (0.01, 0.02)
"""Quadratic nonlinearity coefficient k: ADU = e / g x (1 - k (e / full well)²)."""
HOT_PIXEL_RANGE_E_PER_S = (5.0, 50.0)
"""Extra dark current of hot pixels (true e⁻/s), log-uniform."""
HOT_COLUMN_RANGE_E_PER_S = (5.0, 10.0)
"""Extra dark current along the hot column (true e⁻/s), uniform."""
HOT_DEFECT_THRESHOLD_E_PER_S = 5.0
"""Hot pixels whose extra dark current is at least this count as defects."""
COLD_PIXEL_RESPONSE_RANGE = (0.0, 0.5)
"""Response of cold pixels relative to their neighbourhood, uniform."""
DEAD_PIXEL_FRACTION = 0.2
"""Fraction of the cold pixels that are dead (response 0)."""
DEAD_COLUMN_RESPONSE_RANGE = (0.25, 0.35)
"""Relative response of the dead (cold) column."""
COLD_DEFECT_THRESHOLD = 0.9
"""Pixels whose response is below this fraction of the local response count as cold defects."""
PRNU_RMS = 0.01
"""Pixel response non-uniformity, Gaussian rms."""
VIGNETTING_DEPTH_RANGE = (0.02, 0.05)
"""Fractional response loss at the detector corners (radial, quadratic), per detector."""
DETECTOR_RESPONSE_RANGE = (0.95, 1.05)
"""Detector-to-detector response factor, uniform."""
PIXEL_SIZE_CM = 10e-4
"""Pixel pitch (10 µm), for the cosmic-ray rate per cm²."""
COSMIC_RAY_PIXELS = (1, 10)
"""Number of pixels of a cosmic-ray track or blob (inclusive range)."""
COSMIC_RAY_ENERGY_RANGE_E = (300.0, 3000.0)
"""Charge deposited per pixel by a cosmic ray (true e⁻), log-uniform."""
GAUSSIAN_SHOT_MIN_E = 100.0
"""Shot noise is drawn Gaussian (exact mean and variance) above this mean, Poisson below."""
DEFECT_BITS = {"hot_pixel": 1, "cold_pixel": 2, "hot_column": 4, "dead_column": 8}
"""Bits of the DEFECTS truth image (`SimulatedCamera.defect_bitmask`)."""

_MAX_SEQ_NUM = 99_999
_STRUCTURE_STREAM = 0
_EXPOSURE_STREAM = 1
_PHYSICS_STREAM = 2
_RESPONSE_STREAM = 3
_DETECTOR_STREAM = 4
_FAULT_STREAM = 5
_RESPONSE_CACHE_BYTES = 1 << 30
"""Budget of the cache of per-amplifier response maps (recomputed deterministically if evicted)."""


def assemble(detector: Detector, amp_data: dict[str, np.ndarray]) -> np.ndarray:
    """Assemble per-amplifier data sections (readout order) into detector orientation.

    ``amp_data[name]`` must have the amplifier's data-section shape. This is the convention
    the ISR code uses: ``data[::-1, :]`` if ``flip_y``, then ``[:, ::-1]`` if ``flip_x``,
    placed at ``detector_slice``.
    """
    first = next(iter(amp_data.values()))
    out = np.zeros(detector.shape, dtype=np.result_type(first.dtype, np.float32))
    for amp in detector.amplifiers:
        data = amp_data[amp.name]
        if amp.flip_y:
            data = data[::-1, :]
        if amp.flip_x:
            data = data[:, ::-1]
        out[amp.detector_slice] = data
    return out


def unassemble(detector: Detector, image: np.ndarray) -> dict[str, np.ndarray]:
    """Inverse of `assemble`: a detector-orientation image → per-amplifier readout-order views."""
    out: dict[str, np.ndarray] = {}
    for amp in detector.amplifiers:
        data = image[amp.detector_slice]
        if amp.flip_x:
            data = data[:, ::-1]
        if amp.flip_y:
            data = data[::-1, :]
        out[amp.name] = data
    return out


def _to_readout(amp: AmplifierGeometry, data: np.ndarray) -> np.ndarray:
    """Inverse of the orientation in `assemble`: detector orientation → readout order."""
    if amp.flip_x:
        data = data[:, ::-1]
    if amp.flip_y:
        data = data[::-1, :]
    return data


def _readout_column(amp: AmplifierGeometry, detector_column: int) -> int:
    """Data-section column (readout order) of a detector column inside ``amp``."""
    local = detector_column - amp.x0
    return amp.data_cols - 1 - local if amp.flip_x else local


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def _bf_variance(mean: Any, a00: float) -> Any:
    """Shot-noise variance (e⁻²) with the brighter-fatter deficit: (exp(2 a00 m) - 1) / (2 a00)."""
    if a00 == 0.0:
        return mean * 1.0
    scale = 2.0 * a00
    if isinstance(mean, np.ndarray) and mean.dtype == np.float32:
        out = mean * np.float32(scale)
        np.expm1(out, out=out)
        out *= np.float32(1.0 / scale)
        return out
    return np.expm1(np.asarray(mean, dtype=np.float64) * scale) / scale


def _poisson_bf(mean: np.ndarray, a00: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson draws of ``mean`` (float64 array) with the fluctuation scaled by sqrt(f)."""
    counts = rng.poisson(mean).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(mean > 0, _bf_variance(mean, a00) / np.where(mean > 0, mean, 1.0), 1.0)
    return mean + (counts - mean) * np.sqrt(f)


def _shot_noise(mean: np.ndarray, a00: float, rng: np.random.Generator) -> np.ndarray:
    """Collected electrons (float32) for a map of expected electrons (float32), BF included."""
    out = _bf_variance(mean, a00)
    np.sqrt(out, out=out)
    out *= rng.standard_normal(mean.shape, dtype=np.float32)
    out += mean
    low = mean < GAUSSIAN_SHOT_MIN_E
    if low.any():
        out[low] = _poisson_bf(mean[low].astype(np.float64), a00, rng)
    return out


def _poisson_small(mean: float, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Poisson draws (float32) of a small uniform ``mean`` by inversion of float32 uniforms.

    Several times faster than `numpy.random.Generator.poisson` for a whole frame of dark
    current; the tail beyond a cumulative probability of 1 - 3e-8 (float32 resolution) is
    folded into the last count.
    """
    uniform = rng.random(shape, dtype=np.float32)
    counts = np.zeros(shape, dtype=np.uint8)
    above = np.empty(shape, dtype=bool)
    pmf = math.exp(-mean)
    cdf = 0.0
    k = 0
    while k < 250:
        cdf += pmf
        if 1.0 - cdf < 3e-8:
            break
        np.greater(uniform, np.float32(cdf), out=above)
        counts += above
        k += 1
        pmf *= mean / k
    return counts.astype(np.float32)


def _shot_noise_uniform(
    mean: float, shape: tuple[int, int], a00: float, rng: np.random.Generator
) -> np.ndarray:
    """Collected electrons (float32) for the same expected ``mean`` on every pixel."""
    if mean <= 0.0:
        return np.zeros(shape, dtype=np.float32)
    variance = float(_bf_variance(mean, a00))
    if mean >= GAUSSIAN_SHOT_MIN_E:
        out = rng.standard_normal(shape, dtype=np.float32)
        out *= np.float32(math.sqrt(variance))
        out += np.float32(mean)
        return out
    out = (
        _poisson_small(mean, shape, rng) if mean <= 4.0 else rng.poisson(mean, size=shape).astype(np.float32)
    )
    scale = math.sqrt(variance / mean)
    if scale != 1.0:
        out -= np.float32(mean)
        out *= np.float32(scale)
        out += np.float32(mean)
    return out


@dataclass(frozen=True)
class _AmpModel:
    """Fixed (per-seed) model of one amplifier, in readout orientation.

    Bias structure in ADU; gain in e⁻/ADU; dark current, full well and a00 in true electrons.
    """

    geometry: AmplifierGeometry
    bias_level_adu: float
    dark_current_e_per_s: float
    row_structure_adu: np.ndarray
    """Per raw row (data and parallel-overscan rows), added to the whole row."""
    column_structure_adu: np.ndarray
    """Per data column, data section only."""
    rise_adu: float
    rise_scale_rows: float
    corner_adu: float
    corner_scale_rows: float
    corner_scale_cols: float
    gain: float
    """Actual gain, e⁻/ADU."""
    a00: float
    full_well_e: float
    nonlinearity_k: float
    hot_index: np.ndarray
    """Flat (raveled) data-section indices of the hot pixels (unique)."""
    hot_extra_e_per_s: np.ndarray
    cold_index: np.ndarray
    """Flat data-section indices of the cold pixels (unique)."""
    cold_response: np.ndarray
    """Relative response of the cold pixels."""
    hot_column: int | None
    """Data-section column (readout order) of the detector's hot column, if in this amplifier."""
    hot_column_e_per_s: float
    dead_column: int | None
    """Data-section column (readout order) of the detector's dead column, if in this amplifier."""
    dead_column_response: float

    @property
    def nominal_gain(self) -> float:
        return self.geometry.gain

    @property
    def read_noise_e(self) -> float:
        return self.geometry.read_noise

    @property
    def read_noise_adu(self) -> float:
        return self.geometry.read_noise / self.gain

    @property
    def turnoff_adu(self) -> float:
        """Mean signal (raw ADU above the bias) at which the PTC turns over: NL(full well) / gain."""
        return (1.0 - self.nonlinearity_k) * self.full_well_e / self.gain

    @property
    def data_shape(self) -> tuple[int, int]:
        return (self.geometry.data_rows, self.geometry.data_cols)

    def structure_adu(self) -> np.ndarray:
        """Column structure + 2-D bias structure of the data section (readout order), float32."""
        g = self.geometry
        rows = np.arange(g.data_rows, dtype=np.float64)
        rise = (self.rise_adu * np.exp(-rows / self.rise_scale_rows)).astype(np.float32)
        out = np.add.outer(rise, self.column_structure_adu.astype(np.float32))
        # The corner bump is below 1e-7 of its amplitude (far below float32 resolution of the
        # raw values) beyond ~16 e-folding lengths: only that block is computed.
        n_rows = min(g.data_rows, math.ceil(16.2 * self.corner_scale_rows))
        n_cols = min(g.data_cols, math.ceil(16.2 * self.corner_scale_cols))
        corner_r = self.corner_adu * np.exp(-np.arange(n_rows) / self.corner_scale_rows)
        corner_c = np.exp(-np.arange(n_cols) / self.corner_scale_cols)
        out[:n_rows, :n_cols] += np.outer(corner_r, corner_c).astype(np.float32)
        return out

    def dark_map_e_per_s(self) -> np.ndarray:
        """Dark current of every data pixel (readout order), true e⁻/s, float32."""
        out = np.full(self.data_shape, self.dark_current_e_per_s, dtype=np.float32)
        out.ravel()[self.hot_index] += self.hot_extra_e_per_s.astype(np.float32)
        if self.hot_column is not None:
            out[:, self.hot_column] += np.float32(self.hot_column_e_per_s)
        return out


@dataclass(frozen=True)
class _DetectorModel:
    """Fixed (per-seed) detector-level model: response factor, vignetting, the two columns."""

    response: float
    vignetting_depth: float
    vignetting_center: tuple[float, float]
    """(row, column) of the vignetting centre in assembled detector pixels."""
    hot_column_amp: str
    hot_column: int
    """Detector column of the hot column."""
    hot_column_e_per_s: float
    dead_column_amp: str
    dead_column: int
    """Detector column of the dead column."""
    dead_column_response: float


@dataclass(frozen=True)
class _FrameSpec:
    """What one exposure collects: image type, times and the faults that apply to it."""

    image_type: str
    index: int
    """0-based index of the frame among the frames of its image type taken by the camera."""
    exptime: float
    darktime: float
    leak_e: float
    dark_ramp_e_per_s: float
    hot_amplifiers: tuple[SimulatorFault, ...]
    kinds: tuple[str, ...]

    def read_noise_factor(self, amp_name: str) -> float:
        factor = 1.0
        for fault in self.hot_amplifiers:
            if fault.affects_amplifier(amp_name):
                factor *= fault.factor
        return factor


class SimulatedCamera(CameraDriver):
    """A camera that synthesises raw frames from a physical model with known truth.

    The model (bias structure, gains, read noise, brighter-fatter, nonlinearity, full well,
    dark current with hot pixels and a hot column, flat response with PRNU, vignetting, cold
    pixels and a dead column, cosmic rays on darks, injected faults) is described in the module
    docstring. Every fixed quantity is drawn from ``seed`` (per detector and amplifier), every
    noise draw from (``seed``, exposure id, detector).

    Parameters
    ----------
    instrument : `Instrument`
        Instrument to simulate (geometry, nominal gains and read noise, filters).
    output_dir : `pathlib.Path`
        Where raw files ``<obs_id>_det<NNN>.fits`` (and truth files) are written.
    seed : `int`
        Fixes the per-amplifier model and, with the exposure id and detector, the noise.
    amp_data_shape : `tuple` [`int`, `int`], optional
        ``(rows, cols)`` of each amplifier's data section; default is the real 2000 x 509.
    bias_level_adu : `float`
        Mean bias level; each amplifier gets an offset of up to ±300 ADU around it.
    state_dir : `pathlib.Path`, optional
        Where the per-(instrument, day_obs) sequence counters live; default ``output_dir/.state``.
    clock : callable, optional
        Returns the current UTC `datetime`; default ``datetime.now(UTC)``.
    dark_current_e_per_s : `float` or `dict` [`str`, `float`]
        Background dark current (true e⁻/s), one value for all amplifiers or per amplifier name
        (missing names get `DEFAULT_DARK_CURRENT_E_PER_S`).
    flat_flux_e_per_s : `float`
        Illumination of flat frames (true e⁻/s per pixel of unit response).
    hot_pixel_fraction, cold_pixel_fraction : `float`
        Fractions of hot and cold pixels.
    cosmic_ray_rate : `float`
        Cosmic rays per cm² per second of dark time, DARK frames only.
    gain_spread : `float`
        Actual gains are the nominal ones x (1 + uniform(±``gain_spread``)).
    faults : sequence of `shared.runconfig.SimulatorFault`
        Faults to inject.
    compress : `bool`
        RICE-compress the segments, as the cameras do (default); `False` writes plain int32 images.

    Raises
    ------
    shared.runconfig.ConfigurationError
        If a setting is outside the limits of `shared.runconfig.SimulatorConfig` (the one place
        they are stated). `from_config` builds the camera from a run configuration.
    """

    def __init__(
        self,
        instrument: Instrument,
        output_dir: Path,
        *,
        seed: int = 0,
        amp_data_shape: tuple[int, int] | None = None,
        bias_level_adu: float = DEFAULT_BIAS_LEVEL_ADU,
        state_dir: Path | None = None,
        clock: Callable[[], datetime] | None = None,
        dark_current_e_per_s: float | Mapping[str, float] = DEFAULT_DARK_CURRENT_E_PER_S,
        flat_flux_e_per_s: float = DEFAULT_FLAT_FLUX_E_PER_S,
        hot_pixel_fraction: float = DEFAULT_HOT_PIXEL_FRACTION,
        cold_pixel_fraction: float = DEFAULT_COLD_PIXEL_FRACTION,
        cosmic_ray_rate: float = DEFAULT_COSMIC_RAY_RATE,
        gain_spread: float = DEFAULT_GAIN_SPREAD,
        faults: Sequence[SimulatorFault] = (),
        compress: bool = True,
    ) -> None:
        # The limits are those of the configuration's simulator section, checked by it.
        per_amplifier: dict[str, float] = {}
        background = DEFAULT_DARK_CURRENT_E_PER_S
        if isinstance(dark_current_e_per_s, Mapping):
            per_amplifier = {name: float(value) for name, value in dark_current_e_per_s.items()}
        else:
            background = float(dark_current_e_per_s)
        settings = SimulatorConfig.validated(
            seed=seed,
            amp_data_shape=amp_data_shape,
            bias_level_adu=bias_level_adu,
            faults=list(faults),
            flat_flux_e_per_s=flat_flux_e_per_s,
            dark_current_e_per_s=background,
            hot_pixel_fraction=hot_pixel_fraction,
            cold_pixel_fraction=cold_pixel_fraction,
            cosmic_ray_rate=cosmic_ray_rate,
            gain_spread=gain_spread,
        )
        for value in per_amplifier.values():
            SimulatorConfig.validated(dark_current_e_per_s=value)
        self.instrument = instrument
        self.output_dir = Path(output_dir)
        self.seed = settings.seed
        self.amp_data_shape = settings.amp_data_shape
        self.bias_level_adu = settings.bias_level_adu
        self.state_dir = Path(state_dir) if state_dir is not None else self.output_dir / ".state"
        self._clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        self._dark_current: float | dict[str, float] = per_amplifier or settings.dark_current_e_per_s
        self.flat_flux_e_per_s = settings.flat_flux_e_per_s
        self.hot_pixel_fraction = settings.hot_pixel_fraction
        self.cold_pixel_fraction = settings.cold_pixel_fraction
        self.cosmic_ray_rate = settings.cosmic_ray_rate
        self.gain_spread = settings.gain_spread
        self.faults: tuple[SimulatorFault, ...] = tuple(settings.faults)
        self.physical_filter = instrument.default_filter
        self.compress = compress
        self._closed = False
        self._detectors: dict[int, Detector] = {
            d.id: (d.with_data_shape(*amp_data_shape) if amp_data_shape else d) for d in instrument.detectors
        }
        self._models: dict[int, dict[str, _AmpModel]] = {}
        self._detector_models: dict[int, _DetectorModel] = {}
        self._responses: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()
        self._responses_bytes = 0
        self._lock = threading.Lock()
        self._frame_counts: dict[str, int] = {}
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_config(
        cls,
        instrument: Instrument,
        simulator: SimulatorConfig,
        output_dir: Path,
        state_dir: Path | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> SimulatedCamera:
        """The camera a run configuration's ``simulator`` section describes.

        Parameters
        ----------
        instrument : `Instrument`
            Instrument to simulate.
        simulator : `shared.runconfig.SimulatorConfig`
            The run's simulator settings (already validated).
        output_dir : `pathlib.Path`
            Where raw files are written.
        state_dir : `pathlib.Path`, optional
            Where the sequence counters live; default ``output_dir/.state``.
        clock : callable, optional
            Returns the current UTC `datetime`; default ``datetime.now(UTC)``.
        """
        settings = dict(simulator)  # field name -> value; the keyword arguments have the same names
        return cls(instrument, output_dir, state_dir=state_dir, clock=clock, **settings)

    # ------------------------------------------------------------------ CameraDriver API

    async def setup_instrument(self, physical_filter: str) -> None:
        self._check_open()
        valid = [name for name, _ in self.instrument.filters]
        if physical_filter not in valid:
            raise CameraError(
                f"{self.instrument.name} has no filter {physical_filter!r}; valid filters are {valid}"
            )
        await asyncio.sleep(0)
        self.physical_filter = physical_filter

    async def take_image(self, request: ExposureRequest, detectors: Sequence[int]) -> list[CapturedFrame]:
        self._check_open()
        image_type = self._validate_request(request)
        det_ids = self._validate_detectors(detectors)
        physical_filter = self.physical_filter
        await asyncio.sleep(0)
        now = self._clock()
        day_obs = self.day_obs(now)
        seq_num = await asyncio.to_thread(self._next_seq_num, day_obs)
        exposure_id = compute_exposure_id(day_obs, seq_num, self.instrument.obs_id_prefix.split("_")[1])
        obs_id = f"{self.instrument.obs_id_prefix}_{day_obs}_{seq_num:06d}"
        index = self._frame_counts.get(image_type, 0)
        self._frame_counts[image_type] = index + 1
        header = self._exposure_header(
            request, image_type, now, day_obs, seq_num, exposure_id, obs_id, physical_filter
        )
        spec = self._frame_spec(image_type, index, header, exposure_id)
        paths = await asyncio.gather(
            *(
                asyncio.to_thread(self._expose_detector, header, exposure_id, det_id, spec)
                for det_id in det_ids
            )
        )
        return [
            CapturedFrame(exposure_id=exposure_id, obs_id=obs_id, detector=det_id, path=path)
            for det_id, path in zip(det_ids, paths, strict=True)
        ]

    async def close(self) -> None:
        self._closed = True

    # ------------------------------------------------------------------ truth

    @staticmethod
    def frame_truth_path(raw_path: Path) -> Path:
        """The per-frame truth file next to a raw: ``<obs_id>_det<NNN>.truth.json``."""
        raw_path = Path(raw_path)
        return raw_path.with_name(raw_path.name.removesuffix(".fits") + ".truth.json")

    @classmethod
    def frame_truth(cls, raw_path: Path) -> dict[str, Any]:
        """What was injected into one frame (not in the raw's header, which is the camera's).

        Returns
        -------
        truth : `dict`
            ``obs_id``, ``exposure_id``, ``detector``, ``seed``, ``index`` (0-based among the
            frames of its image type), ``faults`` (kinds applied), ``light_leak_e`` (e⁻ per pixel),
            ``dark_ramp_e_per_s`` and ``n_cosmic_rays``.
        """
        loaded: dict[str, Any] = json.loads(cls.frame_truth_path(raw_path).read_text())
        return loaded

    def detector_geometry(self, detector_id: int) -> Detector:
        """The simulated geometry of a detector (resized if ``amp_data_shape`` was given)."""
        try:
            return self._detectors[detector_id]
        except KeyError:
            raise CameraError(
                f"{self.instrument.name} has no detector {detector_id}; "
                f"valid detectors are {sorted(self._detectors)}"
            ) from None

    def truth(self, detector_id: int) -> dict[str, Any]:
        """Injected scalar truth of a detector (JSON-serialisable).

        Returns
        -------
        truth : `dict`
            ``instrument``, ``detector``, ``detname``, ``seed``, ``flat_flux_e_per_s``,
            ``readout_overhead_s``, ``hot_pixel_fraction``, ``cold_pixel_fraction``,
            ``cosmic_ray_rate`` (/cm²/s), ``gain_spread``, ``prnu_rms``, ``response`` (detector
            response factor), ``vignetting_depth``, ``n_hot_pixels``, ``n_cold_pixels``,
            ``hot_defect_threshold_e_per_s``, ``cold_defect_threshold``,
            ``hot_column`` = ``{"amplifier", "column" (detector column), "extra_e_per_s"}``,
            ``dead_column`` = ``{"amplifier", "column", "response"}``, ``faults`` (list of
            dicts) and ``amplifiers`` = ``{amp: {"gain" (actual, e⁻/ADU), "nominal_gain",
            "read_noise_e", "read_noise_adu", "bias_level_adu", "dark_current_e_per_s"
            (background, true e⁻/s), "a00" (1/e⁻), "full_well_e", "turnoff_adu"
            (= (1 - nonlinearity_k) full_well_e / gain), "nonlinearity_k", "n_hot_pixels",
            "n_cold_pixels"}}``.
        """
        det = self.detector_geometry(detector_id)
        models = self._amp_models(detector_id)
        dm = self._detector_model(detector_id)
        return {
            "instrument": self.instrument.name,
            "detector": det.id,
            "detname": det.name,
            "seed": self.seed,
            "flat_flux_e_per_s": self.flat_flux_e_per_s,
            "readout_overhead_s": READOUT_OVERHEAD_S,
            "hot_pixel_fraction": self.hot_pixel_fraction,
            "cold_pixel_fraction": self.cold_pixel_fraction,
            "cosmic_ray_rate": self.cosmic_ray_rate,
            "gain_spread": self.gain_spread,
            "prnu_rms": PRNU_RMS,
            "response": dm.response,
            "vignetting_depth": dm.vignetting_depth,
            "n_hot_pixels": int(sum(m.hot_index.size for m in models.values())),
            "n_cold_pixels": int(sum(m.cold_index.size for m in models.values())),
            "hot_defect_threshold_e_per_s": HOT_DEFECT_THRESHOLD_E_PER_S,
            "cold_defect_threshold": COLD_DEFECT_THRESHOLD,
            "hot_column": {
                "amplifier": dm.hot_column_amp,
                "column": dm.hot_column,
                "extra_e_per_s": dm.hot_column_e_per_s,
            },
            "dead_column": {
                "amplifier": dm.dead_column_amp,
                "column": dm.dead_column,
                "response": dm.dead_column_response,
            },
            "faults": [f.model_dump() for f in self.faults],
            "amplifiers": {
                name: {
                    "gain": m.gain,
                    "nominal_gain": m.nominal_gain,
                    "read_noise_e": m.read_noise_e,
                    "read_noise_adu": m.read_noise_adu,
                    "bias_level_adu": m.bias_level_adu,
                    "dark_current_e_per_s": m.dark_current_e_per_s,
                    "a00": m.a00,
                    "full_well_e": m.full_well_e,
                    "turnoff_adu": m.turnoff_adu,
                    "nonlinearity_k": m.nonlinearity_k,
                    "n_hot_pixels": int(m.hot_index.size),
                    "n_cold_pixels": int(m.cold_index.size),
                }
                for name, m in models.items()
            },
        }

    def bias_structure_e(self, detector_id: int) -> np.ndarray:
        """Expected combined bias (ISR e⁻) on the assembled, trimmed detector, float64.

        (column structure + 2-D bias structure) x nominal gain, in detector orientation; the row
        structure and the bias level are not included (overscan subtraction removes them).
        """
        det = self.detector_geometry(detector_id)
        models = self._amp_models(detector_id)
        per_amp = {name: m.structure_adu().astype(np.float64) * m.nominal_gain for name, m in models.items()}
        return assemble(det, per_amp)

    def dark_current_map_e_per_s(self, detector_id: int) -> np.ndarray:
        """Expected combined dark (ISR e⁻ per second of dark time) on the assembled detector.

        Background dark current + hot pixels + hot column, x nominal / actual gain (what an ISR
        with the nominal gains measures), float32, detector orientation. Cosmic rays and faults
        are not included.
        """
        det = self.detector_geometry(detector_id)
        models = self._amp_models(detector_id)
        per_amp = {}
        for name, m in models.items():
            dark = m.dark_map_e_per_s()
            dark *= np.float32(m.nominal_gain / m.gain)
            per_amp[name] = dark
        return assemble(det, per_amp)

    def flat_response(self, detector_id: int, *, isr_units: bool = True) -> np.ndarray:
        """Response map of the assembled detector, float32, detector orientation.

        Detector factor x vignetting x (1 + PRNU) x cold pixels and dead column: a flat of
        ``flat_flux_e_per_s`` x EXPTIME true e⁻ per pixel collects that x this map. With
        ``isr_units`` (default) each amplifier is also multiplied by nominal / actual gain, so
        the map equals an ISR'd flat (nominal gains) divided by ``flat_flux_e_per_s`` x EXPTIME
        (dark and the slight nonlinearity aside); it is not normalised.
        """
        det = self.detector_geometry(detector_id)
        models = self._amp_models(detector_id)
        per_amp = {}
        for name, m in models.items():
            response = self._response_map(detector_id, name).copy()
            if isr_units:
                response *= np.float32(m.nominal_gain / m.gain)
            per_amp[name] = response
        return assemble(det, per_amp)

    def defect_mask(self, detector_id: int) -> dict[str, np.ndarray]:
        """Boolean defect maps of the assembled detector (detector orientation).

        Keys ``hot_pixel`` (extra dark current >= `HOT_DEFECT_THRESHOLD_E_PER_S`),
        ``cold_pixel`` (response < `COLD_DEFECT_THRESHOLD` of the local response),
        ``hot_column`` and ``dead_column`` (whole amplifier columns), and ``any``.
        """
        det = self.detector_geometry(detector_id)
        models = self._amp_models(detector_id)
        planes: dict[str, dict[str, np.ndarray]] = {k: {} for k in DEFECT_BITS}
        for name, m in models.items():
            hot = np.zeros(m.data_shape, dtype=bool)
            hot.ravel()[m.hot_index[m.hot_extra_e_per_s >= HOT_DEFECT_THRESHOLD_E_PER_S]] = True
            cold = np.zeros(m.data_shape, dtype=bool)
            cold.ravel()[m.cold_index[m.cold_response < COLD_DEFECT_THRESHOLD]] = True
            hot_col = np.zeros(m.data_shape, dtype=bool)
            if m.hot_column is not None and m.hot_column_e_per_s >= HOT_DEFECT_THRESHOLD_E_PER_S:
                hot_col[:, m.hot_column] = True
            dead_col = np.zeros(m.data_shape, dtype=bool)
            if m.dead_column is not None and m.dead_column_response < COLD_DEFECT_THRESHOLD:
                dead_col[:, m.dead_column] = True
            planes["hot_pixel"][name] = hot
            planes["cold_pixel"][name] = cold
            planes["hot_column"][name] = hot_col
            planes["dead_column"][name] = dead_col
        out = {key: assemble(det, per_amp).astype(bool) for key, per_amp in planes.items()}
        out["any"] = np.logical_or.reduce([out[key] for key in DEFECT_BITS])
        return out

    def defect_bitmask(self, detector_id: int) -> np.ndarray:
        """`defect_mask` as one uint8 image with the bits of `DEFECT_BITS`."""
        masks = self.defect_mask(detector_id)
        out = np.zeros(self.detector_geometry(detector_id).shape, dtype=np.uint8)
        for key, bit in DEFECT_BITS.items():
            out[masks[key]] |= np.uint8(bit)
        return out

    def write_truth(self, detector_ids: Iterable[int] | None = None) -> list[Path]:
        """Write ``truth_det<NNN>.fits`` per detector and ``truth.json`` into ``output_dir``.

        Each FITS file has the scalar truth as HIERARCH keys in its primary header and IMAGE
        extensions ``BIAS_STRUCTURE_E`` (`bias_structure_e`), ``DARK_CURRENT_E_PER_S``
        (`dark_current_map_e_per_s`), ``FLAT_RESPONSE`` (`flat_response`, ISR units) and
        ``DEFECTS`` (`defect_bitmask`, bits in its header). Returns the FITS paths then the JSON
        path.
        """
        ids = list(self.instrument.detector_ids if detector_ids is None else detector_ids)
        paths: list[Path] = []
        summary: dict[str, Any] = {
            "instrument": self.instrument.name,
            "seed": self.seed,
            "amp_data_shape": list(self.amp_data_shape) if self.amp_data_shape else None,
            "detectors": {},
        }
        for det_id in ids:
            truth = self.truth(det_id)
            summary["detectors"][str(det_id)] = truth
            primary = fits.PrimaryHDU()
            hdr = primary.header
            hdr["INSTRUME"] = self.instrument.name
            hdr["DETECTOR"] = det_id
            hdr["DETNAME"] = truth["detname"]
            hdr["SIMSEED"] = self.seed
            hdr["HIERARCH FLAT FLUX E PER S"] = self.flat_flux_e_per_s
            hdr["HIERARCH READOUT OVERHEAD S"] = READOUT_OVERHEAD_S
            for key in ("response", "vignetting_depth", "n_hot_pixels", "n_cold_pixels", "cosmic_ray_rate"):
                hdr[f"HIERARCH {key.upper().replace('_', ' ')}"] = truth[key]
            for key in ("hot_column", "dead_column"):
                for sub, value in truth[key].items():
                    hdr[f"HIERARCH {key.upper().replace('_', ' ')} {sub.upper().replace('_', ' ')}"] = value
            for amp, values in truth["amplifiers"].items():
                for key, value in values.items():
                    hdr[f"HIERARCH {amp} {key.upper().replace('_', ' ')}"] = value
            bias = fits.ImageHDU(self.bias_structure_e(det_id).astype(np.float32), name="BIAS_STRUCTURE_E")
            bias.header["BUNIT"] = "electron"
            dark = fits.ImageHDU(self.dark_current_map_e_per_s(det_id), name="DARK_CURRENT_E_PER_S")
            dark.header["BUNIT"] = "electron/s"
            flat = fits.ImageHDU(self.flat_response(det_id), name="FLAT_RESPONSE")
            flat.header["BUNIT"] = ""
            defects = fits.ImageHDU(self.defect_bitmask(det_id), name="DEFECTS")
            for key, bit in DEFECT_BITS.items():
                defects.header[f"HIERARCH BIT {key.upper().replace('_', ' ')}"] = bit
            path = self.output_dir / f"truth_det{det_id:03d}.fits"
            fits.HDUList([primary, bias, dark, flat, defects]).writeto(path, overwrite=True)
            paths.append(path)
        json_path = self.output_dir / "truth.json"
        json_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        paths.append(json_path)
        return paths

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def day_obs(now: datetime) -> int:
        """Observing day (``YYYYMMDD``): the UTC date of ``now`` - 12 h."""
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        shifted = now.astimezone(UTC) - timedelta(hours=12)
        return shifted.year * 10_000 + shifted.month * 100 + shifted.day

    def _check_open(self) -> None:
        if self._closed:
            raise CameraError("the simulated camera is closed")

    def _validate_request(self, request: ExposureRequest) -> str:
        image_type = request.image_type.upper()
        if image_type not in IMAGE_TYPES:
            raise CameraError(f"unsupported image type {request.image_type!r}; valid types are {IMAGE_TYPES}")
        exptime = float(request.exposure_time)
        if not math.isfinite(exptime) or exptime < 0:
            raise CameraError(f"exposure time must be finite and >= 0, got {request.exposure_time}")
        if image_type == "BIAS" and exptime != 0:
            raise CameraError(f"a BIAS has exposure time 0, got {request.exposure_time}")
        return image_type

    def _validate_detectors(self, detectors: Sequence[int]) -> list[int]:
        ids = [int(d) for d in detectors]
        if not ids:
            raise CameraError("no detectors requested")
        if len(set(ids)) != len(ids):
            raise CameraError(f"duplicate detectors in {ids}")
        for det_id in ids:
            self.detector_geometry(det_id)
        return ids

    def _next_seq_num(self, day_obs: int) -> int:
        """Allocate the next sequence number of (instrument, day_obs), under an exclusive flock."""
        path = self.state_dir / f"{self.instrument.name}_{day_obs}.seq"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        with os.fdopen(fd, "r+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                text = fh.read().strip()
                try:
                    last = int(text) if text else 0
                except ValueError:
                    raise CameraError(f"corrupt sequence-number file {path}: {text!r}") from None
                seq_num = last + 1
                if seq_num > _MAX_SEQ_NUM:
                    raise CameraError(f"sequence numbers of day_obs {day_obs} are exhausted")
                fh.seek(0)
                fh.truncate()
                fh.write(f"{seq_num}\n")
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return seq_num

    def _exposure_header(
        self,
        request: ExposureRequest,
        image_type: str,
        now: datetime,
        day_obs: int,
        seq_num: int,
        exposure_id: int,
        obs_id: str,
        physical_filter: str,
    ) -> fits.Header:
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        utc = now.astimezone(UTC).replace(tzinfo=None)
        exptime = float(request.exposure_time)
        darktime = exptime + READOUT_OVERHEAD_S
        shuttime = exptime if image_type == "FLAT" else 0.0
        beg = Time(utc, scale="utc").tai
        end = beg + TimeDelta(exptime, format="sec")
        beg.precision = end.precision = 6
        camcode, controller = self.instrument.obs_id_prefix.split("_")[:2]
        inst = self.instrument
        hdr = fits.Header()
        hdr["INSTRUME"] = (inst.header_names[0] if inst.header_names else inst.name, "instrument")
        hdr["TELESCOP"] = (inst.telescope, "telescope")
        hdr["CAMCODE"] = (camcode, "camera code")
        hdr["CONTRLLR"] = (controller, "controller: O = OCS")
        hdr["OBSID"] = (obs_id, "observation id")
        hdr["DAYOBS"] = (f"{day_obs:08d}", "observing day (UTC - 12 h)")
        hdr["SEQNUM"] = (seq_num, "sequence number within DAYOBS")
        hdr["GROUPID"] = (request.group_id, "group id")
        hdr["CURINDEX"] = (1, "index of this image in its sequence")
        hdr["MAXINDEX"] = (1, "number of images in its sequence")
        hdr["IMGTYPE"] = (image_type, "image type")
        hdr["TESTTYPE"] = (image_type, "test type")
        hdr["EXPTIME"] = (exptime, "[s] exposure time")
        hdr["DARKTIME"] = (darktime, "[s] dark time (exposure + readout overhead)")
        hdr["SHUTTIME"] = (shuttime, "[s] shutter open time")
        hdr["DATE-OBS"] = (beg.isot, "start of exposure (TAI)")
        hdr["DATE-BEG"] = (beg.isot, "start of exposure (TAI)")
        hdr["DATE-END"] = (end.isot, "end of exposure (TAI)")
        hdr["MJD-OBS"] = (beg.mjd, "[d] MJD of DATE-OBS (TAI)")
        hdr["MJD-BEG"] = (beg.mjd, "[d] MJD of DATE-BEG (TAI)")
        hdr["MJD-END"] = (end.mjd, "[d] MJD of DATE-END (TAI)")
        hdr["TIMESYS"] = ("TAI", "time scale of DATE-* and MJD-*")
        hdr["BUNIT"] = ("adu", "pixel unit")
        filt, _, grating = physical_filter.partition("~")
        hdr["FILTER"] = ("empty_1" if inst.has_grating and filt == "empty" else filt, "filter")
        if inst.has_grating:
            hdr["GRATING"] = ("empty_1" if grating in ("", "empty") else grating, "grating")
        hdr["PROGRAM"] = (request.program or None, "scheduling program")
        hdr["REASON"] = (request.reason or None, "reason for the exposure")
        hdr["OBJECT"] = ("FlatField position" if image_type == "FLAT" else None, "target")
        hdr["OBSANNOT"] = (request.note or "", "observer annotation")
        hdr["VIGN_MIN"] = ("FULLY", "minimum vignetting: the dome is closed")
        hdr["HEADVER"] = (2, "header version")
        if inst.camera_csc:
            hdr[f"HIERARCH SIMULATE {inst.camera_csc}"] = (1, "simulated camera")
        return hdr

    def _frame_spec(self, image_type: str, index: int, header: fits.Header, exposure_id: int) -> _FrameSpec:
        """The faults that apply to frame ``index`` of ``image_type`` and what they inject."""
        applied = [f for f in self.faults if f.applies(image_type, index)]
        rng = _rng(self.seed, _FAULT_STREAM, exposure_id)
        leak_e = 0.0
        ramp = 0.0
        for fault in applied:
            if fault.kind == "light_leak":
                leak_e += float(rng.uniform(0.0, 2.0 * fault.level_e))
            elif fault.kind == "dark_ramp":
                ramp += index * fault.step_e_per_s
        return _FrameSpec(
            image_type=image_type,
            index=index,
            exptime=float(header["EXPTIME"]),
            darktime=float(header["DARKTIME"]),
            leak_e=leak_e,
            dark_ramp_e_per_s=ramp,
            hot_amplifiers=tuple(f for f in applied if f.kind == "hot_amplifier"),
            kinds=tuple(dict.fromkeys(f.kind for f in applied)),
        )

    def _dark_current_of(self, amp_name: str) -> float:
        if isinstance(self._dark_current, dict):
            return float(self._dark_current.get(amp_name, DEFAULT_DARK_CURRENT_E_PER_S))
        return float(self._dark_current)

    @staticmethod
    def _pick_column(amp: AmplifierGeometry, rng: np.random.Generator) -> int:
        """A detector column of ``amp``, away from the amplifier edges when there is room."""
        u = float(rng.uniform())
        cols = amp.data_cols
        local = int(2 + u * (cols - 4)) if cols >= 5 else int(u * cols)
        return amp.x0 + min(local, cols - 1)

    def _detector_model(self, detector_id: int) -> _DetectorModel:
        """Detector-level model, drawn once from (seed, detector)."""
        cached = self._detector_models.get(detector_id)
        if cached is not None:
            return cached
        det = self.detector_geometry(detector_id)
        rng = _rng(self.seed, _DETECTOR_STREAM, detector_id)
        rows, cols = det.shape
        response = float(rng.uniform(*DETECTOR_RESPONSE_RANGE))
        depth = float(rng.uniform(*VIGNETTING_DEPTH_RANGE))
        center = (rows * (0.5 + float(rng.uniform(-0.1, 0.1))), cols * (0.5 + float(rng.uniform(-0.1, 0.1))))
        amps = det.amplifiers
        hot_i = int(rng.integers(len(amps)))
        dead_i = (hot_i + 1 + int(rng.integers(max(len(amps) - 1, 1)))) % len(amps)
        hot_amp, dead_amp = amps[hot_i], amps[dead_i]
        model = _DetectorModel(
            response=response,
            vignetting_depth=depth,
            vignetting_center=center,
            hot_column_amp=hot_amp.name,
            hot_column=self._pick_column(hot_amp, rng),
            hot_column_e_per_s=float(rng.uniform(*HOT_COLUMN_RANGE_E_PER_S)),
            dead_column_amp=dead_amp.name,
            dead_column=self._pick_column(dead_amp, rng),
            dead_column_response=float(rng.uniform(*DEAD_COLUMN_RESPONSE_RANGE)),
        )
        self._detector_models[detector_id] = model
        return model

    def _amp_models(self, detector_id: int) -> dict[str, _AmpModel]:
        """Fixed model of every amplifier of a detector, drawn once from (seed, detector, amp)."""
        cached = self._models.get(detector_id)
        if cached is not None:
            return cached
        det = self.detector_geometry(detector_id)
        dm = self._detector_model(detector_id)
        models: dict[str, _AmpModel] = {}
        for amp in det.amplifiers:
            rng = _rng(self.seed, _STRUCTURE_STREAM, detector_id, amp.index)
            x = np.linspace(0.0, 1.0, amp.raw_rows)
            drift = rng.uniform(*ROW_DRIFT_RANGE_ADU) * np.sin(
                2 * np.pi * rng.uniform(0.5, 2.0) * x + rng.uniform(0, 2 * np.pi)
            )
            slope = rng.uniform(*ROW_SLOPE_RANGE_ADU) * (x - 0.5)
            bias_level = self.bias_level_adu + rng.uniform(-BIAS_OFFSET_RANGE_ADU, BIAS_OFFSET_RANGE_ADU)
            column_structure = rng.normal(0.0, COLUMN_STRUCTURE_RMS_ADU, amp.data_cols)
            rise = (rng.uniform(*BIAS_RISE_RANGE_ADU), rng.uniform(*BIAS_RISE_SCALE_ROWS))
            corner_adu = float(rng.uniform(*CORNER_RANGE_ADU))
            corner_scale_rows = float(rng.uniform(*CORNER_SCALE_PIXELS))
            corner_scale_cols = float(rng.uniform(*CORNER_SCALE_PIXELS))
            # Scalars first, so that they do not depend on amp_data_shape.
            phys = _rng(self.seed, _PHYSICS_STREAM, detector_id, amp.index)
            gain = amp.gain * (1.0 + self.gain_spread * float(phys.uniform(-1.0, 1.0)))
            a00 = float(phys.uniform(*A00_RANGE))
            full_well = float(phys.uniform(*FULL_WELL_RANGE_E))
            k = float(phys.uniform(*NONLINEARITY_K_RANGE))
            n_pix = amp.data_rows * amp.data_cols
            n_hot = int(phys.binomial(n_pix, self.hot_pixel_fraction))
            hot_index = np.sort(phys.choice(n_pix, size=n_hot, replace=False)).astype(np.int64)
            low, high = (math.log(v) for v in HOT_PIXEL_RANGE_E_PER_S)
            hot_extra = np.exp(phys.uniform(low, high, size=n_hot))
            n_cold = int(phys.binomial(n_pix, self.cold_pixel_fraction))
            cold_index = np.sort(phys.choice(n_pix, size=n_cold, replace=False)).astype(np.int64)
            cold_response = phys.uniform(*COLD_PIXEL_RESPONSE_RANGE, size=n_cold)
            cold_response[phys.random(n_cold) < DEAD_PIXEL_FRACTION] = 0.0
            models[amp.name] = _AmpModel(
                geometry=amp,
                dark_current_e_per_s=self._dark_current_of(amp.name),
                gain=gain,
                a00=a00,
                full_well_e=full_well,
                nonlinearity_k=k,
                hot_index=hot_index,
                hot_extra_e_per_s=hot_extra,
                cold_index=cold_index,
                cold_response=cold_response,
                hot_column=_readout_column(amp, dm.hot_column) if amp.name == dm.hot_column_amp else None,
                hot_column_e_per_s=dm.hot_column_e_per_s if amp.name == dm.hot_column_amp else 0.0,
                dead_column=_readout_column(amp, dm.dead_column) if amp.name == dm.dead_column_amp else None,
                dead_column_response=dm.dead_column_response if amp.name == dm.dead_column_amp else 1.0,
                bias_level_adu=float(bias_level),
                row_structure_adu=drift + slope,
                column_structure_adu=column_structure,
                rise_adu=float(rise[0]),
                rise_scale_rows=float(rise[1]),
                corner_adu=corner_adu,
                corner_scale_rows=corner_scale_rows,
                corner_scale_cols=corner_scale_cols,
            )
        self._models[detector_id] = models
        return models

    def _response_map(self, detector_id: int, amp_name: str) -> np.ndarray:
        """Physical response of an amplifier's data section (readout order), float32, cached.

        The cache is bounded (`_RESPONSE_CACHE_BYTES`); evicted maps are recomputed identically.
        Callers must not modify the returned array.
        """
        key = (detector_id, amp_name)
        with self._lock:
            cached = self._responses.get(key)
            if cached is not None:
                self._responses.move_to_end(key)
                return cached
        det = self.detector_geometry(detector_id)
        m = self._amp_models(detector_id)[amp_name]
        dm = self._detector_model(detector_id)
        amp = m.geometry
        rng = _rng(self.seed, _RESPONSE_STREAM, detector_id, amp.index)
        response = rng.standard_normal(m.data_shape, dtype=np.float32)
        response *= np.float32(PRNU_RMS)
        response += np.float32(1.0)
        cy, cx = dm.vignetting_center
        rows, cols = det.shape
        r_max2 = max((y - cy) ** 2 + (x - cx) ** 2 for y in (0.0, rows) for x in (0.0, cols))
        dy2 = (np.arange(amp.y0, amp.y0 + amp.data_rows) + 0.5 - cy) ** 2
        dx2 = (np.arange(amp.x0, amp.x0 + amp.data_cols) + 0.5 - cx) ** 2
        vignetting = 1.0 - dm.vignetting_depth * np.add.outer(dy2, dx2) / r_max2
        response *= _to_readout(amp, (dm.response * vignetting).astype(np.float32))
        response.ravel()[m.cold_index] *= m.cold_response.astype(np.float32)
        if m.dead_column is not None:
            response[:, m.dead_column] *= np.float32(m.dead_column_response)
        response.setflags(write=False)
        with self._lock:
            if key not in self._responses:
                self._responses[key] = response
                self._responses_bytes += response.nbytes
            while self._responses_bytes > _RESPONSE_CACHE_BYTES and len(self._responses) > 1:
                _, old = self._responses.popitem(last=False)
                self._responses_bytes -= old.nbytes
            return self._responses.get(key, response)

    def _signal_e(
        self, detector_id: int, model: _AmpModel, spec: _FrameSpec, rng: np.random.Generator
    ) -> tuple[np.ndarray | None, int]:
        """Electrons collected by the data section (readout order, true e⁻) and cosmic-ray count.

        `None` when nothing is collected (a bias without light leak). Dark current (not on
        BIAS frames), illumination x response (FLAT), light leak, shot noise with the
        brighter-fatter deficit, cosmic rays (DARK) and the full-well clip.
        """
        shape = model.data_shape
        dark_time = 0.0 if spec.image_type == "BIAS" else spec.darktime
        uniform_e = (model.dark_current_e_per_s + spec.dark_ramp_e_per_s) * dark_time + spec.leak_e
        light_e = self.flat_flux_e_per_s * spec.exptime if spec.image_type == "FLAT" else 0.0
        hot = dark_time > 0 and (model.hot_index.size > 0 or model.hot_column is not None)
        n_cr = 0
        if spec.image_type == "DARK" and self.cosmic_ray_rate > 0:
            area_cm2 = shape[0] * shape[1] * PIXEL_SIZE_CM**2
            n_cr = int(rng.poisson(self.cosmic_ray_rate * area_cm2 * spec.darktime))
        if light_e > 0:
            mean = self._response_map(detector_id, model.geometry.name) * np.float32(light_e)
            mean += np.float32(uniform_e)
            if hot:
                mean.ravel()[model.hot_index] += (model.hot_extra_e_per_s * dark_time).astype(np.float32)
                if model.hot_column is not None:
                    mean[:, model.hot_column] += np.float32(model.hot_column_e_per_s * dark_time)
            electrons = _shot_noise(mean, model.a00, rng)
        elif uniform_e > 0 or hot or n_cr:
            electrons = _shot_noise_uniform(uniform_e, shape, model.a00, rng)
            if hot:
                hot_mean = uniform_e + model.hot_extra_e_per_s * dark_time
                if model.hot_column is not None:
                    column_e = model.hot_column_e_per_s * dark_time
                    column_mean = np.full(shape[0], uniform_e + column_e)
                    electrons[:, model.hot_column] = _poisson_bf(column_mean, model.a00, rng)
                    hot_mean = hot_mean + np.where(
                        model.hot_index % shape[1] == model.hot_column, column_e, 0.0
                    )
                electrons.ravel()[model.hot_index] = _poisson_bf(hot_mean, model.a00, rng)
        else:
            return None, 0
        if n_cr:
            self._add_cosmic_rays(electrons, n_cr, rng)
        np.minimum(electrons, np.float32(model.full_well_e), out=electrons)
        return electrons, n_cr

    @staticmethod
    def _add_cosmic_rays(electrons: np.ndarray, count: int, rng: np.random.Generator) -> None:
        """Deposit ``count`` cosmic rays (short tracks or compact blobs) into ``electrons``."""
        rows, cols = electrons.shape
        log_e = np.log(COSMIC_RAY_ENERGY_RANGE_E)
        for _ in range(count):
            n_pix = int(rng.integers(COSMIC_RAY_PIXELS[0], COSMIC_RAY_PIXELS[1] + 1))
            r0, c0 = int(rng.integers(rows)), int(rng.integers(cols))
            if rng.random() < 0.3:  # blob: pixels of the 3 x 3 neighbourhood
                cells = rng.choice(9, size=min(n_pix, 9), replace=False)
                dr, dc = cells // 3 - 1, cells % 3 - 1
            else:  # straight track, one pixel per step along its dominant axis
                angle = rng.uniform(0.0, np.pi)
                step = np.arange(n_pix) / max(abs(math.sin(angle)), abs(math.cos(angle)))
                dr = np.rint(step * math.sin(angle)).astype(np.int64)
                dc = np.rint(step * math.cos(angle)).astype(np.int64)
            energy = np.exp(rng.uniform(log_e[0], log_e[1], size=dr.size)).astype(np.float32)
            r, c = r0 + dr, c0 + dc
            inside = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
            np.add.at(electrons, (r[inside], c[inside]), energy[inside])

    def _electrons_to_adu(self, model: _AmpModel, electrons: np.ndarray) -> np.ndarray:
        """Amplifier response: true e⁻ → ADU with the actual gain and the quadratic nonlinearity."""
        if model.nonlinearity_k == 0.0:
            return electrons * np.float32(1.0 / model.gain)
        adu = electrons * electrons
        adu *= np.float32(-model.nonlinearity_k / (model.gain * model.full_well_e**2))
        adu += np.float32(1.0 / model.gain)
        adu *= electrons
        return adu

    def _render_amp(
        self, detector_id: int, model: _AmpModel, spec: _FrameSpec, rng: np.random.Generator
    ) -> tuple[np.ndarray, int]:
        """One raw amplifier array (readout order) as int32 ADU, and its cosmic-ray count."""
        g = model.geometry
        raw = rng.standard_normal((g.raw_rows, g.raw_cols), dtype=np.float32)
        raw *= np.float32(model.read_noise_adu * spec.read_noise_factor(g.name))
        level = model.bias_level_adu + rng.normal(0.0, EXPOSURE_LEVEL_RMS_ADU)
        rows = model.row_structure_adu + rng.normal(0.0, ROW_JITTER_RMS_ADU, g.raw_rows) + level
        raw += rows.astype(np.float32)[:, None]
        data = raw[g.data_slice]
        data += model.structure_adu()
        electrons, n_cr = self._signal_e(detector_id, model, spec, rng)
        if electrons is not None:
            data += self._electrons_to_adu(model, electrons)
        np.clip(raw, 0.0, g.saturation, out=raw)
        np.rint(raw, out=raw)
        return raw.astype(np.int32), n_cr

    def _expose_detector(
        self, exposure_header: fits.Header, exposure_id: int, detector_id: int, spec: _FrameSpec
    ) -> Path:
        """Render and write one detector of one exposure (runs in a worker thread)."""
        det = self.detector_geometry(detector_id)
        models = self._amp_models(detector_id)
        rng = _rng(self.seed, _EXPOSURE_STREAM, exposure_id, det.id)
        header = exposure_header.copy()
        header["RAFTBAY"] = (self.instrument.header_raftbay or det.raft, "raft bay")
        header["CCDSLOT"] = (det.name_in_raft, "CCD slot in raft")
        header["LSST_NUM"] = (det.serial, "detector serial number")
        header["CCD_MANU"] = (det.physical_type, "CCD manufacturer")
        header["CCD_TYPE"] = ("3800C" if det.physical_type == "ITL" else "CCD250", "CCD model")
        header["DETSIZE"] = (f"[1:{det.shape[1]},1:{det.shape[0]}]", "detector size")
        header["FILENAME"] = (f"{header['OBSID']}_{det.name}.fits", "original file name")
        amplifiers: dict[str, np.ndarray] = {}
        n_cr = 0
        for amp in det.amplifiers:
            amplifiers[amp.name], amp_cr = self._render_amp(det.id, models[amp.name], spec, rng)
            n_cr += amp_cr
        conditions = {"REB_COND": fits.Header(), "CONFIG_COND": fits.Header()}
        conditions["REB_COND"]["CCDTEMP"] = (-101.0, "[deg C] CCD temperature")
        conditions["REB_COND"]["TEMP1"] = (-20.0, "[deg C] REB temperature")
        conditions["CONFIG_COND"]["FPSEQCS"] = ("0", "sequencer checksum")
        image = RawDetectorImage(
            header=header,
            amplifiers=amplifiers,
            exposure_id=exposure_id,
            detector_id=det.id,
            conditions=conditions,
        )
        path = self.output_dir / f"{header['OBSID']}_det{det.id:03d}.fits"
        tmp = path.with_name(path.name + ".part")
        write_raw(image, det, tmp, compress=self.compress)
        frame_truth = {
            "obs_id": str(header["OBSID"]),
            "exposure_id": exposure_id,
            "detector": det.id,
            "seed": self.seed,
            "index": spec.index,
            "faults": list(spec.kinds),
            "light_leak_e": spec.leak_e,
            "dark_ramp_e_per_s": spec.dark_ramp_e_per_s,
            "n_cosmic_rays": n_cr,
        }
        truth_path = self.frame_truth_path(path)
        truth_tmp = truth_path.with_name(truth_path.name + ".part")
        truth_tmp.write_text(json.dumps(frame_truth, sort_keys=True) + "\n")
        os.replace(truth_tmp, truth_path)
        os.replace(tmp, path)
        return path
