"""The summit's case on PostgreSQL: raws from a camera's repository whose registry the OODS owns.

A real PostgreSQL server (`tests.postgres`) holds two registries: the summit repository's
(``embargo``, written by the OODS's role, read by cpflow with a role that may only ``SELECT``, its
credentials in daf_butler's ``LSST_DB_AUTH_CREDENTIALS`` as the summit overlay gives them) and
cpflow's own (``cpflow_registry``, its password in ``PGPASSWORD`` as in the Deployments).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import psycopg
import pytest

from shared.butler import create_repository, open_butler
from shared.butler.raws import load_raw, use_raw_repository
from shared.rawformat import read_raw
from shared.runconfig import validate_run_configuration
from tests.embargo import embargo_repository, oods_ingest
from tests.postgres import PostgresServer
from tests.unit.test_listed_frames import LATISS, _acquire, _frame

OODS_PASSWORD = "oods-secret"
READER_PASSWORD = "reader-secret"
CPFLOW_PASSWORD = "cpflow-secret"


def _row_counts(postgres: PostgresServer, database: str) -> dict[str, int]:
    connection = psycopg.connect(
        host="127.0.0.1", port=postgres.port, dbname=database, user="oods", password=OODS_PASSWORD
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            tables = sorted(row[0] for row in cursor.fetchall())
            counts = {}
            for table in tables:
                cursor.execute(f'SELECT count(*) FROM "{table}"')
                counts[table] = int(cursor.fetchone()[0])  # type: ignore[index]
            return counts
    finally:
        connection.close()


def test_a_run_reads_a_postgresql_summit_repository_with_read_only_credentials(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames = [_frame(tmp_path / "camera", seq, "BIAS") for seq in (169, 170)]
    # The summit: the OODS's role owns the registry and ingests (libpq's PGUSER / PGPASSWORD).
    postgres.create_database("embargo", "oods", OODS_PASSWORD)
    monkeypatch.setenv("PGUSER", "oods")
    monkeypatch.setenv("PGPASSWORD", OODS_PASSWORD)
    summit = tmp_path / "summit"
    oods_ingest(embargo_repository(summit / "LATISS", registry_db=postgres.url("embargo")), frames)
    postgres.sql([f"CREATE ROLE summit_reader LOGIN PASSWORD '{READER_PASSWORD}'"])
    postgres.sql(
        [
            "GRANT USAGE ON SCHEMA public TO summit_reader",
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO summit_reader",
        ],
        database="embargo",
    )
    before = _row_counts(postgres, "embargo")

    # cpflow: its own registry with PGPASSWORD; the summit's only through DbAuth (no PGUSER, so
    # without the DbAuth entry libpq would log in as the process's user and fail).
    monkeypatch.delenv("PGUSER")
    monkeypatch.setenv("PGPASSWORD", CPFLOW_PASSWORD)
    credentials = [{"url": postgres.url("embargo"), "username": "summit_reader", "password": READER_PASSWORD}]
    monkeypatch.setenv("LSST_DB_AUTH_CREDENTIALS", json.dumps(credentials))
    repo = create_repository(
        tmp_path / "repo", registry_db=postgres.create_database("cpflow_registry", "cpflow", CPFLOW_PASSWORD)
    )
    use_raw_repository(str(summit / "{instrument}"))
    try:
        config = validate_run_configuration(
            {
                "instrument": "LATISS",
                "script_mode": "BIAS",
                "camera": "none",
                "exposures_bias": ["AT_O_20240624_000169", "AT_O_20240624_000170"],
                "oods_timeout": 5.0,
            }
        )
        manifest = _acquire(repo, config, "BIAS")
        assert (manifest.discarded, manifest.exposures) == ([2024062400169], [2024062400170])
        with open_butler(repo, writeable=False) as butler:
            (record,) = butler.query_dimension_records(
                "exposure", instrument="LATISS", exposure=2024062400170
            )
            assert record.obs_id == "AT_O_20240624_000170"  # copied into cpflow's PostgreSQL registry
            raw = load_raw(butler, "LATISS", 2024062400170, 0)
        direct = read_raw(frames[1], LATISS)
        for name, pixels in direct.amplifiers.items():
            np.testing.assert_array_equal(raw.amplifiers[name], pixels)

        # Without the DbAuth entry the summit's registry refuses cpflow.
        monkeypatch.delenv("LSST_DB_AUTH_CREDENTIALS")
        use_raw_repository(str(summit / "{instrument}"))
        with open_butler(repo, writeable=False) as butler, pytest.raises(Exception, match="authentication"):
            load_raw(butler, "LATISS", 2024062400169, 0)
    finally:
        use_raw_repository(None)

    # cpflow's role there can only read (so the run above wrote nothing), and nothing changed.
    reader = psycopg.connect(
        host="127.0.0.1", port=postgres.port, dbname="embargo", user="summit_reader", password=READER_PASSWORD
    )
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege), reader.cursor() as cursor:
            cursor.execute("DELETE FROM file_datastore_records")
    finally:
        reader.close()
    assert _row_counts(postgres, "embargo") == before
