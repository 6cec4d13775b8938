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
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

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


class LocalKafka:
    """One KRaft broker+controller on 127.0.0.1 with its state under ``home/kafka``."""

    def __init__(self, home: Path, port: int, controller_port: int, cache: Path | None = None) -> None:
        self.home = home / "kafka"
        self.cache = cache
        self.port = port
        self.controller_port = controller_port
        self.pid_file = home / "run" / "kafka.pid"
        self.log_file = home / "logs" / "kafka.log"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def _write_config(self) -> Path:
        self.home.mkdir(parents=True, exist_ok=True)
        props = self.home / "server.properties"
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
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
            )
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

    def start(self, timeout: float = 90.0) -> None:
        """Start the broker unless it runs already; return when it accepts connections."""
        if self.pid() is not None and port_open("127.0.0.1", self.port):
            return
        if port_open("127.0.0.1", self.port):
            raise RuntimeError(
                f"port {self.port} is taken by another process; set CPFLOW_KAFKA_PORT to a free port"
            )
        libs = fetch_jars(kafka_cache_dir(self.cache))
        props = self._write_config()
        classpath = f"{libs}/*"
        java = self._java()
        log4j = f"-Dlog4j2.configurationFile=file:{self.home / 'log4j2.properties'}"
        if not (self.home / "data" / "meta.properties").exists():
            cluster_id = subprocess.run(
                [java, "-cp", classpath, log4j, "kafka.tools.StorageTool", "random-uuid"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            subprocess.run(
                [
                    java,
                    "-cp",
                    classpath,
                    log4j,
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(props),
                    "--standalone",
                ],
                check=True,
                capture_output=True,
                text=True,
            )
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                [java, "-Xms256m", "-Xmx1g", "-cp", classpath, log4j, "kafka.Kafka", str(props)],
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

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            stop_pid(pid, timeout=30.0)
        self.pid_file.unlink(missing_ok=True)


async def create_topics(bootstrap: str, topics: list[str], partitions: int, timeout: float = 60.0) -> None:
    """Create ``topics`` (same partition count for all: co-partitioning by run id); keep existing ones."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaConnectionError

    deadline = time.monotonic() + timeout
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
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
