"""A real single-node Apache Kafka broker (KRaft) on 127.0.0.1, from the Maven Central jars.

`fetch_jars` resolves ``org.apache.kafka:kafka_2.13`` and a log4j2 SLF4J binding with ``mvn``
into a cache outside the repository (``$CPFLOW_KAFKA_CACHE``, default
``~/.cache/cpflow/kafka-<version>``). `LocalKafka` formats the storage once, starts
``kafka.Kafka`` as a background process with its pid file and log under the state directory,
waits until it accepts connections, creates the topics, and stops it by its pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from shared.kafka_access import KafkaConnection

if TYPE_CHECKING:
    from cpflow.access import Principal

__all__ = ["KAFKA_VERSION", "LocalKafka", "fetch_jars", "kafka_cache_dir"]

KAFKA_VERSION = "4.3.1"
LOG4J_VERSION = "2.25.3"

_POM = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>org.cpflow</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{KAFKA_VERSION}</version>
    </dependency>
    <!-- Kafka 4.x ships no logging backend in its pom and is still on slf4j-api 1.7. -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{LOG4J_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>{LOG4J_VERSION}</version>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
"""


def kafka_cache_dir(configured: Path | None = None) -> Path:
    """Where the jars are kept: ``CPFLOW_KAFKA_CACHE``, else ``~/.cache/cpflow/kafka-<version>``."""
    if configured is None:
        from shared.settings import load_settings

        configured = load_settings().kafka_cache
    return configured or Path.home() / ".cache" / "cpflow" / f"kafka-{KAFKA_VERSION}"


def fetch_jars(cache: Path | None = None) -> Path:
    """Resolve the broker's jars with Maven into ``cache/libs`` (once) and return that folder."""
    cache = cache or kafka_cache_dir()
    libs = cache / "libs"
    marker = cache / "complete"
    if marker.exists() and any(libs.glob(f"kafka_2.13-{KAFKA_VERSION}.jar")):
        return libs
    if shutil.which("mvn") is None:
        raise RuntimeError("Maven (mvn) is needed to fetch the Kafka jars from Maven Central; install it")
    cache.mkdir(parents=True, exist_ok=True)
    pom = cache / "pom.xml"
    pom.write_text(_POM)
    subprocess.run(
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={libs}",
        ],
        check=True,
    )
    marker.write_text(KAFKA_VERSION)
    return libs


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); look at its state.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def stop_pid(pid: int, timeout: float = 30.0) -> None:
    """SIGTERM the process group of ``pid``, wait, then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if not pid_alive(pid):
                return
            time.sleep(0.1)


ADMIN = "cpflow-admin"
"""The broker's super user: only the stack itself (topics, users, ACLs) and tests' attacks use it."""

_ACCESS_PROGRAM = Path(__file__).parent / "java" / "CpflowAccess.java"


def _new_password() -> str:
    return secrets.token_urlsafe(24)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable and writable by the owner only (its directory too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        stream.write(text)
    os.chmod(path, 0o600)


class LocalKafka:
    """One KRaft broker+controller on 127.0.0.1 with its state under ``home/kafka``.

    Clients connect over SASL_PLAINTEXT with SCRAM-SHA-512 users, and Kafka's own authorizer
    (KRaft ``StandardAuthorizer``) allows each only what its ACLs say (nothing by default). The
    super user `ADMIN` is created when the storage is formatted; its password, and every other
    user's, is kept under ``home/credentials`` (owner only). The controller listener uses SASL
    PLAIN with the same super user (KRaft controllers cannot use SCRAM).
    """

    def __init__(self, home: Path, port: int, controller_port: int, cache: Path | None = None) -> None:
        self.state = home
        self.home = home / "kafka"
        self.port = port
        self.controller_port = controller_port
        self.cache = cache
        self.pid_file = home / "run" / "kafka.pid"
        self.log_file = home / "logs" / "kafka.log"
        self.credentials_dir = home / "credentials"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def credentials(self, role: str) -> dict[str, str] | None:
        """The stored credentials of ``role`` (a principal's name, or ``admin``), if any."""
        path = self.credentials_dir / f"{role}.json"
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            return None

    def ensure_credentials(self, role: str, username: str) -> dict[str, str]:
        """The credentials of ``role``, made (and kept, owner only) the first time."""
        stored = self.credentials(role)
        if stored is None or stored.get("username") != username:
            stored = {
                "bootstrap": self.bootstrap,
                "security_protocol": "SASL_PLAINTEXT",
                "mechanism": "SCRAM-SHA-512",
                "username": username,
                "password": _new_password(),
            }
        stored["bootstrap"] = self.bootstrap
        write_private(self.credentials_dir / f"{role}.json", json.dumps(stored, indent=2) + "\n")
        return stored

    def admin_connection(self) -> KafkaConnection:
        admin = self.credentials("admin")
        if admin is None:
            raise RuntimeError(f"the local broker has no super-user credentials in {self.credentials_dir}")
        return KafkaConnection(
            bootstrap=self.bootstrap,
            security_protocol="SASL_PLAINTEXT",
            mechanism="SCRAM-SHA-512",
            username=admin["username"],
            password=admin["password"],
        )

    def _write_config(self, admin_password: str) -> Path:
        self.home.mkdir(parents=True, exist_ok=True)
        props = self.home / "server.properties"
        scram = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{ADMIN}" password="{admin_password}";'
        )
        plain = (
            f'org.apache.kafka.common.security.plain.PlainLoginModule required username="{ADMIN}" '
            f'password="{admin_password}" user_{ADMIN}="{admin_password}";'
        )
        write_private(
            props,
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}",
                    f"listeners=CLIENT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=CLIENT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=CLIENT",
                    "listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,CLIENT:SASL_PLAINTEXT",
                    "sasl.enabled.mechanisms=SCRAM-SHA-512",
                    "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
                    "sasl.mechanism.controller.protocol=PLAIN",
                    "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
                    f"listener.name.controller.plain.sasl.jaas.config={plain}",
                    f"listener.name.client.scram-sha-512.sasl.jaas.config={scram}",
                    "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                    f"super.users=User:{ADMIN}",
                    "allow.everyone.if.no.acl.found=false",
                    f"log.dirs={self.home / 'data'}",
                    "num.partitions=1",
                    "auto.create.topics.enable=false",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=3",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "",
                ]
            ),
        )
        (self.home / "log4j2.properties").write_text(_LOG4J2)
        return props

    def _java(self) -> str:
        java_home = os.environ.get("JAVA_HOME")
        if java_home and Path(java_home, "bin", "java").exists():
            return str(Path(java_home, "bin", "java"))
        java = shutil.which("java")
        if java is None:
            raise RuntimeError("a Java 17+ runtime (java) is needed for the Kafka broker")
        return java

    def _log4j(self) -> str:
        return f"-Dlog4j2.configurationFile=file:{self.home / 'log4j2.properties'}"

    def start(self, timeout: float = 90.0) -> None:
        """Start the broker unless it runs already; return when it accepts connections."""
        if self.pid() is not None and port_open("127.0.0.1", self.port):
            return
        if port_open("127.0.0.1", self.port):
            raise RuntimeError(
                f"port {self.port} is taken by another process; set CPFLOW_KAFKA_PORT to a free port"
            )
        libs = fetch_jars(kafka_cache_dir(self.cache))
        data = self.home / "data"
        if (data / "meta.properties").exists() and self.credentials("admin") is None:
            # Storage formatted before the broker had users: the stack recreates it (its events
            # only; the butler keeps every product and record).
            shutil.rmtree(data)
        admin = self.ensure_credentials("admin", ADMIN)
        props = self._write_config(admin["password"])
        classpath = f"{libs}/*"
        java = self._java()
        if not (data / "meta.properties").exists():
            cluster_id = subprocess.run(
                [java, "-cp", classpath, self._log4j(), "kafka.tools.StorageTool", "random-uuid"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            subprocess.run(
                [
                    java,
                    "-cp",
                    classpath,
                    self._log4j(),
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(props),
                    "--standalone",
                    "--add-scram",
                    f"SCRAM-SHA-512=[name={ADMIN},password={admin['password']}]",
                ],
                check=True,
                capture_output=True,
                text=True,
            )
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                [java, "-Xms256m", "-Xmx1g", "-cp", classpath, self._log4j(), "kafka.Kafka", str(props)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the Kafka broker exited with code {proc.returncode}; see {self.log_file}"
                )
            if port_open("127.0.0.1", self.port):
                return
            time.sleep(0.3)
        stop_pid(proc.pid)
        raise RuntimeError(
            f"the Kafka broker did not accept connections within {timeout:.0f} s; see {self.log_file}"
        )

    def sync_access(self, principals: list[Principal]) -> dict[str, dict[str, str]]:
        """Create or update every principal's SCRAM user and set exactly its ACLs; their credentials.

        Each principal may read (and describe) its ``reads`` topics, write (and describe) its
        ``writes`` topics and use only its own consumer group; a topic name ending in ``*`` is a
        prefix. ACLs of these users that the table no longer gives are removed.
        """
        from cpflow.access import acls

        admin = self.credentials("admin")
        assert admin is not None, "start the broker first"
        lines: list[str] = []
        found: dict[str, dict[str, str]] = {}
        for principal in principals:
            credentials = self.ensure_credentials(principal.name, principal.username)
            found[principal.name] = credentials
            lines.append(f"user {principal.username} {credentials['password']}")
            lines.extend(
                f"acl {principal.username} {a.operation} {a.resource} {a.pattern} {a.name}"
                for a in acls(principal)
            )
        client = self.home / "admin.properties"
        write_private(
            client,
            "\n".join(
                [
                    f"bootstrap.servers={self.bootstrap}",
                    "security.protocol=SASL_PLAINTEXT",
                    "sasl.mechanism=SCRAM-SHA-512",
                    "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
                    f'username="{admin["username"]}" password="{admin["password"]}";',
                    "",
                ]
            ),
        )
        libs = fetch_jars(kafka_cache_dir(self.cache))
        deadline = time.monotonic() + 60.0
        while True:
            result = subprocess.run(
                [self._java(), "-cp", f"{libs}/*", self._log4j(), str(_ACCESS_PROGRAM), str(client)],
                input="\n".join(lines) + "\n",
                capture_output=True,
                text=True,
            )
            if result.returncode == 0:
                return found
            if time.monotonic() > deadline:  # the broker may still be finishing its start
                raise RuntimeError(f"cannot set the broker's users and ACLs: {result.stderr.strip()[-2000:]}")
            time.sleep(1.0)

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            stop_pid(pid, timeout=30.0)
        self.pid_file.unlink(missing_ok=True)


async def create_topics(
    connection: KafkaConnection, topics: list[str], partitions: int, timeout: float = 60.0
) -> None:
    """Create ``topics`` (same partition count for all: co-partitioning by run id); keep existing ones."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaConnectionError

    deadline = time.monotonic() + timeout
    while True:
        admin = AIOKafkaAdminClient(**connection.aiokafka_options(), request_timeout_ms=10_000)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [t for t in topics if t not in existing]
            if missing:
                await admin.create_topics(
                    [NewTopic(name=t, num_partitions=partitions, replication_factor=1) for t in missing]
                )
            return
        except KafkaConnectionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1.0)
        finally:
            await admin.close()
