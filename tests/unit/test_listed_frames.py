"""``camera: none``: the configuration rules, waiting for listed frames, a separate read-only raw repository.

Frames are real-format raws built from a real LATISS header (``tests/data/headers``); the raw
repository is laid out as Rubin's: obs_lsst's instrument and detector records, ``raw`` with storage
class ``Exposure``, obs_lsst's raw formatter recorded for each file, ingested with transfer ``direct``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lsst.daf.butler import Butler

from services.acquirer.listed_frames import FramesNotIngested, WrongFrames, acquire_listed_frames
from shared.butler import RAW, create_repository, datasets, ingest_raws, open_butler, raw_collection
from shared.butler.raws import load_raw, use_raw_repository
from shared.instruments import get_instrument
from shared.rawformat import RawFormatError, read_raw
from shared.records import AcquisitionManifest
from shared.runconfig import ConfigurationError, RunConfiguration, validate_run_configuration
from tests.embargo import embargo_repository, oods_ingest, snapshot
from tests.unit.realraws import COMCAM_OBJECT, LATISS_DARK, real_header, write_real_raw

LATISS = get_instrument("LATISS")
COMCAM = get_instrument("LSSTComCam")
OBS_LSST_RAW_FORMATTER = "lsst.obs.lsst.rawFormatter.LatissRawFormatter"


def _errors(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigurationError) as excinfo:
        validate_run_configuration(data)
    return excinfo.value.errors


def _none(**keys: Any) -> dict[str, Any]:
    return {"instrument": "LATISS", "script_mode": "BIAS", "camera": "none", **keys}


# ------------------------------------------------------------------------------------ configuration


def test_listed_frames_by_exposure_or_obs_id_with_the_first_discarded() -> None:
    config = validate_run_configuration(
        _none(exposures_bias=["AT_O_20240624_000169", 2024062400170, "AT_C_20220426_000004"])
    )
    assert [f.exposure_id for f in config.frames("bias")] == [2024062400169, 2024062400170, 3022042600004]
    assert config.n_kept("bias") == 2  # n_discard_bias = 1, as the reference
    # Its document validates again to the same configuration (no n_bias, exp_times_* or waits in it).
    assert validate_run_configuration(config.to_document()) == config
    assert "n_bias" not in config.to_document()


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({}, "exposures_bias: camera: none takes no images, so the run needs its bias frames"),
        (
            {"exposures_bias": [1, 2], "n_discard_bias": 2},
            "exposures_bias: lists 2 frame(s) and n_discard_bias = 2 drops the first 2",
        ),
        ({"exposures_bias": [1, 2], "n_bias": 1}, "n_bias: not used with camera: none"),
        ({"exposures_bias": [1, 2], "wait_between_exposures": 3.0}, "wait_between_exposures: not used"),
        ({"exposures_bias": [1, 2], "exposures_flat": [3]}, "exposures_flat: script_mode BIAS takes no flat"),
        (
            {"exposures_bias": ["CC_O_20241108_000266", 2]},
            "exposures_bias: CC_O_20241108_000266 is an obs id of LSSTComCam; the run's instrument is LATISS",
        ),
        (
            {"exposures_bias": [2024062400169, "AT_O_20240624_000169"]},
            "exposures_bias: 2024062400169, AT_O_20240624_000169 name the same exposure more than once",
        ),
        ({"exposures_bias": ["AT_O_20241324_000001"]}, "day_obs 20241324 is not a date"),
        ({"exposures_bias": ["AT_X_20240624_000001"]}, "controller X is not one of"),
        (
            {"exposures_bias": [0]},
            "exposures_bias[0]: an exposure id must be an integer from 1 to 7050123199999",
        ),
        ({"exposures_bias": [1, 10**30]}, "exposures_bias[1]: an exposure id must be an integer from 1 to"),
        ({"exposures_bias": ["AT_O_20240624_000169" * 1000]}, "exposures_bias[0]: has 20000 characters"),
        ({"exposures_bias": list(range(1, 1200))}, "exposures_bias: "),
        ({"exposures_bias": [True]}, "exposures_bias[0]: must be an exposure id (an integer) or an obs id"),
        ({"exposures_bias": ["169"]}, "'169' is neither an exposure id (an integer) nor an obs id"),
        ({"exposures_bias": [1], "simulator": {}}, "simulator: only allowed with camera: simulated"),
    ],
)
def test_camera_none_rules_name_the_key(keys: dict[str, Any], expected: str) -> None:
    errors = _errors(_none(**keys))
    assert any(expected in e for e in errors), errors


def test_a_frame_listed_as_two_image_types_and_frames_with_a_camera_are_refused() -> None:
    errors = _errors(_none(script_mode="BIAS_DARK", exposures_bias=[1, 2], exposures_dark=[2, 3]))
    assert errors == [
        "exposures_dark: 2 is also listed in exposures_bias; a frame has one image type, list it once"
    ]
    errors = _errors({"instrument": "LATISS", "script_mode": "BIAS", "exposures_bias": [1, 2]})
    assert errors == [
        "exposures_bias: only used with camera: none (camera is simulated, which takes the frames); "
        "set camera: none to use frames already in the butler, or remove the key"
    ]


# ------------------------------------------------------------------------------------ frames


def _frame(directory: Path, seq_num: int, image_type: str, *, fill: int = 1000) -> Path:
    """A real-format LATISS raw of 2024-06-24, sequence ``seq_num``, of ``image_type``."""
    obs_id = f"AT_O_20240624_{seq_num:06d}"
    header = real_header(
        LATISS_DARK,
        SEQNUM=seq_num,
        OBSID=obs_id,
        IMGTYPE=image_type,
        EXPTIME=0.0 if image_type == "BIAS" else 30.0,
    )
    geometry = LATISS.detector(0).with_data_shape(6, 8)
    directory.mkdir(parents=True, exist_ok=True)
    return write_real_raw(directory / f"{obs_id}_R00_S00.fits", header, geometry, fill=fill + seq_num)


def _acquire(repo: Path, config: RunConfiguration, image_type: str, **kwargs: Any) -> AcquisitionManifest:
    reports: list[tuple[int, int]] = kwargs.pop("reports", [])
    run_id: str = kwargs.pop("run_id", "20261203T000000-abcdef")

    async def with_butler(func: Any, *args: Any) -> Any:
        def call() -> Any:
            with open_butler(repo) as butler:
                return func(butler, *args)

        return await asyncio.to_thread(call)

    async def progress(done: int, total: int) -> None:
        reports.append((done, total))

    return asyncio.run(
        acquire_listed_frames(
            with_butler=with_butler,
            config=config,
            run_id=run_id,
            image_type=image_type,
            progress=progress,
            poll_interval=0.2,
            **kwargs,
        )
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return create_repository(tmp_path / "repo")


def _ingest(repo: Path, paths: Sequence[Path]) -> None:
    with open_butler(repo) as butler:
        ingest_raws(butler, list(paths), LATISS, run=raw_collection("LATISS"), transfer="copy")


def test_the_acquirer_waits_for_frames_that_are_being_ingested(repo: Path, tmp_path: Path) -> None:
    paths = [_frame(tmp_path / "night", seq, "BIAS") for seq in (169, 170, 171)]
    _ingest(repo, paths[:1])
    config = validate_run_configuration(
        _none(
            exposures_bias=["AT_O_20240624_000169", "AT_O_20240624_000170", 2024062400171], oods_timeout=60.0
        )
    )
    # The OODS ingests the other two a second after the run starts waiting.
    timer = threading.Timer(1.0, _ingest, args=(repo, paths[1:]))
    timer.start()
    reports: list[tuple[int, int]] = []
    started = time.monotonic()
    try:
        manifest = _acquire(repo, config, "BIAS", reports=reports)
    finally:
        timer.join()
    assert time.monotonic() - started >= 1.0
    assert manifest.discarded == [2024062400169]
    assert manifest.exposures == [2024062400170, 2024062400171]
    assert manifest.physical_filter == "SDSSr_65mm~empty"
    assert reports[0] == (1, 3) and reports[-1] == (3, 3)


def test_a_timeout_is_a_failure_naming_every_missing_frame(repo: Path, tmp_path: Path) -> None:
    _ingest(repo, [_frame(tmp_path / "night", 169, "BIAS")])
    config = validate_run_configuration(
        _none(
            exposures_bias=["AT_O_20240624_000169", "AT_O_20240624_000175", 2024062400176], oods_timeout=0.5
        )
    )
    with pytest.raises(FramesNotIngested) as excinfo:
        _acquire(repo, config, "BIAS")
    assert str(excinfo.value) == (
        "2 of 3 listed bias frames not in LATISS/raw/all after oods_timeout = 0.5 s: "
        "2024062400175 (AT_O_20240624_000175) (no exposure record); 2024062400176 (no exposure record)"
    )
    with open_butler(repo, writeable=False) as butler:  # no manifest: the run did not get its frames
        assert not butler.query_datasets(
            datasets.ACQUISITION_MANIFEST, collections="*", find_first=False, explain=False
        )


def test_a_frame_of_another_type_is_refused_at_once(repo: Path, tmp_path: Path) -> None:
    _ingest(repo, [_frame(tmp_path / "night", 169, "BIAS"), _frame(tmp_path / "night", 170, "DARK")])
    config = validate_run_configuration(
        _none(
            script_mode="BIAS_DARK",
            exposures_bias=[2024062400169],
            exposures_dark=[2024062400169 + 1],
            n_discard_bias=0,
            n_discard_dark=0,
            oods_timeout=600.0,
        )
    )
    assert _acquire(repo, config, "BIAS").exposures == [2024062400169]
    swapped = validate_run_configuration(
        _none(exposures_bias=[2024062400170, 2024062400169], oods_timeout=600.0)
    )
    started = time.monotonic()
    with pytest.raises(WrongFrames) as excinfo:
        _acquire(repo, swapped, "BIAS", run_id="20261203T000001-abcdef")
    assert time.monotonic() - started < 60  # not after the oods_timeout
    assert str(excinfo.value) == (
        "2024062400170 is a dark (observation_type), not a bias; list it under exposures_dark or remove it"
    )


# ------------------------------------------------------------------------------------ raw repository


@pytest.fixture
def raw_repository(tmp_path: Path) -> Iterator[tuple[Path, list[Path]]]:
    paths = [_frame(tmp_path / "camera", seq, "BIAS") for seq in (169, 170)]
    root = embargo_repository(tmp_path / "embargo")
    oods_ingest(root, paths)
    use_raw_repository(str(root))
    try:
        yield root, paths
    finally:
        use_raw_repository(None)


def test_raws_of_a_rubin_repository_are_read_with_cpflows_reader_and_the_repository_is_unchanged(
    raw_repository: tuple[Path, list[Path]], repo: Path
) -> None:
    root, paths = raw_repository
    before = snapshot(root)
    with Butler.from_config(str(root)) as embargo:
        (ref,) = embargo.query_datasets(
            RAW,
            collections=raw_collection("LATISS"),
            instrument="LATISS",
            exposure=2024062400169,
            explain=False,
        )
        assert ref.datasetType.storageClass_name == "Exposure"
        with pytest.raises(ImportError, match=r"lsst\.obs"):
            embargo.get(ref)  # what butler.get would do here without obs_lsst

    config = validate_run_configuration(
        _none(exposures_bias=["AT_O_20240624_000169", "AT_O_20240624_000170"], oods_timeout=5.0)
    )
    manifest = _acquire(repo, config, "BIAS")
    assert (manifest.discarded, manifest.exposures) == ([2024062400169], [2024062400170])

    with open_butler(repo, writeable=False) as butler:
        # The exposure records were copied into cpflow's repository, the raws were not.
        (record,) = butler.query_dimension_records("exposure", instrument="LATISS", exposure=2024062400170)
        assert (record.obs_id, record.observation_type) == ("AT_O_20240624_000170", "bias")
        assert not butler.query_datasets(RAW, collections="*", find_first=False, explain=False)
        raw = load_raw(butler, "LATISS", 2024062400170, 0)
    direct = read_raw(paths[1], LATISS)
    assert raw.amplifiers.keys() == direct.amplifiers.keys()
    for name, pixels in direct.amplifiers.items():
        np.testing.assert_array_equal(raw.amplifiers[name], pixels)
    assert int(raw.amplifiers["C10"][0, 0]) == 1000 + 170
    assert snapshot(root) == before


def test_a_raw_missing_from_the_raw_repository_is_named(
    raw_repository: tuple[Path, list[Path]], repo: Path
) -> None:
    root, _ = raw_repository
    with open_butler(repo, writeable=False) as butler, pytest.raises(LookupError) as excinfo:
        load_raw(butler, "LATISS", 2024062400171, 0)
    assert str(root) in str(excinfo.value) and "2024062400171" in str(excinfo.value)


def test_a_file_of_the_raw_repository_that_is_no_raw_is_refused_by_name(
    raw_repository: tuple[Path, list[Path]], repo: Path
) -> None:
    """The raw repository's file changed under it (transfer direct): refused with the file's name."""
    _, paths = raw_repository
    paths[0].write_bytes(b"SIMPLE  =                    T" + b" " * 2850)
    with open_butler(repo, writeable=False) as butler, pytest.raises(RawFormatError) as excinfo:
        load_raw(butler, "LATISS", 2024062400169, 0)
    assert str(paths[0]) in str(excinfo.value)


def _comcam_bias(directory: Path, seq_num: int) -> Path:
    """A real-format LSSTComCam raw (R22_S00, detector 0) of 2024-11-08, a bias."""
    obs_id = f"CC_O_20241108_{seq_num:06d}"
    header = real_header(COMCAM_OBJECT, SEQNUM=seq_num, OBSID=obs_id, IMGTYPE="BIAS", EXPTIME=0.0)
    geometry = COMCAM.detector(0).with_data_shape(6, 8)
    return write_real_raw(directory / f"{obs_id}_R22_S00.fits", header, geometry, fill=2000 + seq_num)


def test_each_instrument_reads_its_own_raw_repository(tmp_path: Path, repo: Path) -> None:
    """The summit's layout, one repository per camera: ``CPFLOW_RAW_REPO=/repo/{instrument}``."""
    camera = tmp_path / "camera"
    latiss = [_frame(camera, seq, "BIAS") for seq in (169, 170)]
    comcam = [_comcam_bias(camera, seq) for seq in (266, 267)]
    summit = tmp_path / "summit"  # cpflow's own repository is tmp_path / "repo"
    oods_ingest(embargo_repository(summit / "LATISS"), latiss)
    oods_ingest(embargo_repository(summit / "LSSTComCam", ["LSSTComCam"]), comcam)
    before = {name: snapshot(summit / name) for name in ("LATISS", "LSSTComCam")}
    use_raw_repository(str(summit / "{instrument}"))
    try:
        kept = _acquire(
            repo, validate_run_configuration(_none(exposures_bias=[2024062400169, 2024062400170])), "BIAS"
        )
        assert kept.exposures == [2024062400170]
        config = validate_run_configuration(
            {
                "instrument": "LSSTComCam",
                "script_mode": "BIAS",
                "camera": "none",
                "detectors": [0],
                "exposures_bias": ["CC_O_20241108_000266", "CC_O_20241108_000267"],
            }
        )
        assert _acquire(repo, config, "BIAS").exposures == [2024110800267]
        with open_butler(repo, writeable=False) as butler:
            assert int(load_raw(butler, "LATISS", 2024062400170, 0).amplifiers["C10"][0, 0]) == 1170
            raw = load_raw(butler, "LSSTComCam", 2024110800267, 0)
            assert int(raw.amplifiers["C10"][0, 0]) == 2267
            # A LATISS raw is not looked for in LSSTComCam's repository, nor the other way round.
            with pytest.raises(LookupError, match="LSSTComCam"):
                load_raw(butler, "LSSTComCam", 2024062400170, 0)
            # An instrument whose repository is not there is named with that repository.
            with pytest.raises(Exception, match=str(summit / "LSSTCam")):
                load_raw(butler, "LSSTCam", 2024110800267, 94)
    finally:
        use_raw_repository(None)
    assert {name: snapshot(summit / name) for name in before} == before
