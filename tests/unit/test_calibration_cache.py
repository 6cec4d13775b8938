"""Certified prerequisites are found per exposure but read once per dataset (`CalibrationCache`).

A real SQLite butler repository: six darks from the simulated LATISS camera, 10 minutes apart,
are ingested; two biases (constant 50 e⁻ and 250 e⁻) are certified with adjacent validity ranges
that split the darks three and three. Every image read goes through ``butler.get``, which the
tests wrap to count the reads of bias datasets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.time import Time
from lsst.daf.butler import Butler, DatasetRef

from services.acquirer.camera import ExposureRequest
from services.acquirer.simulated_camera import SimulatedCamera
from services.generator import generation
from services.generator.generation import BuildRequest, _isr_inputs
from services.verifier.verification import VerificationRequest, verify_calibration
from shared.butler import (
    BIAS,
    certify_calibrations,
    create_repository,
    ensure_calibration_collection,
    ingest_raws,
    open_butler,
    raw_collection,
)
from shared.butler.calibrations import CalibrationCache, load_calibration
from shared.images import CalibImage
from shared.instruments import get_instrument
from shared.records import CalibSource
from shared.runconfig import validate_run_configuration

INSTRUMENT = "LATISS"
FILTER = "empty~empty"
CALIB_COLLECTION = "LATISS/calib/cachetest"
EARLY_ONLY = "LATISS/calib/cachetest-early"
BIAS_VALUES = (50.0, 250.0)
N_EXPOSURES = 6


@dataclass(frozen=True)
class Repo:
    root: Path
    exposures: tuple[int, ...]
    """The darks in time order; the first half is in the first bias's validity range."""
    bias_ids: tuple[Any, Any]


def _constant_bias(value: float, shape: tuple[int, int]) -> CalibImage:
    return CalibImage(
        image=np.full(shape, value, dtype=np.float32),
        mask=np.zeros(shape, dtype=np.int32),
        variance=np.ones(shape, dtype=np.float32),
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    out: Path = tmp_path_factory.mktemp("calibration_cache")
    root = create_repository(out / "repo")
    instrument = get_instrument(INSTRUMENT)
    start = datetime(2026, 3, 15, 18, 0, tzinfo=UTC)
    calls = iter(range(1000))
    camera = SimulatedCamera(
        instrument,
        out / "raw",
        seed=5,
        amp_data_shape=(40, 24),
        state_dir=out / "state",
        clock=lambda: start + timedelta(minutes=10 * next(calls)),
    )
    asyncio.run(camera.setup_instrument(FILTER))
    shape = camera.detector_geometry(0).shape
    with open_butler(root) as butler:
        for _ in range(N_EXPOSURES):
            frames = asyncio.run(camera.take_image(ExposureRequest("DARK", 2.0, "cachetest"), [0]))
            ingest_raws(butler, [f.path for f in frames], instrument, run=raw_collection(INSTRUMENT))
        records = sorted(
            butler.query_dimension_records("exposure", instrument=INSTRUMENT),
            key=lambda r: r.timespan.begin,
        )
        assert len(records) == N_EXPOSURES
        half = N_EXPOSURES // 2
        # Midway between the last exposure of the first half and the first of the second.
        boundary = Time(
            (records[half - 1].timespan.end.tai.mjd + records[half].timespan.begin.tai.mjd) / 2,
            format="mjd",
            scale="tai",
        )
        refs = []
        for i, value in enumerate(BIAS_VALUES):
            run = f"LATISS/runs/cachetest{i}/bias"
            butler.collections.register(run)
            refs.append(
                butler.put(_constant_bias(value, shape), BIAS, instrument=INSTRUMENT, detector=0, run=run)
            )
        for collection in (CALIB_COLLECTION, EARLY_ONLY):
            ensure_calibration_collection(butler, INSTRUMENT, collection)
        assert certify_calibrations(butler, [refs[0]], CALIB_COLLECTION, None, boundary) == "certified"
        assert certify_calibrations(butler, [refs[1]], CALIB_COLLECTION, boundary, None) == "certified"
        assert certify_calibrations(butler, [refs[0]], EARLY_ONLY, None, boundary) == "certified"
    return Repo(root, tuple(int(r.id) for r in records), (refs[0].id, refs[1].id))


@pytest.fixture
def butler(repo: Repo) -> Iterator[Butler]:
    with open_butler(repo.root) as butler:
        yield butler


def _count_bias_reads(monkeypatch: pytest.MonkeyPatch, butler: Butler) -> list[Any]:
    """Wrap ``butler.get``; the returned list collects the ids of the bias datasets read."""
    reads: list[Any] = []
    get: Callable[..., Any] = butler.get

    def counting_get(*args: Any, **kwargs: Any) -> Any:
        result = get(*args, **kwargs)
        target = args[0] if args else None
        if isinstance(target, DatasetRef) and target.datasetType.name == BIAS:
            reads.append(target.id)
        elif target == BIAS:
            reads.append(None)  # a read by name and data ID: counted too
        return result

    monkeypatch.setattr(butler, "get", counting_get)
    return reads


def _expected(repo: Repo) -> list[float]:
    half = N_EXPOSURES // 2
    return [BIAS_VALUES[0]] * half + [BIAS_VALUES[1]] * (N_EXPOSURES - half)


CERTIFIED = CalibSource(calib_type="bias", kind="certified", collections=(CALIB_COLLECTION,))


def test_cache_finds_the_bias_valid_at_each_exposure_and_reads_each_once(
    repo: Repo, butler: Butler, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = _count_bias_reads(monkeypatch, butler)
    cache = CalibrationCache(butler)
    found = [cache.get(CERTIFIED, INSTRUMENT, 0, exposure) for exposure in repo.exposures]
    assert [float(np.unique(bias.image).item()) for bias in found] == _expected(repo)
    assert sorted(reads, key=str) == sorted(repo.bias_ids, key=str)
    assert cache.n_reads == 2
    half = N_EXPOSURES // 2
    assert all(bias is found[0] for bias in found[:half])
    assert all(bias is found[half] for bias in found[half:])
    # Asking again (another calibration type's pass, say) reads nothing more.
    cache.get(CERTIFIED, INSTRUMENT, 0, repo.exposures[0])
    assert len(reads) == 2


def test_load_calibration_matches_the_cache(repo: Repo, butler: Butler) -> None:
    """The one-off `load_calibration` resolves the same validity ranges."""
    values = [
        float(np.unique(load_calibration(butler, CERTIFIED, INSTRUMENT, 0, exposure).image).item())
        for exposure in repo.exposures
    ]
    assert values == _expected(repo)


def test_isr_inputs_apply_the_right_bias_and_read_each_once(
    repo: Repo, butler: Butler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The builders' ISR loop: one read per distinct certified bias, not one per exposure."""
    reads = _count_bias_reads(monkeypatch, butler)
    applied: list[float] = []
    run_isr = generation.run_isr

    def recording_isr(*args: Any, **kwargs: Any) -> Any:
        bias = kwargs["bias"]
        applied.append(float(np.unique(bias.image).item()))
        return run_isr(*args, **kwargs)

    monkeypatch.setattr(generation, "run_isr", recording_isr)
    config = validate_run_configuration({"instrument": INSTRUMENT, "script_mode": "BIAS"})
    request = BuildRequest(
        instrument=get_instrument(INSTRUMENT),
        config=config,
        run_id="cachetest",
        exposures=repo.exposures,
        detectors=(0,),
        physical_filter=FILTER,
        sources={"bias": CERTIFIED},
    )
    done = [exposure for exposure, *_ in _isr_inputs(butler, request, 0)]
    assert done == list(repo.exposures)
    assert applied == _expected(repo)
    assert sorted(reads, key=str) == sorted(repo.bias_ids, key=str)


def test_external_verification_reads_each_certified_bias_once(
    repo: Repo, butler: Butler, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = _count_bias_reads(monkeypatch, butler)
    request = VerificationRequest(
        instrument=get_instrument(INSTRUMENT),
        run_id="cachetest-verify",
        calib_type="bias",
        exposures=repo.exposures,
        detectors=(0,),
        threshold=N_EXPOSURES,
        physical_filter=None,
        sources={"bias": CERTIFIED},
    )
    verify_calibration(butler, request)
    assert sorted(reads, key=str) == sorted(repo.bias_ids, key=str)


def test_no_certified_bias_at_the_exposure(repo: Repo, butler: Butler) -> None:
    """The error names the type, instrument, detector, exposure and collections, as before."""
    source = CalibSource(calib_type="bias", kind="certified", collections=(EARLY_ONLY,))
    cache = CalibrationCache(butler)
    assert float(np.unique(cache.get(source, INSTRUMENT, 0, repo.exposures[0]).image).item()) == 50.0
    late = repo.exposures[-1]
    with pytest.raises(LookupError) as excinfo:
        cache.get(source, INSTRUMENT, 0, late)
    assert str(excinfo.value) == (
        f"no bias for LATISS detector 0 valid at exposure {late} in {EARLY_ONLY}: DatasetNotFoundError"
    )
    missing = CalibSource(
        calib_type="bias", kind="certified", collections=("LATISS/calib/nothing", "LATISS/calib/none")
    )
    with pytest.raises(
        LookupError, match="none of the collections LATISS/calib/nothing, LATISS/calib/none exists"
    ):
        cache.get(missing, INSTRUMENT, 0, late)
