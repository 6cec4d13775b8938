"""How much noise each ISR step adds to a verification residual, on frames with a known truth.

Run from the repository root: ``PYTHONPATH=. .venv/bin/python bench/isr_noise.py [--n-ref 20]``.

A `SimulatedCamera` (LSSTComCam, detectors 1 and 4, small amplifiers, fixed seed) takes
``n_ref`` biases and darks for the references (combined as the generator does) and ``n_test``
new biases and darks (the frames an external verification checks). Per amplifier, the true
pixel read noise in ISR electrons is ``σ = read_noise_e × g0 / g`` (nominal over actual gain).
The figures are 5σ-clipped standard deviations (the NOISE statistic) relative to σ, medians
over the 32 amplifiers and the test frames:

- ``serial``: the test bias after the serial overscan only, minus the true fixed bias structure;
- ``+ parallel``: the same after the parallel overscan too;
- ``+ bias``: the bias residual (test bias minus the combined bias), the NOISE of a bias
  verification;
- ``dark frame``: a test dark after overscans and bias, minus the true dark charge;
- ``+ dark``: the dark residual (bias and dark subtracted), the NOISE of a dark verification.

The "ideal" column is what a perfect overscan would give: 1, 1, sqrt(1 + 1/N) for the bias
residual, the dark's own shot noise, and the same times sqrt(1 + 1/N) for the dark residual.
``--legacy`` runs the ISR as it was before issue 13 (median per row, median per column).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from services.acquirer.camera import ExposureRequest
from services.acquirer.simulated_camera import SimulatedCamera
from services.generator.combine import combine_clipped_mean
from services.generator.generation import _mask_cosmic_rays, unflag_persistent_cosmic_rays
from shared.images import CalibImage, MaskPlane, RawDetectorImage
from shared.instruments import get_instrument
from shared.isr import IsrConfig, run_isr
from shared.rawformat import read_raw
from shared.stats import clipped_stdev

NOW = datetime(2026, 11, 28, 3, 15, 0, tzinfo=UTC)
DETECTORS = (1, 4)
DARK_EXPTIME = 30.0
BIAS_REJECT = int(MaskPlane.DETECTED | MaskPlane.INTRP)
DARK_REJECT = int(MaskPlane.SAT | MaskPlane.DETECTED | MaskPlane.INTRP | MaskPlane.CR)
STEPS = ("serial", "+ parallel", "+ bias", "dark frame", "+ dark")


@dataclass
class Figures:
    ratio: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STEPS})
    ideal: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STEPS})


def _take(cam: SimulatedCamera, image_type: str, exptime: float) -> list[RawDetectorImage]:
    request = ExposureRequest(image_type, exptime, cam.physical_filter)
    frames = asyncio.run(cam.take_image(request, list(DETECTORS)))
    out = []
    for frame in frames:
        out.append(read_raw(frame.path, cam.instrument))
    return out


def _noise(image: np.ndarray, mask: np.ndarray | None, box: tuple[slice, slice]) -> float:
    values = image[box].astype(np.float64)
    usable = np.isfinite(values)
    if mask is not None:
        usable &= (mask[box] & int(MaskPlane.BAD | MaskPlane.NO_DATA | MaskPlane.DETECTED)) == 0
    return clipped_stdev(values[usable], n_sigma=5.0, n_iter=3)


def measure(
    *, seed: int, n_ref: int, n_test: int, shape: tuple[int, int], config: IsrConfig, out: Path
) -> Figures:
    cam = SimulatedCamera(
        get_instrument("LSSTComCam"),
        out / "raw",
        seed=seed,
        amp_data_shape=shape,
        state_dir=out / "state",
        clock=lambda: NOW,
    )
    serial_only = IsrConfig(**{**config.__dict__, "do_parallel_overscan": False})
    figures = Figures()
    biases: dict[int, list[CalibImage]] = {d: [] for d in DETECTORS}
    for _ in range(n_ref):
        for det_id, raw in zip(DETECTORS, _take(cam, "BIAS", 0.0), strict=True):
            biases[det_id].append(run_isr(raw, cam.detector_geometry(det_id), config=config).image)
    bias = {d: combine_clipped_mean(biases[d], reject_mask=BIAS_REJECT).image for d in DETECTORS}
    del biases
    darks: dict[int, list[CalibImage]] = {d: [] for d in DETECTORS}
    times: list[float] = []
    for _ in range(n_ref):
        raws = _take(cam, "DARK", DARK_EXPTIME)
        times.append(raws[0].dark_time)
        for det_id, raw in zip(DETECTORS, raws, strict=True):
            det = cam.detector_geometry(det_id)
            image = run_isr(raw, det, config=config, bias=bias[det_id]).image
            _mask_cosmic_rays(image, {a.name: a.detector_slice for a in det.amplifiers})
            darks[det_id].append(image)
    dark = {}
    for det_id in DETECTORS:
        unflag_persistent_cosmic_rays(darks[det_id])
        dark[det_id] = combine_clipped_mean(darks[det_id], scales=times, reject_mask=DARK_REJECT).image
        dark[det_id].header["DARKTIME"] = 1.0
    del darks

    for _ in range(n_test):
        bias_raws = _take(cam, "BIAS", 0.0)
        dark_raws = _take(cam, "DARK", DARK_EXPTIME)
        for i, det_id in enumerate(DETECTORS):
            det = cam.detector_geometry(det_id)
            truth = cam.truth(det_id)["amplifiers"]
            structure = cam.bias_structure_e(det_id)
            dark_charge = cam.dark_current_map_e_per_s(det_id) * dark_raws[i].dark_time
            images = {
                "serial": (run_isr(bias_raws[i], det, config=serial_only).image, structure),
                "+ parallel": (run_isr(bias_raws[i], det, config=config).image, structure),
                "+ bias": (run_isr(bias_raws[i], det, config=config, bias=bias[det_id]).image, None),
                "dark frame": (
                    run_isr(dark_raws[i], det, config=config, bias=bias[det_id]).image,
                    dark_charge,
                ),
                "+ dark": (
                    run_isr(dark_raws[i], det, config=config, bias=bias[det_id], dark=dark[det_id]).image,
                    None,
                ),
            }
            for amp in det.amplifiers:
                box = amp.detector_slice
                t = truth[amp.name]
                sigma = t["read_noise_e"] * amp.gain / t["gain"]
                # Shot noise of the dark charge, in ISR electrons² (x g0/g).
                shot = float(np.median(dark_charge[box])) * amp.gain / t["gain"]
                ideal = {
                    "serial": 1.0,
                    "+ parallel": 1.0,
                    "+ bias": math.sqrt(1 + 1 / n_ref),
                    "dark frame": math.sqrt(1 + shot / sigma**2),
                    "+ dark": math.sqrt((1 + shot / sigma**2) * (1 + 1 / n_ref)),
                }
                for step, (image, truth_image) in images.items():
                    data = image.image.astype(np.float64)
                    if truth_image is not None:
                        data = data - truth_image
                    mask = None if step in ("serial", "+ parallel") else image.mask
                    figures.ratio[step].append(_noise(data, mask, box) / sigma)
                    figures.ideal[step].append(ideal[step])
    return figures


BASE = {
    "serial": None,
    "+ parallel": "serial",
    "+ bias": "+ parallel",
    "dark frame": None,
    "+ dark": "dark frame",
}
"""What each step is compared with: the previous step, or the ideal (None)."""


def report(figures: Figures, label: str) -> str:
    lines = [
        label,
        "| step | NOISE / σ, median | range | ideal | excess over ideal | added by the step (quadrature) |",
        "|---|---|---|---|---|---|",
    ]
    for step in STEPS:
        ratio = np.asarray(figures.ratio[step])
        ideal = np.asarray(figures.ideal[step])
        base_step = BASE[step]
        base = ideal if base_step is None else np.asarray(figures.ratio[base_step])
        diff = ratio**2 - base**2
        added = float(np.median(np.sign(diff) * np.sqrt(np.abs(diff))))
        excess = float(np.median(ratio / ideal - 1))
        lines.append(
            f"| {step} | {float(np.median(ratio)):.4f} | {float(ratio.min()):.4f} … {float(ratio.max()):.4f} "
            f"| {float(np.median(ideal)):.4f} | {100 * excess:+.2f} % | {100 * added:.1f} % of σ |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-ref", type=int, default=20)
    parser.add_argument("--n-test", type=int, default=3)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--shape", type=int, nargs=2, default=(400, 200))
    parser.add_argument("--legacy", action="store_true", help="the ISR before issue 13 (medians)")
    args = parser.parse_args()
    config = IsrConfig()
    if args.legacy:
        config = legacy_config()
    with tempfile.TemporaryDirectory(prefix="isr_noise") as tmp:
        figures = measure(
            seed=args.seed,
            n_ref=args.n_ref,
            n_test=args.n_test,
            shape=tuple(args.shape),
            config=config,
            out=Path(tmp),
        )
    label = "legacy ISR (medians)" if args.legacy else "current ISR"
    print(report(figures, f"{label}: N = {args.n_ref}, {args.n_test} test frames, amplifiers {args.shape}"))


def legacy_config() -> IsrConfig:
    """The ISR before issue 13: per-row and per-column medians (IsrTaskLSST's MEDIAN_PER_ROW)."""
    return IsrConfig(serial_fit="MEDIAN_PER_ROW", parallel_fit="MEDIAN_PER_ROW")


if __name__ == "__main__":
    main()
