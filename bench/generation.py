"""Benchmark of a LATISS BIAS_DARK_FLAT generation without Kafka: simulate, ingest, build.

The frames come from `services.acquirer.simulated_camera.SimulatedCamera` (full-size LATISS
detector unless ``--amp-shape`` is given), are ingested one exposure at a time into a throwaway
SQLite butler repository with `shared.butler.exposures.ingest_raws` (``transfer="move"``, as
the acquirer does), and the combined bias, dark and flat are built by the generator's builders
(`services.generator.generation.BUILDERS`) with the prerequisite sources the readiness check
would give them (this run's bias for the dark; bias and dark for the flat). As in the acquirer,
the first exposure of each type is taken and discarded (``n_discard = 1``), so the defaults
(21 biases, 23 darks, 21 flats taken) combine 20, 22 and 20 frames.

Per stage wall times are printed, then where the time goes inside each build: inclusive wall
time of the functions the builders call (timing wrappers installed on the module attributes the
builders look up, and on the FITS formatters' read/write methods). Nested rows are indented and
are part of the row above them. ``--profile`` adds a cProfile table of the build stages.

Usage::

    .venv/bin/python bench/generation.py [--n-bias 21] [--n-dark 23] [--n-flat 21]
        [--amp-shape ROWS COLS] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import io
import os
import pstats
import resource
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import services.generator.combine as combine_module
import services.generator.generation as generation
import shared.butler.calibrations as calibrations
from services.acquirer.camera import ExposureRequest
from services.acquirer.simulated_camera import SimulatedCamera
from services.generator.generation import BUILDERS, BuildRequest
from shared.butler.collections import raw_collection, type_collection
from shared.butler.exposures import ingest_raws
from shared.butler.formatters import CalibImageFitsFormatter, RawFitsFormatter
from shared.butler.repo import create_repository, open_butler
from shared.clipkernel import warm_up
from shared.clipnetworks import network_address
from shared.instruments import get_instrument
from shared.records import CalibSource
from shared.runconfig import RunConfiguration, validate_run_configuration

INSTRUMENT = "LATISS"
RUN_ID = "bench-generation"
DEFAULT_DARK_TIMES = [5.0] * 5 + [15.0] * 2 + [30.0] * 16
"""The run configuration's default dark exposure times (23 frames)."""

CLIPPED_STATS = "clipped_stats (flat means; in CR masking for darks)"
MASK_CR = "_mask_cosmic_rays (darks)"

# (label, depth, owner, attribute): the wrapped callables, in the order they are reported.
# ``owner`` is the module whose global the builders look up, or the class of a method.
WRAPPED: list[tuple[str, int, Any, str]] = [
    ("load_raw (butler.get raw)", 0, generation, "load_raw"),
    ("RawFitsFormatter read (astropy.io.fits)", 1, RawFitsFormatter, "read_from_local_file"),
    ("CalibrationCache.get (bias/dark look-up)", 0, calibrations.CalibrationCache, "get"),
    ("CalibImageFitsFormatter read", 1, CalibImageFitsFormatter, "read_from_local_file"),
    ("run_isr (shared.isr)", 0, generation, "run_isr"),
    (MASK_CR, 0, generation, "_mask_cosmic_rays"),
    (CLIPPED_STATS, 0, generation, "clipped_stats"),
    ("flat_scales", 0, generation, "flat_scales"),
    ("combine_clipped_mean", 0, generation, "combine_clipped_mean"),
    ("clip_stack (numba kernel)", 1, combine_module, "clip_stack"),
    ("qa_percentiles", 0, generation, "qa_percentiles"),
    ("butler.put (calibration)", 0, None, "put"),
    ("CalibImageFitsFormatter write (astropy.io.fits)", 1, CalibImageFitsFormatter, "write_local_file"),
]


@dataclass
class Timers:
    """Inclusive wall time and call count per wrapped function."""

    seconds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def wrap(self, label: str, func: Callable[..., Any]) -> Callable[..., Any]:
        """``func`` with its wall time added to ``label`` on every call."""

        @functools.wraps(func)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - start
                self.calls[label] = self.calls.get(label, 0) + 1

        return timed

    def reset(self) -> None:
        """Forget everything measured so far."""
        self.seconds.clear()
        self.calls.clear()


@contextmanager
def instrumented(timers: Timers, butler: Any) -> Iterator[None]:
    """Install the timing wrappers of `WRAPPED` (``put`` on ``butler``); remove them on exit."""
    saved: list[tuple[Any, str, Any]] = []
    try:
        for label, _depth, owner, name in WRAPPED:
            target = butler if owner is None else owner
            original = getattr(target, name)
            saved.append((target, name, target.__dict__.get(name, None) if owner is None else original))
            setattr(target, name, timers.wrap(label, original))
        yield
    finally:
        for target, name, original in reversed(saved):
            if target is butler and original is None:
                del target.__dict__[name]
            else:
                setattr(target, name, original)


def dark_times(n: int) -> list[float]:
    """``n`` dark exposure times: the configuration default, cut or extended with 30 s."""
    return (DEFAULT_DARK_TIMES + [30.0] * max(0, n - len(DEFAULT_DARK_TIMES)))[:n]


def run_configuration(n_bias: int, n_dark: int, n_flat: int) -> RunConfiguration:
    """A BIAS_DARK_FLAT configuration taking ``n_*`` frames of each type, the first discarded."""
    return validate_run_configuration(
        {
            "instrument": INSTRUMENT,
            "script_mode": "BIAS_DARK_FLAT",
            "n_bias": n_bias - 1,
            "n_discard_bias": 1,
            "n_dark": n_dark - 1,
            "n_discard_dark": 1,
            "exp_times_dark": dark_times(n_dark),
            "n_flat": n_flat - 1,
            "n_discard_flat": 1,
        }
    )


def max_rss_gb() -> float:
    """Peak resident set size of this process so far (GB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def run(args: argparse.Namespace) -> None:
    """Simulate, ingest and build; print the stage table and the breakdown."""
    if min(args.n_bias, args.n_dark, args.n_flat) < 2:
        raise SystemExit("each of --n-bias, --n-dark, --n-flat must be at least 2 (one is discarded)")
    amp_shape = tuple(args.amp_shape) if args.amp_shape else None
    config = run_configuration(args.n_bias, args.n_dark, args.n_flat)
    instrument = get_instrument(INSTRUMENT)
    detectors = config.detector_ids
    t0 = time.perf_counter()
    warm_up()
    for n in (args.n_bias - 1, args.n_dark - 1, args.n_flat - 1):  # the depths combined
        network_address(n, wait=True)
    print(f"numba warm-up (compile or cache load, not counted below): {time.perf_counter() - t0:.1f} s")

    stages: dict[str, float] = {}
    timers = Timers()
    profile = cProfile.Profile() if args.profile else None
    workdir = Path(tempfile.mkdtemp(prefix="cpflow-bench-generation-"))
    try:
        repo = create_repository(workdir / "repo")
        camera_dir = workdir / "camera"
        camera = SimulatedCamera(
            instrument,
            camera_dir / RUN_ID,
            seed=args.seed,
            amp_data_shape=amp_shape,  # type: ignore[arg-type]
            state_dir=camera_dir / ".state",
        )
        asyncio.run(camera.setup_instrument(config.physical_filter))
        geometry = camera.detector_geometry(detectors[0])
        print(
            f"{INSTRUMENT} detector {detectors[0]}: {geometry.shape[0]}x{geometry.shape[1]} pixels,"
            f" {len(geometry.amplifiers)} amplifiers; frames taken: {args.n_bias} bias,"
            f" {args.n_dark} dark, {args.n_flat} flat (first of each discarded)"
        )
        butler = open_butler(repo, writeable=True)
        exposures: dict[str, list[int]] = {}
        simulate = ingest = 0.0
        raw_bytes = 0
        for image_type in ("BIAS", "DARK", "FLAT"):
            taken: list[int] = []
            for exposure_time in config.exposure_times(image_type):
                exposure = ExposureRequest(
                    image_type=image_type, exposure_time=exposure_time, group_id=f"{RUN_ID}_{image_type}"
                )
                start = time.perf_counter()
                frames = asyncio.run(camera.take_image(exposure, detectors))
                simulate += time.perf_counter() - start
                raw_bytes += sum(f.path.stat().st_size for f in frames)
                start = time.perf_counter()
                ingest_raws(
                    butler,
                    [f.path for f in frames],
                    instrument,
                    run=raw_collection(INSTRUMENT),
                    transfer="move",
                )
                ingest += time.perf_counter() - start
                taken.append(frames[0].exposure_id)
            exposures[image_type] = taken[config.n_discard(image_type) :]
        stages["simulate"] = simulate
        stages["ingest"] = ingest
        n_raws = sum(len(config.exposure_times(t)) for t in ("BIAS", "DARK", "FLAT"))
        print(f"raw files: {n_raws}, {raw_bytes / 1e9:.2f} GB on disk")

        breakdown: dict[str, tuple[dict[str, float], dict[str, int]]] = {}
        for calib_type, image_type, prerequisites in (
            ("bias", "BIAS", ()),
            ("dark", "DARK", ("bias",)),
            ("flat", "FLAT", ("bias", "dark")),
        ):
            request = BuildRequest(
                instrument=instrument,
                config=config,
                run_id=RUN_ID,
                exposures=tuple(exposures[image_type]),
                detectors=tuple(detectors),
                physical_filter=config.physical_filter,
                sources={
                    p: CalibSource(
                        calib_type=p, kind="run", collections=(type_collection(INSTRUMENT, RUN_ID, p),)
                    )
                    for p in prerequisites
                },
            )
            timers.reset()
            with instrumented(timers, butler):
                start = time.perf_counter()
                if profile is not None:
                    profile.enable()
                built = BUILDERS[calib_type](butler, request)
                if profile is not None:
                    profile.disable()
                stages[calib_type] = time.perf_counter() - start
            assert set(built.dataset_ids) == set(detectors), built
            breakdown[calib_type] = (dict(timers.seconds), dict(timers.calls))
            print(f"{calib_type}: built from {len(request.exposures)} frames in {stages[calib_type]:.2f} s")
        butler.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_tables(stages, breakdown)
    print(f"peak RSS of the process: {max_rss_gb():.2f} GB; temporary directory {workdir} removed")
    if profile is not None:
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(args.profile_lines)
        print("\n== cProfile of the bias, dark and flat builds (by own time) ==")
        print(out.getvalue())


def print_tables(
    stages: dict[str, float], breakdown: dict[str, tuple[dict[str, float], dict[str, int]]]
) -> None:
    """Stage table, then the inclusive time of each wrapped function per build."""
    print("\n== stages (wall seconds) ==")
    for name, seconds in stages.items():
        print(f"{name:10s} {seconds:9.2f}")
    print(f"{'total':10s} {sum(stages.values()):9.2f}")
    builds = list(breakdown)
    print(
        "\n== inside the builds: inclusive wall seconds (calls); indented rows are part of the row above =="
    )
    print(f"{'function':52s}" + "".join(f"{b:>16s}" for b in builds))
    for label, depth, _owner, _name in WRAPPED:
        if not any(label in breakdown[b][0] for b in builds):
            continue
        cells = []
        for b in builds:
            spent, calls = breakdown[b]
            cells.append(f"{spent[label]:9.2f} ({calls[label]:3d})" if label in spent else f"{'-':>16s}")
        print(f"{'  ' * depth + label:52s}" + "".join(f"{c:>16s}" for c in cells))
    top = [label for label, depth, _o, _n in WRAPPED if depth == 0]
    cells = []
    for b in builds:
        spent = breakdown[b][0]
        rest = stages[b] - sum(spent.get(label, 0.0) for label in top)
        if MASK_CR in spent:  # clipped_stats then runs inside the cosmic-ray masking
            rest += spent.get(CLIPPED_STATS, 0.0)
        cells.append(f"{rest:9.2f}      ")
    print(f"{'other (registry queries, glue)':52s}" + "".join(f"{c:>16s}" for c in cells))
    print_per_frame(breakdown)


READ = "RawFitsFormatter read (astropy.io.fits)"
ISR = "run_isr (shared.isr)"
PER_FRAME = [("read+decompress", READ), ("butler.get raw", "load_raw (butler.get raw)"), ("ISR", ISR)]


def print_per_frame(breakdown: dict[str, tuple[dict[str, float], dict[str, int]]]) -> None:
    """Seconds per raw frame of reading (the floor), ISR and cosmic-ray masking; ratio ISR / read."""
    print("\n== per raw frame (wall seconds per call) ==")
    print(
        f"{'build':8s}{'frames':>8s}"
        + "".join(f"{h:>18s}" for h, _ in PER_FRAME)
        + f"{'CR mask':>10s}{'ISR/read':>10s}"
    )
    for build, (spent, calls) in breakdown.items():
        per = {h: spent[label] / calls[label] for h, label in PER_FRAME if calls.get(label)}
        cr = spent[MASK_CR] / calls[MASK_CR] if calls.get(MASK_CR) else None
        ratio = per["ISR"] / per["read+decompress"] if {"ISR", "read+decompress"} <= per.keys() else None
        print(
            f"{build:8s}{calls.get(READ, 0):8d}"
            + "".join(f"{per[h]:18.3f}" if h in per else f"{'-':>18s}" for h, _ in PER_FRAME)
            + (f"{cr:10.3f}" if cr is not None else f"{'-':>10s}")
            + (f"{ratio:10.2f}" if ratio is not None else f"{'-':>10s}")
        )
    print("goal of issue 10: ISR / read <= 2 (read = decompressing one raw, the floor)")


def main(argv: list[str] | None = None) -> None:
    """Parse the options and run the benchmark."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-bias", type=int, default=21, help="bias frames taken (first discarded)")
    parser.add_argument("--n-dark", type=int, default=23, help="dark frames taken (first discarded)")
    parser.add_argument("--n-flat", type=int, default=21, help="flat frames taken (first discarded)")
    parser.add_argument(
        "--amp-shape",
        type=int,
        nargs=2,
        metavar=("ROWS", "COLS"),
        help="amplifier data shape (default: full)",
    )
    parser.add_argument("--seed", type=int, default=1, help="simulator seed")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile table of the builds")
    parser.add_argument("--profile-lines", type=int, default=25, help="rows of the cProfile table")
    args = parser.parse_args(argv)
    # Every calibration put warns that CALIBDATE becomes a HIERARCH card; keep the output readable.
    warnings.filterwarnings("ignore", message="Keyword name 'CALIBDATE'")
    print(f"cpus {os.cpu_count()}")
    run(args)


if __name__ == "__main__":
    main()
