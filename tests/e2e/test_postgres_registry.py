"""End to end with the butler registry on PostgreSQL, as the Deployments run it (``CPFLOW_REGISTRY_DB``).

A stack of its own (broker, the four services) on a repository whose registry is a real PostgreSQL
server (`tests.postgres`), the password in ``PGPASSWORD`` as the Deployments give it. PostgreSQL
enforces a calibration collection's non-overlapping validity ranges with an exclusion constraint
(``btree_gist``), where SQLite's registry checks in Python: both must end in the same reported
failure.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from shared.butler.repo import open_butler
from shared.settings import Settings
from tests.conftest import stack_settings
from tests.e2e.common import assert_every_service_ready
from tests.e2e.test_run_modes import certified, run, write_config
from tests.postgres import PostgresServer, postgres_server

pytestmark = pytest.mark.broker

PASSWORD = "cpflow-registry-secret"


@pytest.fixture(scope="module")
def pg_server_and_stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[PostgresServer, Settings]]:
    from cpflow.stack import stack_down, stack_up

    previous = os.environ.get("PGPASSWORD")
    with postgres_server() as server:
        url = server.create_database("cpflow_registry", "cpflow", PASSWORD)
        os.environ["PGPASSWORD"] = PASSWORD  # the services and the CLI inherit it, as libpq reads it
        home = tmp_path_factory.mktemp("cpflow-pg-home")
        settings = stack_settings(home).model_copy(update={"registry_db": url})
        try:
            stack_up(settings, echo=False)
            yield server, settings
        finally:
            stack_down(settings)
            if previous is None:
                os.environ.pop("PGPASSWORD", None)
            else:
                os.environ["PGPASSWORD"] = previous


def test_a_bias_dark_run_is_certified_in_a_postgresql_registry(
    pg_server_and_stack: tuple[PostgresServer, Settings], tmp_path_factory: pytest.TempPathFactory
) -> None:
    server, pg_stack = pg_server_and_stack
    configs = tmp_path_factory.mktemp("pg-configs")
    config = write_config(
        configs,
        script_mode="BIAS_DARK",
        calib_collection="LATISS/calib/pg",
        certify_calib_begin_date="2027-01-01",
        certify_calib_end_date="2027-12-31",
    )
    run_id, view = run(pg_stack, config, expect=0)
    for calib_type in ("bias", "dark"):
        assert view["types"][calib_type]["verification"]["verdict"] == "PASSED"
        assert view["types"][calib_type]["certification"]["certified"] is True
        assert certified(pg_stack, calib_type, "LATISS/calib").image.shape == (120, 320)
    # The registry is the PostgreSQL database: no SQLite file, and the run's collections are rows there.
    assert not (Path(pg_stack.butler_repo) / "gen3.sqlite3").exists()
    assert pg_stack.registry_db is not None
    with (
        psycopg.connect(server.url("cpflow_registry", "cpflow", PASSWORD)) as db,
        db.cursor() as cursor,
    ):
        cursor.execute("SELECT name FROM collection WHERE name LIKE %s", (f"%{run_id}%",))
        names = {row[0] for row in cursor.fetchall()}
    assert {f"LATISS/runs/{run_id}/bias", f"LATISS/runs/{run_id}/dark"} <= names

    # A second bias over part of the same validity range: PostgreSQL's exclusion constraint refuses
    # it, and the run says so (FAILED, certification not done, the reason names the overlap).
    overlap = write_config(
        configs,
        script_mode="BIAS",
        do_verify=False,
        calib_collection="LATISS/calib/pg",
        certify_calib_begin_date="2027-06-01",
        certify_calib_end_date="2028-06-01",
    )
    _, view = run(pg_stack, overlap, expect=1)
    certification = view["types"]["bias"]["certification"]
    assert certification["certified"] is False and "overlap" in certification["reason"].lower()
    with open_butler(pg_stack.butler_repo, writeable=False) as butler:
        refs = butler.query_datasets("bias", collections="LATISS/calib/pg", find_first=False, explain=False)
        assert len(refs) == 1  # only the first run's bias is certified there
    assert_every_service_ready(pg_stack)


def test_a_run_survives_its_registry_restarting(
    pg_server_and_stack: tuple[PostgresServer, Settings], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The registry's pod restarts during a run (down 2 s): the services reconnect (daf_butler's
    pool pings before use) or retry, the run SUCCEEDS, and every service is ready again."""
    server, settings = pg_server_and_stack
    config = write_config(
        tmp_path_factory.mktemp("pg-restart"),
        script_mode="BIAS_DARK",
        n_bias=8,
        n_dark=6,
        wait_between_exposures=0.5,  # about 7 s of taking frames, which the restart falls into
        calib_collection="LATISS/calib/pg-restart",
        certify_calib_begin_date="2029-01-01",
        certify_calib_end_date="2029-12-31",
    )
    outage: list[float] = []

    def restart_registry() -> None:
        outage.append(time.monotonic())
        server.restart(down_for=2.0)
        outage.append(time.monotonic())

    restart = threading.Timer(3.0, restart_registry)
    restart.start()
    try:
        _, view = run(settings, config, expect=0)
        finished = time.monotonic()
    finally:
        restart.join()
    assert len(outage) == 2 and outage[1] < finished  # the registry was down and back during the run
    for calib_type in ("bias", "dark"):
        assert view["types"][calib_type]["certification"]["certified"] is True
    assert_every_service_ready(settings)
