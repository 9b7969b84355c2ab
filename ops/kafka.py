"""Real Apache Kafka brokers (KRaft) on loopback, for development, tests and benchmarks.

The broker jars come from Maven Central once (``mvn dependency:copy-dependencies`` of
``org.apache.kafka:kafka_2.13``) into ``~/.cache/roadwatch/kafka-<version>/libs``, outside any
clone. A broker is a combined controller+broker node: its log dir is formatted with the
StorageTool, then ``java -cp 'libs/*' kafka.Kafka server.properties`` runs until stopped.
:class:`KafkaCluster` starts one or more such nodes forming one KRaft quorum.

``python -m ops.kafka start --port 9092 --dir .state/kafka`` runs one in the foreground;
``python -m ops.kafka fetch`` only fetches the jars.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

KAFKA_VERSION = os.environ.get("ROADWATCH_KAFKA_VERSION", "4.1.1")
CACHE = Path(os.environ.get("ROADWATCH_CACHE", Path.home() / ".cache" / "roadwatch"))

POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>roadwatch</groupId><artifactId>kafka-broker</artifactId><version>1</version><packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{version}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>2.24.3</version></dependency>
  </dependencies>
</project>
"""

LOG4J = """rootLogger.level=WARN
rootLogger.appenderRef.stdout.ref=STDOUT
appender.stdout.type=Console
appender.stdout.name=STDOUT
appender.stdout.layout.type=PatternLayout
appender.stdout.layout.pattern=[%d] %p %m (%c)%n
logger.server.name=kafka.server.KafkaRaftServer
logger.server.level=INFO
"""


def libs_dir(version: str = KAFKA_VERSION) -> Path:
    """The broker's jars, fetched from Maven Central on first use."""
    home = CACHE / f"kafka-{version}"
    libs = home / "libs"
    if (home / ".complete").exists():
        return libs
    home.mkdir(parents=True, exist_ok=True)
    (home / "pom.xml").write_text(POM.format(version=version))
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError("Maven (mvn) is needed to fetch the Kafka broker jars: apt-get install maven")
    if libs.exists():
        shutil.rmtree(libs)
    subprocess.run(
        [mvn, "-q", "-B", "dependency:copy-dependencies", f"-DoutputDirectory={libs}", "-DincludeScope=runtime"],
        cwd=home,
        check=True,
    )
    (home / "log4j2.properties").write_text(LOG4J)
    (home / ".complete").write_text(version)
    return libs


def free_port(run: int = 1, attempts: int = 200) -> int:
    """A loopback port free now, and with ``run`` > 1 the ``run - 1`` ports after it too (a
    producer supervisor's children listen on the ports after its own). The kernel's pick is tried
    ``attempts`` times before giving up: a crowded port range must not spin forever."""
    if not 1 <= run <= 1000:
        raise ValueError(f"run of {run} ports: 1 to 1000")
    for _ in range(attempts):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if all(_bindable(port + i) for i in range(1, run)):
            return port
    raise OSError(f"no run of {run} free loopback ports found in {attempts} tries")


def _bindable(port: int) -> bool:
    if port > 65535:
        return False
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


@dataclass
class KafkaNode:
    """One KRaft node (controller and broker in one process)."""

    node_id: int
    port: int
    controller_port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"


def _storage_tool(cmd: list[str]) -> str:
    """Run Kafka's StorageTool; its own words on a failure (an old Java, bad properties), not only an exit status."""
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()[-20:]
        hint = " (Kafka 4 needs Java 17+: `java -version`)" if "UnsupportedClassVersion" in (done.stderr or "") else ""
        raise RuntimeError(f"{' '.join(cmd[-4:])} failed (exit {done.returncode}){hint}:\n" + "\n".join(said))
    return done.stdout.strip() or uuid.uuid4().hex


@dataclass
class KafkaCluster:
    """``size`` nodes in one quorum on loopback; ``bootstrap`` lists them for clients."""

    base_dir: Path
    size: int = 1
    ports: list[int] = field(default_factory=list)
    version: str = KAFKA_VERSION
    heap: str = "512m"
    nodes: list[KafkaNode] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    @property
    def url(self) -> str:
        """The form Faust and ROADWATCH_KAFKA_URL take."""
        return ";".join(f"kafka://127.0.0.1:{n.port}" for n in self.nodes)

    def _java(self, libs: Path) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise RuntimeError("Java 17+ is needed to run the Kafka broker: apt-get install openjdk-17-jre-headless")
        log4j = libs.parent / "log4j2.properties"
        return [
            java,
            f"-Xmx{self.heap}",
            f"-Xms{self.heap}",
            "-XX:+UseG1GC",
            "-XX:TieredStopAtLevel=1",
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            f"{libs}/*",
        ]

    def _properties(self, node: KafkaNode, voters: str) -> str:
        rf = min(3, self.size)
        return "\n".join(
            [
                "process.roles=broker,controller",
                f"node.id={node.node_id}",
                f"controller.quorum.voters={voters}",
                f"listeners=PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{node.port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
                f"log.dirs={node.data_dir / 'log'}",
                f"offsets.topic.replication.factor={rf}",
                "offsets.topic.num.partitions=8",
                f"transaction.state.log.replication.factor={rf}",
                f"transaction.state.log.min.isr={min(2, rf)}",
                f"default.replication.factor={rf}",
                f"min.insync.replicas={min(2, rf)}",
                "num.partitions=8",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=true",
                "log.retention.hours=6",
                "log.segment.bytes=67108864",
                "num.network.threads=2",
                "num.io.threads=2",
                "background.threads=2",
                "log.cleaner.threads=1",
                "",
            ]
        )

    def start(self, timeout_s: float = 60.0) -> KafkaCluster:
        """Format the log dirs and start every node; returns when all answer."""
        libs = libs_dir(self.version)
        java = self._java(libs)
        ports = self.ports or [free_port() for _ in range(self.size)]
        self.nodes = [
            KafkaNode(i + 1, ports[i], free_port(), self.base_dir / f"node-{i + 1}") for i in range(self.size)
        ]
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        cluster_id = _storage_tool([*java, "kafka.tools.StorageTool", "random-uuid"]).splitlines()[-1]
        for node in self.nodes:
            if node.data_dir.exists():
                shutil.rmtree(node.data_dir)
            node.data_dir.mkdir(parents=True)
            props = node.data_dir / "server.properties"
            props.write_text(self._properties(node, voters))
            _storage_tool([*java, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)])
        try:
            for node in self.nodes:
                self.start_node(node)
            deadline = time.monotonic() + timeout_s
            for node in self.nodes:
                self._wait(node, deadline)
        except BaseException:
            self.stop(timeout_s=5.0)  # a node that did not come up must not leave the others running
            raise
        return self

    def start_node(self, node: KafkaNode) -> None:
        """Start (or restart) one node on its existing log dir."""
        java = self._java(libs_dir(self.version))
        log = open(node.log_file, "ab")
        node.process = subprocess.Popen(
            [*java, "kafka.Kafka", str(node.data_dir / "server.properties")],
            stdout=log,
            stderr=subprocess.STDOUT,
            # its own group (a Ctrl-C meant for the test run or the stack does not reach it half
            # way), but it goes when its starter goes, however that ends (SIGKILL included)
            start_new_session=True,
            preexec_fn=_end_with_parent(),
        )

    def _wait(self, node: KafkaNode, deadline: float) -> None:
        while time.monotonic() < deadline:
            if node.process is not None and node.process.poll() is not None:
                raise RuntimeError(
                    f"Kafka node {node.node_id} exited; see {node.log_file}:\n" + node.log_file.read_text()[-3000:]
                )
            if port_open(node.port) and b"Kafka Server started" in node.log_file.read_bytes():
                return
            time.sleep(0.2)
        raise TimeoutError(f"Kafka node {node.node_id} did not start in time; see {node.log_file}")

    def kill_node(self, index: int, sig: int = signal.SIGKILL) -> None:
        node = self.nodes[index]
        if node.process is not None and node.process.poll() is None:
            node.process.send_signal(sig)
            node.process.wait(30)

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM every node, SIGKILL whatever is still alive after ``timeout_s``."""
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                node.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait(10)


def _end_with_parent() -> Callable[[], None]:
    """A ``preexec_fn``: SIGTERM the child when the process that started it dies (Linux).

    prctl is looked up here, in the parent: the child between fork and exec only calls it (no
    dlopen there, where another thread may have held the loader's lock at the fork).
    """
    parent = os.getpid()
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return lambda: None

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the call: nobody will signal
            os.kill(os.getpid(), signal.SIGTERM)

    return in_child


#: prctl(2) option: the signal the calling process gets when its parent dies.
PR_SET_PDEATHSIG = 1
#: ``python -m ops.kafka start`` stops its brokers within this (SIGKILL after it), inside the
#: 15 s that ``ops.procs.stop_group`` gives it before killing it.
FOREGROUND_STOP_S = 10.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ops.kafka", description="Apache Kafka on loopback.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch", help="fetch the broker jars into the cache")
    start = sub.add_parser("start", help="run brokers in the foreground until Ctrl-C")
    start.add_argument("--port", type=int, default=9092, help="first broker port")
    start.add_argument("--size", type=int, default=1, help="number of brokers")
    start.add_argument("--dir", type=Path, default=Path(".state/kafka"))
    args = parser.parse_args(argv)
    if args.cmd == "fetch":
        print(libs_dir())
        return
    cluster = KafkaCluster(args.dir, size=args.size, ports=[args.port + i for i in range(args.size)])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:  # under nohup a hang-up stays ignored
        signal.signal(signal.SIGHUP, lambda *_: sys.exit(0))
    try:
        cluster.start()  # stopped below even when it fails half way or is interrupted
        print(f"kafka: {cluster.url}  (bootstrap {cluster.bootstrap}); Ctrl-C stops", flush=True)
        while all(n.process is not None and n.process.poll() is None for n in cluster.nodes):
            time.sleep(0.5)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        cluster.stop(FOREGROUND_STOP_S)


if __name__ == "__main__":
    main()
