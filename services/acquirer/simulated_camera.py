"""A simulated camera: a physical model of an ITL CCD readout with known truth.

`SimulatedCamera` implements `~services.acquirer.camera.CameraDriver` by synthesising raw
frames in readout order (see `shared.instruments`) and writing one FITS file per detector per
exposure. Everything injected is recorded so tests and the verification stages can compare
what cpflow measures with what was put in (`SimulatedCamera.truth`,
`SimulatedCamera.bias_structure_e`, `SimulatedCamera.write_truth`).

Model of one amplifier (ADU unless stated; ``g`` = nominal gain in e⁻/ADU)::

    raw[r, c] = clip(round(
          level + exposure_level                  # per-amp bias level (+ small per-exposure wander)
        + row_structure[r] + row_jitter[r]        # whole row: prescan, data, serial overscan
        + [data only] column_structure[c] + bias_structure_2d[r, c]
        + [data only] signal_e[r, c] / g          # dark current and illumination, Poisson in e⁻
        + read_noise_e / g * N(0, 1)              # every pixel
    ), 0, saturation)

Per detector and amplifier, fixed by ``seed`` (identical for every exposure of a camera built
with the same seed):

* bias level: ``bias_level_adu`` plus a uniform offset in ±`BIAS_OFFSET_RANGE_ADU`;
* row structure: a slow sinusoidal drift plus a linear slope of a few ADU over the raw rows,
  added to the *whole* row (prescan, data and serial overscan), so a per-row serial-overscan
  subtraction removes it;
* column structure: a fixed per-column pattern (Gaussian, `COLUMN_STRUCTURE_RMS_ADU` rms)
  in the data section only;
* 2-D bias structure: an exponential rise over the first rows read plus an exponential
  "readout corner" bump, data section only.

Per exposure: a Gaussian per-row jitter (`ROW_JITTER_RMS_ADU`, common to the whole row) and a
small per-amplifier level wander (`EXPOSURE_LEVEL_RMS_ADU`), both removed by the serial
overscan; Gaussian read noise in every pixel. DARK and FLAT frames collect dark current
(``dark_current_e_per_s`` x DARKTIME, Poisson) and FLAT frames a uniform illumination
(``flat_flux_e_per_s`` x EXPTIME, Poisson), data section only.

Timing: DARKTIME = EXPTIME + `READOUT_OVERHEAD_S` (0.2 s of shutter/readout overhead during
which the sensor integrates dark current) for every image type, so a bias has DARKTIME 0.2 s.
Bias frames are read out immediately and carry *no* dark charge in the model (a real bias
would collect 0.02 x 0.2 = 0.004 e⁻, 1/2000 of the read noise); this keeps the bias truth
exact. SHUTTIME is EXPTIME for flats and 0 for biases and darks (the shutter stays closed).

Later issues add hot pixels, a flat response, nonlinearity and cosmic rays: see the seams
`SimulatedCamera._signal_e` (electrons collected in the data section) and
`SimulatedCamera._electrons_to_adu` (the amplifier response).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
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

__all__ = [
    "BIAS_OFFSET_RANGE_ADU",
    "COLUMN_STRUCTURE_RMS_ADU",
    "DEFAULT_DARK_CURRENT_E_PER_S",
    "DEFAULT_FLAT_FLUX_E_PER_S",
    "EXPOSURE_LEVEL_RMS_ADU",
    "READOUT_OVERHEAD_S",
    "ROW_JITTER_RMS_ADU",
    "SimulatedCamera",
    "assemble",
    "fits_section",
]

DEFAULT_DARK_CURRENT_E_PER_S = 0.02
"""Dark current in e⁻/s/pixel."""
DEFAULT_FLAT_FLUX_E_PER_S = 2000.0
"""Uniform flat-field illumination in e⁻/s/pixel."""
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

_MAX_SEQ_NUM = 99_999
_STRUCTURE_STREAM = 0
_EXPOSURE_STREAM = 1


def fits_section(rows: slice, cols: slice, *, flip_x: bool = False, flip_y: bool = False) -> str:
    """Return the FITS 1-based, inclusive ``[x1:x2,y1:y2]`` string of a numpy ``[rows, cols]`` slice.

    With ``flip_x``/``flip_y`` the corresponding range is written in decreasing order, the way
    DETSEC expresses a flipped amplifier.
    """
    x1, x2 = cols.start + 1, cols.stop
    y1, y2 = rows.start + 1, rows.stop
    if flip_x:
        x1, x2 = x2, x1
    if flip_y:
        y1, y2 = y2, y1
    return f"[{x1}:{x2},{y1}:{y2}]"


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


@dataclass(frozen=True)
class _AmpModel:
    """Fixed (per-seed) structure of one amplifier, all in ADU and readout orientation."""

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

    @property
    def gain(self) -> float:
        return self.geometry.gain

    @property
    def read_noise_e(self) -> float:
        return self.geometry.read_noise

    @property
    def read_noise_adu(self) -> float:
        return self.geometry.read_noise / self.geometry.gain

    def structure_adu(self) -> np.ndarray:
        """Column structure + 2-D bias structure of the data section (readout order), float32."""
        g = self.geometry
        rows = np.arange(g.data_rows, dtype=np.float64)
        cols = np.arange(g.data_cols, dtype=np.float64)
        rise = self.rise_adu * np.exp(-rows / self.rise_scale_rows)
        corner_r = self.corner_adu * np.exp(-rows / self.corner_scale_rows)
        corner_c = np.exp(-cols / self.corner_scale_cols)
        out = (rise[:, None] + self.column_structure_adu[None, :]).astype(np.float32)
        out += np.outer(corner_r, corner_c).astype(np.float32)
        return out


class SimulatedCamera(CameraDriver):
    """A camera that synthesises raw frames from a physical model with known truth.

    Parameters
    ----------
    instrument : `Instrument`
        Instrument to simulate (geometry, nominal gains and read noise, filters).
    output_dir : `pathlib.Path`
        Where raw files ``<obs_id>_det<NNN>.fits`` (and truth files) are written.
    seed : `int`
        Fixes the per-amplifier structure and, with the exposure id and detector, the noise.
    amp_data_shape : `tuple` [`int`, `int`], optional
        ``(rows, cols)`` of each amplifier's data section; default is the real 2000 x 509.
    bias_level_adu : `float`
        Mean bias level; each amplifier gets an offset of up to ±300 ADU around it.
    state_dir : `pathlib.Path`, optional
        Where the per-(instrument, day_obs) sequence counters live; default ``output_dir/.state``.
    clock : callable, optional
        Returns the current UTC `datetime`; default ``datetime.now(UTC)``.
    dark_current_e_per_s : `float` or `dict` [`str`, `float`]
        Dark current, one value for all amplifiers or per amplifier name (missing names get
        `DEFAULT_DARK_CURRENT_E_PER_S`).
    flat_flux_e_per_s : `float`
        Uniform illumination of flat frames.
    """

    def __init__(
        self,
        instrument: Instrument,
        output_dir: Path,
        *,
        seed: int = 0,
        amp_data_shape: tuple[int, int] | None = None,
        bias_level_adu: float = 15000.0,
        state_dir: Path | None = None,
        clock: Callable[[], datetime] | None = None,
        dark_current_e_per_s: float | dict[str, float] = DEFAULT_DARK_CURRENT_E_PER_S,
        flat_flux_e_per_s: float = DEFAULT_FLAT_FLUX_E_PER_S,
    ) -> None:
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.instrument = instrument
        self.output_dir = Path(output_dir)
        self.seed = int(seed)
        self.amp_data_shape = amp_data_shape
        self.bias_level_adu = float(bias_level_adu)
        self.state_dir = Path(state_dir) if state_dir is not None else self.output_dir / ".state"
        self._clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        self._dark_current = dark_current_e_per_s
        self.flat_flux_e_per_s = float(flat_flux_e_per_s)
        self.physical_filter = instrument.default_filter
        self._closed = False
        self._detectors: dict[int, Detector] = {
            d.id: (d.with_data_shape(*amp_data_shape) if amp_data_shape else d) for d in instrument.detectors
        }
        self._models: dict[int, dict[str, _AmpModel]] = {}
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)

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
        exposure_id = day_obs * 100_000 + seq_num
        obs_id = f"{self.instrument.obs_id_prefix}_{day_obs}_{seq_num:06d}"
        header = self._exposure_header(
            request, image_type, now, day_obs, seq_num, exposure_id, obs_id, physical_filter
        )
        paths = await asyncio.gather(
            *(asyncio.to_thread(self._expose_detector, header, det_id) for det_id in det_ids)
        )
        return [
            CapturedFrame(exposure_id=exposure_id, obs_id=obs_id, detector=det_id, path=path)
            for det_id, path in zip(det_ids, paths, strict=True)
        ]

    async def close(self) -> None:
        self._closed = True

    # ------------------------------------------------------------------ truth

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
        """Injected scalar truth of a detector.

        Returns ``{"instrument", "detector", "detname", "seed", "flat_flux_e_per_s",
        "readout_overhead_s", "amplifiers": {amp: {"gain", "read_noise_e", "read_noise_adu",
        "bias_level_adu", "dark_current_e_per_s"}}}``.
        """
        det = self.detector_geometry(detector_id)
        models = self._amp_models(detector_id)
        return {
            "instrument": self.instrument.name,
            "detector": det.id,
            "detname": det.name,
            "seed": self.seed,
            "flat_flux_e_per_s": self.flat_flux_e_per_s,
            "readout_overhead_s": READOUT_OVERHEAD_S,
            "amplifiers": {
                name: {
                    "gain": m.gain,
                    "read_noise_e": m.read_noise_e,
                    "read_noise_adu": m.read_noise_adu,
                    "bias_level_adu": m.bias_level_adu,
                    "dark_current_e_per_s": m.dark_current_e_per_s,
                }
                for name, m in models.items()
            },
        }

    def bias_structure_e(self, detector_id: int) -> np.ndarray:
        """Expected combined bias (e⁻) on the assembled, trimmed detector.

        (column structure + 2-D bias structure) x gain, in detector orientation; the row
        structure and the bias level are not included (overscan subtraction removes them).
        """
        det = self.detector_geometry(detector_id)
        models = self._amp_models(detector_id)
        per_amp = {name: m.structure_adu().astype(np.float64) * m.gain for name, m in models.items()}
        return assemble(det, per_amp)

    def write_truth(self, detector_ids: Iterable[int] | None = None) -> list[Path]:
        """Write ``truth_det<NNN>.fits`` per detector and ``truth.json`` into ``output_dir``.

        Each FITS file has the scalar truth as HIERARCH keys in its primary header and an
        IMAGE extension holding `bias_structure_e`. Returns the FITS paths then the JSON path.
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
            for amp, values in truth["amplifiers"].items():
                for key, value in values.items():
                    hdr[f"HIERARCH {amp} {key.upper().replace('_', ' ')}"] = value
            image = fits.ImageHDU(self.bias_structure_e(det_id).astype(np.float32), name="BIAS_STRUCTURE_E")
            image.header["BUNIT"] = "electron"
            path = self.output_dir / f"truth_det{det_id:03d}.fits"
            fits.HDUList([primary, image]).writeto(path, overwrite=True)
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
        camcode = self.instrument.obs_id_prefix.split("_")[0]
        telescope = "Rubin Auxiliary Telescope" if camcode == "AT" else "Simonyi Survey Telescope"
        hdr = fits.Header()
        hdr["INSTRUME"] = (self.instrument.name, "instrument")
        hdr["TELESCOP"] = (telescope, "telescope")
        hdr["CAMCODE"] = (camcode, "camera code")
        hdr["CONTRLLR"] = ("O", "controller: O = OCS")
        hdr["OBSID"] = (obs_id, "observation id")
        hdr["EXPID"] = (exposure_id, "exposure id: DAYOBS * 100000 + SEQNUM")
        hdr["DAYOBS"] = (day_obs, "observing day (UTC - 12 h)")
        hdr["SEQNUM"] = (seq_num, "sequence number within DAYOBS")
        hdr["GROUPID"] = (request.group_id, "group id")
        hdr["IMGTYPE"] = (image_type, "image type")
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
        hdr["FILTER"] = (physical_filter, "physical filter")
        hdr["PROGRAM"] = (request.program or "", "scheduling program")
        hdr["REASON"] = (request.reason or "", "reason for the exposure")
        hdr["NOTE"] = (request.note or "", "observer note")
        hdr["SIMULATE"] = (True, "simulated by cpflow SimulatedCamera")
        hdr["SIMSEED"] = (self.seed, "seed of the simulation")
        return hdr

    def _dark_current_of(self, amp_name: str) -> float:
        if isinstance(self._dark_current, dict):
            return float(self._dark_current.get(amp_name, DEFAULT_DARK_CURRENT_E_PER_S))
        return float(self._dark_current)

    def _amp_models(self, detector_id: int) -> dict[str, _AmpModel]:
        """Fixed structure of every amplifier of a detector, drawn once from (seed, detector)."""
        cached = self._models.get(detector_id)
        if cached is not None:
            return cached
        det = self.detector_geometry(detector_id)
        models: dict[str, _AmpModel] = {}
        for amp in det.amplifiers:
            rng = np.random.Generator(
                np.random.PCG64(
                    np.random.SeedSequence(self.seed, spawn_key=(_STRUCTURE_STREAM, detector_id, amp.index))
                )
            )
            x = np.linspace(0.0, 1.0, amp.raw_rows)
            drift = rng.uniform(*ROW_DRIFT_RANGE_ADU) * np.sin(
                2 * np.pi * rng.uniform(0.5, 2.0) * x + rng.uniform(0, 2 * np.pi)
            )
            slope = rng.uniform(*ROW_SLOPE_RANGE_ADU) * (x - 0.5)
            models[amp.name] = _AmpModel(
                geometry=amp,
                bias_level_adu=self.bias_level_adu
                + rng.uniform(-BIAS_OFFSET_RANGE_ADU, BIAS_OFFSET_RANGE_ADU),
                dark_current_e_per_s=self._dark_current_of(amp.name),
                row_structure_adu=drift + slope,
                column_structure_adu=rng.normal(0.0, COLUMN_STRUCTURE_RMS_ADU, amp.data_cols),
                rise_adu=rng.uniform(*BIAS_RISE_RANGE_ADU),
                rise_scale_rows=rng.uniform(*BIAS_RISE_SCALE_ROWS),
                corner_adu=rng.uniform(*CORNER_RANGE_ADU),
                corner_scale_rows=rng.uniform(*CORNER_SCALE_PIXELS),
                corner_scale_cols=rng.uniform(*CORNER_SCALE_PIXELS),
            )
        self._models[detector_id] = models
        return models

    def _signal_e(
        self, model: _AmpModel, image_type: str, exptime: float, darktime: float, rng: np.random.Generator
    ) -> np.ndarray | None:
        """Electrons collected by the data section (readout order), or `None` for none.

        Seam for later effects (flat response, hot pixels, cosmic rays): they modify the
        expected electrons here before or after the Poisson draw.
        """
        if image_type == "BIAS":
            return None
        expected = model.dark_current_e_per_s * darktime
        if image_type == "FLAT":
            expected += self.flat_flux_e_per_s * exptime
        shape = (model.geometry.data_rows, model.geometry.data_cols)
        if expected <= 0:
            return None
        return rng.poisson(expected, size=shape).astype(np.float32)

    def _electrons_to_adu(self, model: _AmpModel, electrons: np.ndarray) -> np.ndarray:
        """Amplifier response: electrons → ADU (linear for now; seam for nonlinearity)."""
        return electrons / np.float32(model.gain)

    def _render_amp(
        self, model: _AmpModel, image_type: str, exptime: float, darktime: float, rng: np.random.Generator
    ) -> np.ndarray:
        """One raw amplifier array (readout order) as int32 ADU."""
        g = model.geometry
        raw = rng.standard_normal((g.raw_rows, g.raw_cols), dtype=np.float32)
        raw *= np.float32(model.read_noise_adu)
        level = model.bias_level_adu + rng.normal(0.0, EXPOSURE_LEVEL_RMS_ADU)
        rows = model.row_structure_adu + rng.normal(0.0, ROW_JITTER_RMS_ADU, g.raw_rows) + level
        raw += rows.astype(np.float32)[:, None]
        data = raw[g.data_slice]
        data += model.structure_adu()
        electrons = self._signal_e(model, image_type, exptime, darktime, rng)
        if electrons is not None:
            data += self._electrons_to_adu(model, electrons)
        np.clip(raw, 0.0, g.saturation, out=raw)
        np.rint(raw, out=raw)
        return raw.astype(np.int32)

    def _expose_detector(self, exposure_header: fits.Header, detector_id: int) -> Path:
        """Render and write one detector of one exposure (runs in a worker thread)."""
        det = self.detector_geometry(detector_id)
        models = self._amp_models(detector_id)
        image_type = str(exposure_header["IMGTYPE"])
        exptime = float(exposure_header["EXPTIME"])
        darktime = float(exposure_header["DARKTIME"])
        exposure_id = int(exposure_header["EXPID"])
        rng = np.random.Generator(
            np.random.PCG64(
                np.random.SeedSequence(self.seed, spawn_key=(_EXPOSURE_STREAM, exposure_id, det.id))
            )
        )
        header = exposure_header.copy()
        header["DETECTOR"] = (det.id, "detector id")
        header["DETNAME"] = (det.name, "detector name")
        header["DETSER"] = (det.serial, "detector serial number")
        header["RAFTBAY"] = (det.raft, "raft bay")
        header["CCDSLOT"] = (det.name_in_raft, "CCD slot in raft")
        amplifiers: dict[str, np.ndarray] = {}
        amp_headers: dict[str, fits.Header] = {}
        for amp in det.amplifiers:
            amplifiers[amp.name] = self._render_amp(models[amp.name], image_type, exptime, darktime, rng)
            ahdr = fits.Header()
            ahdr["EXTNAME"] = amp.name
            ahdr["DATASEC"] = (fits_section(*amp.data_slice), "data section")
            ahdr["BIASSEC"] = (fits_section(*amp.serial_overscan_slice), "serial overscan")
            ahdr["DETSEC"] = (
                fits_section(*amp.detector_slice, flip_x=amp.flip_x, flip_y=amp.flip_y),
                "data section in the assembled detector",
            )
            amp_headers[amp.name] = ahdr
        image = RawDetectorImage(header=header, amplifiers=amplifiers, amp_headers=amp_headers)
        path = self.output_dir / f"{header['OBSID']}_det{det.id:03d}.fits"
        tmp = path.with_name(path.name + ".part")
        image.to_hdulist().writeto(tmp, overwrite=True)
        os.replace(tmp, path)
        return path
