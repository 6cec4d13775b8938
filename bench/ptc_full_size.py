"""PTC truth recovery on full-size real-format frames, in DM's pixel frame (a figure, not a test).

The simulated camera writes full-size raws in the cameras' own format (RICE-compressed segments);
they are read back with `shared.rawformat.read_raw`, assembled into DM's frame by `shared.isr.run_isr`
(in ADU, minus a combined bias), measured in pairs and fitted with `services.generator.ptc.solve_ptc`,
as the generator's PTC builder does. The flat sequence is a realistic one: the shortest pair at
0.5 s, then up past every amplifier's turnoff. Per amplifier the gain and read-noise errors against the
camera's truth are printed, with the read-noise error the PTC itself reports and whether the
difference lies within two of those errors.

Usage::

    .venv/bin/python bench/ptc_full_size.py [--instrument LATISS] [--detector 0] [--n-bias 10] [--seed 5]
    # an e2v sensor: --instrument LSSTCam --detector 94 (R22_S11); an ITL one: --detector 0 (R01_S00)
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from services.acquirer.camera import ExposureRequest
from services.acquirer.simulated_camera import SimulatedCamera
from services.generator.combine import combine_clipped_mean
from services.generator.generation import _bias_in_adu
from services.generator.ptc import extract_pair, pair_exposures, solve_ptc
from shared.images import MaskPlane
from shared.instruments import get_instrument
from shared.isr import IsrConfig, run_isr
from shared.rawformat import read_raw
from shared.runconfig.simulator import DEFAULT_FLAT_FLUX_E_PER_S

FLAT_TIMES_S = (0.5, 1, 2, 4, 7.5, 10, 15, 20, 25, 30, 35, 40, 43, 45, 47.5, 50, 52.5, 55, 57.5, 62.5)
"""One pair per exposure time: 1 000 e⁻ to 125 000 e⁻ at the simulator's 2 000 e⁻/s."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instrument", default="LATISS")
    parser.add_argument("--detector", type=int, default=0)
    parser.add_argument("--n-bias", type=int, default=10)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="cpflow-bench-ptc-"))
    try:
        cam = SimulatedCamera(
            get_instrument(args.instrument), workdir / "raw", seed=args.seed, state_dir=workdir / "state"
        )
        det = cam.detector_geometry(args.detector)
        print(
            f"{args.instrument} detector {args.detector} ({det.name}): {det.shape[0]}x{det.shape[1]} pixels, "
            f"{len(det.amplifiers)} amplifiers; {args.n_bias} biases, {len(FLAT_TIMES_S)} flat pairs "
            f"{FLAT_TIMES_S[0]}–{FLAT_TIMES_S[-1]} s at {DEFAULT_FLAT_FLUX_E_PER_S:.0f} e-/s"
        )
        start = time.perf_counter()

        def take(image_type: str, exptime: float):
            frame = asyncio.run(cam.take_image(ExposureRequest(image_type, exptime, "ptc"), [args.detector]))[
                0
            ]
            raw = read_raw(frame.path)
            frame.path.unlink()
            return raw

        biases = [run_isr(take("BIAS", 0.0), det).image for _ in range(args.n_bias)]
        bias = combine_clipped_mean(biases, reject_mask=int(MaskPlane.DETECTED | MaskPlane.INTRP)).image
        del biases
        bias_adu = _bias_in_adu(bias, det)
        adu = IsrConfig(apply_gains=False)
        amp_boxes = {a.name: a.detector_slice for a in det.amplifiers}
        times: list[tuple[int, float]] = []
        pending = {}
        measurements: dict[str, list] = {}
        for exptime in FLAT_TIMES_S:
            for _ in range(2):
                raw = take("FLAT", float(exptime))
                assert raw.exposure_id is not None
                pending[raw.exposure_id] = run_isr(raw, det, config=adu, bias=bias_adu).image
                times.append((raw.exposure_id, raw.exposure_time))
            for first, second in pair_exposures(times[-2:]):
                for amp, measurement in extract_pair(
                    pending.pop(first), pending.pop(second), amp_boxes
                ).items():
                    measurements.setdefault(amp, []).append(measurement)
        print(f"frames simulated, read and ISR'd in {time.perf_counter() - start:.0f} s")
        truth = cam.truth(args.detector)["amplifiers"]
        for fit_type in ("EXPAPPROXIMATION", "FULLCOVARIANCE"):
            result = solve_ptc(measurements, fit_type=fit_type)
            print(f"\n== {fit_type} ==")
            print(
                f"{'amp':5s}{'gain':>8s}{'err %':>8s}{'noise e':>9s}{'true e':>8s}{'err %':>8s}"
                f"{'PTC σ e':>9s}{'|Δ|/σ':>7s}{'turnoff/true':>13s}"
            )
            gain_errors, noise_errors, covered = [], [], 0
            for name, amp in result.items():
                t = truth[name]
                gain_error = amp.gain / t["gain"] - 1
                noise_error = amp.noise / t["read_noise_e"] - 1
                pulls = abs(amp.noise - t["read_noise_e"]) / amp.noise_err if amp.noise_err > 0 else np.inf
                covered += pulls <= 2
                gain_errors.append(abs(gain_error))
                noise_errors.append(abs(noise_error))
                print(
                    f"{name:5s}{amp.gain:8.4f}{100 * gain_error:8.2f}{amp.noise:9.3f}{t['read_noise_e']:8.3f}"
                    f"{100 * noise_error:8.2f}{amp.noise_err:9.3f}{pulls:7.2f}"
                    f"{amp.turnoff / t['turnoff_adu']:13.3f}"
                )
            print(
                f"worst |gain error| {100 * max(gain_errors):.2f} %, worst |read-noise error| "
                f"{100 * max(noise_errors):.2f} %; read-noise difference within 2 reported σ on "
                f"{covered}/{len(result)} amplifiers"
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
