"""A PostgreSQL server of the test's own: ``initdb`` in a temporary directory, on loopback, stopped by pid.

Debian's ``postgresql`` package provides the binaries (``make setup`` installs it when they are
missing). PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user
(``runuser``); the data directory and its Unix socket are in a temporary directory of its own.
Passwords are checked (``scram-sha-256`` for every role over TCP), so a test sees which credentials
a connection really used.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PostgresServer", "find_binaries", "postgres_server"]

SUPERUSER = "cpflow_test_admin"


def find_binaries() -> Path | None:
    """The directory of ``initdb`` and ``postgres`` (PATH first, then Debian's versions, newest first)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    """A running server: superuser ``cpflow_test_admin`` (password ``admin_password``)."""

    port: int
    admin_password: str
    pid: int
    _binaries: Path
    _directory: Path
    _process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the postmaster (on the same port and data as before, if it ran) and wait for it."""
        log = self._directory / "server.log"
        with open(log, "ab") as log_file:
            self._process = subprocess.Popen(
                _as_server_user(
                    [
                        str(self._binaries / "postgres"),
                        "-D",
                        str(self._directory / "data"),
                        "-p",
                        str(self.port),
                        "-c",
                        "listen_addresses=127.0.0.1",
                        "-c",
                        f"unix_socket_directories={self._directory}",
                        "-c",
                        "fsync=off",
                    ]
                ),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self._process.pid
        deadline = time.monotonic() + 60
        while True:
            try:
                self.sql(["SELECT 1"])
                return
            except Exception:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start; see {log}:\n{log.read_text()}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        """Stop the postmaster and its backends (its session, by pid) and wait for them."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)  # "fast" shutdown: clients are disconnected
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

    def restart(self, down_for: float = 0.0) -> None:
        """Stop, stay down ``down_for`` seconds, start again (a registry pod restarting)."""
        self.stop()
        time.sleep(down_for)
        self.start()

    def url(self, database: str, user: str | None = None, password: str | None = None) -> str:
        """A SQLAlchemy (and libpq) URL; without ``password`` it comes from PGPASSWORD or DbAuth."""
        who = f"{user}:{password}@" if user and password else f"{user}@" if user else ""
        return f"postgresql://{who}127.0.0.1:{self.port}/{database}"

    def sql(self, statements: Sequence[str], *, database: str = "postgres") -> None:
        """Run ``statements`` as the superuser, each in autocommit (CREATE DATABASE needs it)."""
        import psycopg

        connection = psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            dbname=database,
            user=SUPERUSER,
            password=self.admin_password,
        )
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)
        finally:
            connection.close()

    def create_database(self, name: str, owner: str, password: str) -> str:
        """A role ``owner`` with ``password`` owning database ``name`` with ``btree_gist``; its URL."""
        self.sql(
            [f"CREATE ROLE {owner} LOGIN PASSWORD '{password}'", f"CREATE DATABASE {name} OWNER {owner}"]
        )
        self.sql(["CREATE EXTENSION btree_gist"], database=name)
        return self.url(name, owner)


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a server; stopped (by pid) and waited for, and its directory removed, on exit.

    Its directory is a new one under the system's temporary directory, not pytest's (which is
    private to root, so the ``postgres`` user could not reach it).
    """
    binaries = find_binaries()
    if binaries is None:
        raise RuntimeError("no PostgreSQL binaries (initdb): install Debian's postgresql (make setup)")
    directory = Path(tempfile.mkdtemp(prefix="cpflow-postgres-"))
    data = directory / "data"
    password_file = directory / "admin-password"
    admin_password = "admin-" + os.urandom(8).hex()
    password_file.write_text(admin_password + "\n")
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
        shutil.chown(password_file, "postgres", "postgres")
    password_file.chmod(0o600)
    subprocess.run(
        _as_server_user(
            [
                str(binaries / "initdb"),
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                f"--pwfile={password_file}",
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--no-sync",
            ]
        ),
        check=True,
        capture_output=True,
        timeout=120,
    )
    server = PostgresServer(
        port=_free_port(), admin_password=admin_password, pid=0, _binaries=binaries, _directory=directory
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
