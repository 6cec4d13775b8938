"""A PostgreSQL registry that cannot be used yet: one line, exit 6, and nothing half-made.

What a Kubernetes init container (``python -m shared.butler.repo``) meets when the registry's pod is
not up yet or its Secret is wrong, and what the CLI says then. On a real server (`tests.postgres`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.butler import open_butler
from tests.postgres import PostgresServer, postgres_server

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], home: Path, registry_db: str, password: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "CPFLOW_HOME": str(home),
        "CPFLOW_REGISTRY_DB": registry_db,
        "PGPASSWORD": password,
    }
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def _problem_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr without Python's and daf_butler's own warnings."""
    return [
        line
        for line in result.stderr.splitlines()
        if line.strip()
        and "RuntimeWarning" not in line
        and not line.startswith("Failed to instantiate Butler")
    ]


def _registered(home: Path) -> tuple[set[str], str]:
    """The instruments and the ``bias`` storage class of the repository in ``home`` (PGPASSWORD set)."""
    with open_butler(home / "butler", writeable=False) as butler:
        names = {r.name for r in butler.query_dimension_records("instrument", explain=False)}
        return names, butler.get_dataset_type("bias").storageClass_name


def test_a_registry_that_is_not_there_yet_leaves_nothing_and_a_later_start_creates_it(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    url = postgres.url("late_registry", "late")
    result = _run(["-m", "shared.butler.repo"], home, url, "late-secret")
    assert result.returncode == 6, result.stderr
    assert _problem_lines(result) == [
        f"cannot use the registry of the butler repository {home / 'butler'}: connection failed: "
        f'connection to server at "127.0.0.1", port {postgres.port} failed: '
        'FATAL:  password authentication failed for user "late"'
    ]
    assert not (home / "butler" / "butler.yaml").exists()  # no repository that only looks made

    postgres.create_database("late_registry", "late", "late-secret")  # the registry comes up
    result = _run(["-m", "shared.butler.repo"], home, url, "late-secret")
    assert result.returncode == 0, result.stderr
    monkeypatch.setenv("PGPASSWORD", "late-secret")
    assert _registered(home)[0] == {"LATISS", "LSSTComCam", "LSSTCam"}


@pytest.mark.parametrize("problem", ["wrong password", "no btree_gist"])
def test_an_unusable_registry_is_one_line_for_the_init_container_and_the_cli(
    problem: str, postgres: PostgresServer, tmp_path: Path
) -> None:
    database = "registry_" + problem.replace(" ", "_")
    if problem == "wrong password":
        url, password = postgres.create_database(database, database, "right"), "wrong"
        expected = f'password authentication failed for user "{database}"'
    else:
        postgres.sql(
            [f"CREATE ROLE {database} LOGIN PASSWORD 'pw'", f"CREATE DATABASE {database} OWNER {database}"]
        )
        url, password = postgres.url(database, database), "pw"
        expected = "the database has no btree_gist extension (CREATE EXTENSION btree_gist; as its owner)"
    home = tmp_path / "home"
    result = _run(["-m", "shared.butler.repo"], home, url, password)
    assert result.returncode == 6
    (line,) = _problem_lines(result)
    assert line.startswith(f"cannot use the registry of the butler repository {home / 'butler'}: ")
    assert line.endswith(expected)

    raw = tmp_path / "not-a-raw.fits"
    raw.write_bytes(b"")
    result = _run(["-m", "cpflow.cli", "ingest-raws", str(raw)], home, url, password)
    assert result.returncode == 6, result.stdout + result.stderr
    (line,) = _problem_lines(result)
    assert line.startswith(f"cpflow: cannot use the registry of {home / 'butler'}: ") and line.endswith(
        expected
    )


def test_init_containers_of_every_pod_at_once_all_start(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six pods' init containers on one new PostgreSQL registry: one creates it, the others wait for it
    (they see its butler.yaml before its tables; they used to fail on ``butler_attributes``)."""
    url = postgres.create_database("shared_registry", "pods", "pods-secret")
    home = tmp_path / "home"
    env = {**os.environ, "CPFLOW_HOME": str(home), "CPFLOW_REGISTRY_DB": url, "PGPASSWORD": "pods-secret"}
    pods = [
        subprocess.Popen(
            [sys.executable, "-m", "shared.butler.repo"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    errors = [pod.communicate(timeout=300)[1] for pod in pods]
    assert [pod.returncode for pod in pods] == [0] * 6, [err[-500:] for err in errors]
    monkeypatch.setenv("PGPASSWORD", "pods-secret")
    names, bias_storage_class = _registered(home)
    assert names == {"LATISS", "LSSTComCam", "LSSTCam"} and bias_storage_class


def test_postgresqls_passing_errors_are_retried_and_its_others_are_not(postgres: PostgresServer) -> None:
    """`shared.retry.is_transient` on the errors a real PostgreSQL server and psycopg 3 raise."""
    import sqlalchemy

    from shared.retry import is_transient

    postgres.create_database("retries", "retrier", "retrier-secret")
    engine = sqlalchemy.create_engine(postgres.url("retries", "retrier", "retrier-secret"))
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text("CREATE TABLE counter (id int PRIMARY KEY, n int)"))
            connection.execute(sqlalchemy.text("INSERT INTO counter VALUES (1, 0)"))
        # Serialization failure (40001): a repeatable-read transaction updates a row another committed.
        first = engine.connect().execution_options(isolation_level="REPEATABLE READ")
        try:
            transaction = first.begin()
            first.execute(sqlalchemy.text("SELECT n FROM counter WHERE id = 1"))
            with engine.begin() as second:
                second.execute(sqlalchemy.text("UPDATE counter SET n = n + 1 WHERE id = 1"))
            with pytest.raises(sqlalchemy.exc.DBAPIError) as serialization:
                first.execute(sqlalchemy.text("UPDATE counter SET n = n + 1 WHERE id = 1"))
            transaction.rollback()
        finally:
            first.close()
        assert "could not serialize access" in str(serialization.value)
        assert is_transient(serialization.value)
        # Not transient: the same statement would fail again.
        with pytest.raises(sqlalchemy.exc.DBAPIError) as duplicate, engine.begin() as connection:
            connection.execute(sqlalchemy.text("INSERT INTO counter VALUES (1, 0)"))
        with pytest.raises(sqlalchemy.exc.DBAPIError) as syntax, engine.begin() as connection:
            connection.execute(sqlalchemy.text("SELEKT 1"))
        assert not is_transient(duplicate.value) and not is_transient(syntax.value)
    finally:
        engine.dispose()

    # A server that went away (its pod restarting): refused connections are transient.
    with postgres_server() as gone:
        url = gone.url("postgres", "cpflow_test_admin", gone.admin_password)
    engine = sqlalchemy.create_engine(url)
    try:
        with pytest.raises(sqlalchemy.exc.OperationalError) as refused, engine.connect():
            pass
    finally:
        engine.dispose()
    assert "connection refused" in str(refused.value).lower() and is_transient(refused.value)
