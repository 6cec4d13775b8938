"""A repository laid out as the summit's embargo repository, and the OODS that ingests into it.

obs_lsst's instrument, detector and filter records (cpflow registers the same ones; see
``tests/unit/test_repository_sharing.py``), ``raw`` with storage class ``Exposure``, and for each
file the raw formatter obs_lsst records (which cpflow cannot import), the file left where the camera
wrote it (transfer ``direct``). Used by the unit tests of ``CPFLOW_RAW_REPO`` and by the e2e stack.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from lsst.daf.butler import Butler, CollectionType, Config, DatasetRef, DatasetType, FileDataset
from sqlalchemy.engine import make_url

from shared.butler import RAW, raw_collection
from shared.butler.exposures import day_obs_record, exposure_record, group_record, read_primary_header
from shared.butler.formatters import RawFitsFormatter
from shared.butler.instruments import detector_record, filter_records, instrument_record
from shared.butler.repo import seed_config
from shared.instruments import get_instrument
from shared.rawformat import check_raw

OBS_LSST_RAW_FORMATTERS = {
    "LATISS": "lsst.obs.lsst.rawFormatter.LatissRawFormatter",
    "LSSTComCam": "lsst.obs.lsst.rawFormatter.LsstComCamRawFormatter",
    "LSSTCam": "lsst.obs.lsst.rawFormatter.LsstCamRawFormatter",
}


def embargo_repository(
    root: Path, instruments: Sequence[str] = ("LATISS",), *, registry_db: str | None = None
) -> Path:
    """An empty embargo repository at ``root``: records and the ``raw`` dataset type, no raws.

    ``registry_db``: a PostgreSQL URL (as at the summit); SQLite in ``root`` by default.
    """
    Butler.makeRepo(str(root), config=seed_config(registry_db))
    with Butler.from_config(str(root), writeable=True) as butler:
        registry = butler.registry
        for name in instruments:
            instrument = get_instrument(name)
            registry.insertDimensionData("instrument", instrument_record(instrument))
            registry.insertDimensionData(
                "detector", *(detector_record(instrument, d) for d in instrument.detectors)
            )
            registry.insertDimensionData("physical_filter", *filter_records(instrument))
            registry.registerCollection(raw_collection(name), CollectionType.RUN)
        registry.registerDatasetType(
            DatasetType(RAW, ("instrument", "exposure", "detector"), "Exposure", universe=butler.dimensions)
        )
    return root


def oods_ingest(root: Path, paths: Sequence[Path]) -> None:
    """Ingest raw files into the embargo repository as the OODS does (records from the headers)."""
    with Butler.from_config(str(root), writeable=True) as butler:
        registry = butler.registry
        raw_type = registry.getDatasetType(RAW)
        for path in paths:
            info = check_raw(path)
            instrument = get_instrument(info.instrument)
            record = exposure_record(read_primary_header(path), instrument)
            registry.syncDimensionData("day_obs", day_obs_record(butler, instrument.name, record["day_obs"]))
            registry.syncDimensionData("group", group_record(instrument.name, record["group"]))
            registry.syncDimensionData("exposure", record)
            data_id = {"instrument": instrument.name, "exposure": record["id"], "detector": info.detector}
            ref = DatasetRef(raw_type, data_id, run=raw_collection(instrument.name))
            butler.ingest(
                FileDataset(path=str(path), refs=[ref], formatter=RawFitsFormatter), transfer="direct"
            )
            _record_formatter(root, ref, OBS_LSST_RAW_FORMATTERS[instrument.name])


_SET_FORMATTER = "UPDATE file_datastore_records SET formatter = %s WHERE dataset_id = %s"


def _record_formatter(root: Path, ref: DatasetRef, formatter: str) -> None:
    """Write obs_lsst's formatter name into the datastore record of ``ref`` (SQLite or PostgreSQL)."""
    db = str(Config(str(root / "butler.yaml"))["registry", "db"])
    if db.startswith("sqlite"):
        with sqlite3.connect(root / "gen3.sqlite3") as connection:
            connection.execute(
                "UPDATE file_datastore_records SET formatter = ? WHERE dataset_id = ?",
                (formatter, ref.id.hex),
            )
        return
    import psycopg  # the OODS's role: PGUSER / PGPASSWORD, as for its butler

    url = make_url(db)
    connection = psycopg.connect(host=url.host, port=url.port, dbname=url.database, user=url.username)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(
                "UPDATE file_datastore_records SET formatter = %s WHERE dataset_id = %s",
                (formatter, str(ref.id)),
            )
    finally:
        connection.close()


def snapshot(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (the repository's database and configuration)."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }
