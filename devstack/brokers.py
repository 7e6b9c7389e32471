"""Native message brokers for the local stack: a real Apache Kafka broker (KRaft, single node) and a real
SQS-compatible endpoint (ElasticMQ), both plain JVM processes whose jars Maven fetches -- no Docker.

    python -m devstack.brokers up   --cache .devstack/cache --data .devstack/run
    python -m devstack.brokers down --data .devstack/run
    python -m devstack.brokers status --data .devstack/run

``install`` resolves ``devstack/maven/{kafka,elasticmq}/pom.xml`` into ``<cache>/<name>/lib`` (once); the start
functions launch detached JVMs (own session, so ``down`` can signal the whole process group) that write their
output to ``<data>/<name>.log`` and their PID to ``<data>/<name>.pid``.

Stdlib only, except ``confluent_kafka`` (imported lazily) for the readiness check and topic creation.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAVEN_DIR = HERE / "maven"
ELASTICMQ_CONF = HERE / "elasticmq.conf"

KAFKA_PORT = 9092
KAFKA_CONTROLLER_PORT = 9093
SQS_PORT = 9324
HOST = "127.0.0.1"

# Topics the pipeline uses: name -> partitions (replication factor is always 1 on a single node).
# Six partitions: readings are keyed by device, so order holds per device whatever the partition count; more than
# one partition per consumer keeps the offset watermark honest per partition (docker-compose.override.yml: the same).
TOPICS: dict[str, int] = {"iot-readings": 6, "iot-alerts": 6, "iot-readings-dlq": 1}

KAFKA_MAIN = "kafka.Kafka"
KAFKA_STORAGE_TOOL = "kafka.tools.StorageTool"  # what bin/kafka-storage.sh runs in Kafka 4.x
ELASTICMQ_MAIN = "org.elasticmq.server.Main"

KAFKA_HEAP = ["-Xms128m", "-Xmx512m"]
ELASTICMQ_HEAP = ["-Xms64m", "-Xmx256m"]
# The emulator shares this machine's cores with Airflow: the C1 compiler only and the serial collector
ELASTICMQ_JVM_FLAGS = ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]
# The JVM flags Kafka's own kafka-run-class.sh uses, minus GC logging.
KAFKA_JVM_FLAGS = [
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
]

_KAFKA_LOG4J2 = """\
# Written by devstack/brokers.py: Kafka's log goes to stdout, which the runner sends to kafka.log.
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = INFO
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


class BrokerError(RuntimeError):
    """A broker could not be installed, started or reached; the message says where to look."""


# --------------------------------------------------------------------------------------------------- install


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if not java:
        raise BrokerError("`java` (17 or newer) is not on PATH and JAVA_HOME is not set")
    return java


def _mvn() -> str:
    mvn = shutil.which("mvn")
    if not mvn:
        raise BrokerError("`mvn` (Maven 3) is not on PATH: it is needed once to fetch the broker jars")
    return mvn


def lib_dir(cache_dir: Path, name: str) -> Path:
    return Path(cache_dir) / name / "lib"


def _pom(name: str) -> Path:
    return MAVEN_DIR / name / "pom.xml"


def _pom_digest(name: str) -> str:
    return hashlib.sha256(_pom(name).read_bytes()).hexdigest()


def _installed(cache_dir: Path, name: str) -> bool:
    """Jars are there and were resolved from the current pom (a version bump in the pom re-installs)."""
    lib = lib_dir(cache_dir, name)
    stamp = Path(cache_dir) / name / "pom.sha256"
    if not lib.is_dir() or not any(lib.glob("*.jar")):
        return False
    # A lib dir without a stamp (filled by hand or by an older runner) is taken as it is.
    return not stamp.exists() or stamp.read_text().strip() == _pom_digest(name)


def install_one(cache_dir: Path, name: str) -> bool:
    """Fetch one broker's jars into ``<cache>/<name>/lib``; ``False`` if they were already there."""
    cache_dir = Path(cache_dir).resolve()  # mvn takes a relative outputDirectory from the pom's folder
    if _installed(cache_dir, name):
        return False
    lib = lib_dir(cache_dir, name)
    tmp = lib.with_name(f"lib.partial-{os.getpid()}")  # per process: two concurrent installs do not mix
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        _mvn(), "-q", "-B", "-Dstyle.color=never",
        "dependency:copy-dependencies", f"-DoutputDirectory={tmp}", "-DincludeScope=runtime",
        "-f", str(_pom(name)),
    ]  # fmt: skip
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    if proc.returncode != 0 or not any(tmp.glob("*.jar")):
        shutil.rmtree(tmp, ignore_errors=True)
        lines = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout).strip().splitlines()
        boilerplate = ("[Help", "To see the full stack trace", "Re-run Maven", "For more information")
        errors = [ln for ln in lines if ln.startswith("[ERROR] ") and ln[8:].strip()
                  and not ln[8:].startswith(boilerplate)]  # fmt: skip
        tail = "\n".join(errors[:10] or lines[-30:])
        raise BrokerError(f"installing {name} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    # Swap in whole, so an interrupted install never leaves a half-filled lib dir that looks installed.
    if lib.exists() and not _installed(cache_dir, name):
        shutil.rmtree(lib, ignore_errors=True)  # empty, or resolved from an older pom
    try:
        tmp.rename(lib)
    except OSError:  # another process installed it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
        if not any(lib.glob("*.jar")):
            raise
    (cache_dir / name / "pom.sha256").write_text(_pom_digest(name) + "\n")
    return True


def install(cache_dir: Path) -> None:
    """Fetch the Kafka and ElasticMQ jars (Maven Central, via ``mvn``) unless already there. Idempotent."""
    for name in ("kafka", "elasticmq"):
        install_one(Path(cache_dir), name)


# --------------------------------------------------------------------------------------------------- processes


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(Path(pid_file).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _alive(pid: int) -> bool:
    # Reap it first if it is our own child (otherwise a dead child lingers as a zombie and looks alive).
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return "Z" not in line.split()[1]
    except OSError:
        pass
    return True


def running_pid(pid_file: Path) -> int | None:
    """PID recorded in ``pid_file`` if that process is still running, else ``None``."""
    pid = _read_pid(pid_file)
    return pid if pid is not None and _alive(pid) else None


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _spawn(cmd: list[str], log_path: Path, pid_file: Path, cwd: Path) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: survives the caller, stopped with killpg
            close_fds=True,
        )
    pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def _check_free(name: str, *ports: int) -> None:
    busy = [p for p in ports if _port_open(HOST, p)]
    if busy:
        raise BrokerError(f"cannot start {name}: port(s) {busy} on {HOST} already in use by another process")


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def kafka_properties(data_dir: Path, port: int = KAFKA_PORT, controller_port: int = KAFKA_CONTROLLER_PORT) -> str:
    """server.properties of a single combined broker+controller node (KRaft)."""
    props: Mapping[str, object] = {
        "process.roles": "broker,controller",
        "node.id": 1,
        "controller.quorum.voters": f"1@{HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(Path(data_dir).resolve() / "kafka-logs"),
        "num.partitions": 1,
        "default.replication.factor": 1,
        "min.insync.replicas": 1,
        "offsets.topic.replication.factor": 1,
        # One partition of __consumer_offsets: its coordinator is loaded by warm_group_coordinator at start, not by
        # the first commit of a run (which then waited ~8 s for "coordinator load in progress").
        "offsets.topic.num.partitions": 1,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.num.partitions": 1,  # idempotent producers' coordinator: warmed at start too
        "transaction.state.log.min.isr": 1,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        "auto.create.topics.enable": "false",
        "group.initial.rebalance.delay.ms": 0,
        "num.network.threads": 2,
        "num.io.threads": 4,
        "num.recovery.threads.per.data.dir": 1,
        "log.retention.hours": 168,
        "log.segment.bytes": 64 * 1024 * 1024,
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def _random_cluster_id() -> str:
    # Same format as `kafka-storage.sh random-uuid`: 16 random bytes, URL-safe base64 without padding.
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


def _prepare(cache_dir: Path, data_dir: Path, name: str) -> tuple[Path, Path, Path, Path, int | None]:
    """(data dir, PID file, log, jar folder, PID if ``name`` already runs) for starting one broker."""
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    lib = lib_dir(cache_dir, name).resolve()
    pid = running_pid(data_dir / f"{name}.pid")
    if pid is None and not any(lib.glob("*.jar")):
        raise BrokerError(f"no {name} jars in {lib}: run install() first")
    return data_dir, data_dir / f"{name}.pid", data_dir / f"{name}.log", lib, pid


def start_kafka(
    cache_dir: Path, data_dir: Path, port: int = KAFKA_PORT, controller_port: int = KAFKA_CONTROLLER_PORT
) -> int:
    """Start the KRaft broker+controller detached; returns its PID (the running one if already started)."""
    data_dir, pid_file, log_path, lib, pid = _prepare(cache_dir, data_dir, "kafka")
    if pid is not None:
        return pid
    _check_free("kafka", port, controller_port)

    config = data_dir / "server.properties"
    config.write_text(kafka_properties(data_dir, port, controller_port))
    log4j = data_dir / "kafka-log4j2.properties"
    log4j.write_text(_KAFKA_LOG4J2)
    java = [_java(), f"-Dlog4j2.configurationFile={log4j}", f"-Dkafka.logs.dir={data_dir}", "-cp", f"{lib}/*"]

    if not (data_dir / "kafka-logs" / "meta.properties").exists():
        fmt = [*java, "-Xmx256m", KAFKA_STORAGE_TOOL, "format", "--ignore-formatted",
               f"--cluster-id={_random_cluster_id()}", "-c", str(config)]  # "=": an id may start with "-"
        proc = subprocess.run(fmt, cwd=data_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        with open(log_path, "a") as log:
            log.write(proc.stdout)
        if proc.returncode != 0:
            raise BrokerError(f"formatting Kafka storage failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}")

    cmd = [*java[:1], *KAFKA_HEAP, *KAFKA_JVM_FLAGS, *java[1:], KAFKA_MAIN, str(config)]
    return _spawn(cmd, log_path, pid_file, data_dir)


# ElasticMQ's REST servers (its bundled application.conf binds both to 0.0.0.0 unless a config says otherwise).
ELASTICMQ_SERVERS = ("rest-sqs", "rest-stats")
LOOPBACK_CONF_NAME = "elasticmq.loopback.conf"  # the copy ElasticMQ runs, in the data folder
# A bind-hostname assignment anywhere: inside a block, inline (``{ a = 1, bind-hostname = "x" }``) or as a path.
_BIND_HOSTNAME = re.compile(r'(?P<key>\bbind-hostname[ \t]*[=:][ \t]*)(?P<value>"[^"\n]*"|[^\s#,}"]+)')


def _mask_comments(text: str) -> str:
    """``text`` with HOCON comments blanked out (same length, so offsets still match the original)."""
    return re.sub(r'"[^"\n]*"|(?:#|//)[^\n]*',
                  lambda m: m.group() if m.group().startswith('"') else " " * len(m.group()), text)


def elasticmq_bind_hostnames(text: str) -> dict[str, list[str]]:
    """Every ``bind-hostname`` value an ElasticMQ HOCON text assigns to each of ELASTICMQ_SERVERS, in order
    (the last one wins); an assignment outside their blocks is listed under ``"?"``."""
    masked = _mask_comments(text)
    found: dict[str, list[str]] = {}
    for match in _BIND_HOSTNAME.finditer(masked):
        head = masked[: match.start()]
        path = re.search(r"([\w-]+)\.$", head)  # rest-sqs.bind-hostname = ...
        if path:
            server = path.group(1)
        else:  # the innermost block still open before the key
            depth, server = 0, "?"
            for opener in reversed(list(re.finditer(r'[{}]|"?([\w-]+)"?[ \t]*[=:]?[ \t]*\{', head))):
                if opener.group() == "}":
                    depth += 1
                elif depth:
                    depth -= 1
                else:
                    server = opener.group(1) or "?"
                    break
        found.setdefault(server, []).append(match.group("value").strip('"'))
    return found


def loopback_elasticmq_conf(conf_path: Path, data_dir: Path, host: str = HOST) -> Path:
    """Write ``<data_dir>/elasticmq.loopback.conf``: ``conf_path`` with its REST servers bound to ``host`` only.

    ``devstack/elasticmq.conf`` binds 0.0.0.0, right inside the ``sqs`` container of docker-compose.override.yml
    (Docker publishes the port on the host's loopback) but, run natively, it would open the queues to the network.
    Every ``bind-hostname`` is substituted, and a final ``<server>.bind-hostname`` per server (later HOCON keys win)
    covers a config that leaves it to ElasticMQ's 0.0.0.0 default. Raises BrokerError unless the result binds
    every REST server to ``host`` and nothing else.
    """
    text = Path(conf_path).read_text()
    masked = _mask_comments(text)
    parts, pos = [], 0
    for match in _BIND_HOSTNAME.finditer(masked):
        parts += [text[pos : match.start("value")], f'"{host}"']
        pos = match.end("value")
    substituted = len(parts) // 2
    derived = (
        f"# Written by devstack/brokers.py from {Path(conf_path).resolve()}: {substituted} bind-hostname(s) set to"
        f" {host}.\n" + "".join([*parts, text[pos:]])
        + "\n# ---- devstack/brokers.py: the native stack listens on the loopback interface only\n"
        + "".join(f'{server}.bind-hostname = "{host}"\n' for server in ELASTICMQ_SERVERS)
    )
    binds = elasticmq_bind_hostnames(derived)
    wrong = {server: values for server, values in binds.items() if set(values) != {host}}
    if wrong or any(binds.get(server, [None])[-1] != host for server in ELASTICMQ_SERVERS):
        raise BrokerError(f"could not bind ElasticMQ to {host} only: {binds} in the copy of {conf_path}")
    target = Path(data_dir) / LOOPBACK_CONF_NAME
    target.write_text(derived)
    return target


def start_elasticmq(cache_dir: Path, data_dir: Path, conf_path: Path = ELASTICMQ_CONF, port: int = SQS_PORT) -> int:
    """Start ElasticMQ detached with ``conf_path`` (HOCON; it must bind ``port``); returns its PID.

    ElasticMQ runs a copy of ``conf_path`` in ``data_dir`` whose REST servers bind HOST only
    (``loopback_elasticmq_conf``).
    """
    data_dir, pid_file, log_path, lib, pid = _prepare(cache_dir, data_dir, "elasticmq")
    if pid is not None:
        return pid
    conf_path = Path(conf_path).resolve()
    if not conf_path.is_file():
        raise BrokerError(f"ElasticMQ config {conf_path} not found")
    _check_free("elasticmq", port)
    conf_path = loopback_elasticmq_conf(conf_path, data_dir)
    cmd = [_java(), f"-Dconfig.file={conf_path}", *ELASTICMQ_HEAP, *ELASTICMQ_JVM_FLAGS, "-cp", f"{lib}/*", ELASTICMQ_MAIN]
    return _spawn(cmd, log_path, pid_file, data_dir)


def _cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def stop_pid(pid_file: Path, timeout: float = 20, expect: str | None = None) -> bool:
    """SIGTERM the process group recorded in ``pid_file``, SIGKILL it after ``timeout`` s, remove the file.

    Safe when the file or the process is gone. With ``expect``, a process whose command line lacks that text is
    taken for an unrelated one that reused a stale PID, and left alone. Returns ``True`` if it stopped a process.
    """
    pid_file = Path(pid_file)
    pid = _read_pid(pid_file)
    stopped = False
    if pid is not None and expect is not None and expect not in (_cmdline(pid) or expect):
        pid = None
    if pid is not None and _alive(pid):
        try:
            # Our JVMs lead their own group (start_new_session); anything else gets only the PID signalled.
            group = os.getpgid(pid) == pid
        except ProcessLookupError:
            group = False

        def _signal(sig: int) -> None:
            try:
                os.killpg(pid, sig) if group else os.kill(pid, sig)
            except ProcessLookupError:
                pass

        _signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            _signal(signal.SIGKILL)
            deadline = time.monotonic() + 5
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        stopped = True
    pid_file.unlink(missing_ok=True)
    return stopped


# --------------------------------------------------------------------------------------------------- readiness


def wait_for_port(host: str, port: int, timeout: float, pid: int | None = None) -> None:
    """Block until ``host:port`` accepts TCP connections; fail early if process ``pid`` dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _port_open(host, port):
            return
        if pid is not None and not _alive(pid):
            raise BrokerError(f"process {pid} exited before {host}:{port} opened")
        time.sleep(0.2)
    raise BrokerError(f"{host}:{port} did not open within {timeout:.0f}s")


def _admin(bootstrap: str):
    from confluent_kafka.admin import AdminClient

    # log_level 2 (critical): no connection-refused chatter on stderr while the broker comes up.
    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 2, "socket.connection.setup.timeout.ms": 2000})


def wait_kafka_ready(bootstrap: str, timeout: float) -> None:
    """Block until the broker answers a metadata request (``AdminClient.list_topics``)."""
    deadline = time.monotonic() + timeout
    admin = _admin(bootstrap)
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            md = admin.list_topics(timeout=min(5.0, max(0.5, deadline - time.monotonic())))
            if md.brokers:
                return
        except Exception as exc:  # KafkaException while the broker is starting
            last = exc
        time.sleep(0.2)
    raise BrokerError(f"Kafka at {bootstrap} not ready within {timeout:.0f}s (last error: {last})")


def elasticmq_queue_names(conf_path: Path) -> list[str]:
    """Names of the queues an ElasticMQ HOCON config declares (the keys directly inside ``queues { }``).

    Best effort, enough for readiness checks: comments are dropped, nested objects skipped.
    """
    text = "\n".join(line.split("#", 1)[0].split("//", 1)[0] for line in Path(conf_path).read_text().splitlines())
    names: list[str] = []
    for match in re.finditer(r"(?m)^\s*queues\s*=?\s*\{", text):
        depth, i = 1, match.end()
        while i < len(text) and depth:
            if depth == 1:
                key = re.match(r"\s*\"?([A-Za-z0-9_.-]+)\"?\s*=?\s*\{", text[i:])
                if key:
                    names.append(key.group(1))
                    i += key.end()
                    depth += 1
                    continue
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
    return list(dict.fromkeys(names))


def wait_sqs_ready(endpoint: str, timeout: float, queues: Iterable[str] = ()) -> None:
    """Block until the SQS endpoint answers ``ListQueues`` and every queue in ``queues`` exists.

    ElasticMQ opens its port before it has created the queues of its config, so pass them to wait for them too.
    """
    deadline = time.monotonic() + timeout
    wanted = list(queues)
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{endpoint}/?Action=ListQueues", timeout=2) as resp:
                body = resp.read().decode(errors="replace")
            missing = [q for q in wanted if not re.search(rf"/{re.escape(q)}</QueueUrl>", body)]
            if not missing:
                return
            last = f"queues not created yet: {missing}"
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.2)
    raise BrokerError(f"SQS at {endpoint} not ready within {timeout:.0f}s (last: {last})")


WARM_UP_TOPIC = "devstack-warm-up"


def warm_group_coordinator(bootstrap: str, timeout: float) -> None:
    """Commit one offset for a throwaway group, retrying until it succeeds, and produce one record with an
    idempotent producer to ``WARM_UP_TOPIC``: that creates ``__consumer_offsets`` and ``__transaction_state`` and
    loads their coordinators, which a fresh broker does on the first commit and the first idempotent producer
    ("coordinator load in progress", several seconds)."""
    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

    create_topics(bootstrap, {WARM_UP_TOPIC: 1})
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "log_level": 2})
    producer.produce(WARM_UP_TOPIC, b"warm-up")
    if producer.flush(timeout):
        raise BrokerError(f"Kafka did not acknowledge a warm-up record within {timeout:.0f}s")

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "devstack-warm-up", "enable.auto.commit": False,
                         "log_level": 2})
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                consumer.commit(offsets=[TopicPartition(WARM_UP_TOPIC, 0, 1)], asynchronous=False)
                return
            except KafkaException as exc:
                if time.monotonic() > deadline:
                    raise BrokerError(f"Kafka's group coordinator not ready within {timeout:.0f}s: {exc}") from exc
                time.sleep(0.2)
    finally:
        consumer.close()


def create_topics(bootstrap: str, topics: Mapping[str, int] = TOPICS, timeout: float = 30) -> list[str]:
    """Create ``{name: partitions}`` with replication factor 1; existing topics are left as they are.

    Returns the names actually created. Waits until every topic is visible in the broker's metadata.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic

    admin = _admin(bootstrap)
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [NewTopic(name, num_partitions=n, replication_factor=1) for name, n in topics.items() if name not in existing]
    created: list[str] = []
    if wanted:
        for name, fut in admin.create_topics(wanted, operation_timeout=timeout, request_timeout=timeout).items():
            try:
                fut.result()
                created.append(name)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
    deadline = time.monotonic() + timeout
    while True:
        md = admin.list_topics(timeout=timeout)
        ready = all(
            name in md.topics and md.topics[name].error is None and len(md.topics[name].partitions) >= 1
            for name in topics
        )
        if ready:
            return created
        if time.monotonic() > deadline:
            raise BrokerError(f"topics {sorted(topics)} not all visible after {timeout:.0f}s")
        time.sleep(0.2)


def rss_kib(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB (``VmRSS`` of /proc/<pid>/status)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------------------------------- CLI


def up(
    cache_dir: Path,
    data_dir: Path,
    conf_path: Path = ELASTICMQ_CONF,
    kafka_port: int = KAFKA_PORT,
    controller_port: int = KAFKA_CONTROLLER_PORT,
    sqs_port: int = SQS_PORT,
    timeout: float = 120,
) -> dict[str, str]:
    """Install, start both brokers, wait until they answer, create the topics; returns the endpoints.

    On failure, whatever this call started is stopped again and the error carries the log's tail.
    """
    data_dir = Path(data_dir).resolve()
    install(cache_dir)
    bootstrap, sqs = f"{HOST}:{kafka_port}", f"http://{HOST}:{sqs_port}"
    started: list[Path] = []
    try:
        for name, start in (
            ("kafka", lambda: start_kafka(cache_dir, data_dir, kafka_port, controller_port)),
            ("elasticmq", lambda: start_elasticmq(cache_dir, data_dir, conf_path, sqs_port)),
        ):
            pid_file = data_dir / f"{name}.pid"
            if running_pid(pid_file) is None:
                started.append(pid_file)
            start()
        for name, port, ready in (
            ("kafka", kafka_port, lambda t: wait_kafka_ready(bootstrap, t)),
            ("elasticmq", sqs_port, lambda t: wait_sqs_ready(sqs, t, elasticmq_queue_names(conf_path))),
        ):
            try:
                wait_for_port(HOST, port, timeout, pid=_read_pid(data_dir / f"{name}.pid"))
                ready(timeout)
            except BrokerError as exc:
                raise BrokerError(f"{exc}\n--- {data_dir / f'{name}.log'} (tail) ---\n{log_tail(data_dir / f'{name}.log')}") from exc
        create_topics(bootstrap, TOPICS)
        warm_group_coordinator(bootstrap, timeout)
    except BaseException:
        for pid_file in started:
            stop_pid(pid_file)
        raise
    return {"kafka": bootstrap, "sqs": sqs}


_MAIN_CLASS = {"kafka": KAFKA_MAIN, "elasticmq": ELASTICMQ_MAIN}


def down(data_dir: Path, timeout: float = 20) -> None:
    """Stop both brokers (ElasticMQ first, then Kafka, which shuts down cleanly in about a second)."""
    for name in ("elasticmq", "kafka"):
        stop_pid(Path(data_dir) / f"{name}.pid", timeout, expect=_MAIN_CLASS[name])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.brokers", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="install (once), start Kafka and ElasticMQ, create topics")
    p_up.add_argument("--cache", type=Path, default=Path(".devstack/cache"))
    p_up.add_argument("--data", type=Path, default=Path(".devstack/run"))
    p_up.add_argument("--elasticmq-conf", type=Path, default=ELASTICMQ_CONF)
    p_up.add_argument("--kafka-port", type=int, default=KAFKA_PORT)
    p_up.add_argument("--controller-port", type=int, default=KAFKA_CONTROLLER_PORT)
    p_up.add_argument("--sqs-port", type=int, default=SQS_PORT, help="must match the port the ElasticMQ conf binds")
    p_up.add_argument("--timeout", type=float, default=120)
    p_install = sub.add_parser("install", help="only fetch the jars")
    p_install.add_argument("--cache", type=Path, default=Path(".devstack/cache"))
    p_down = sub.add_parser("down", help="stop both brokers")
    p_down.add_argument("--data", type=Path, default=Path(".devstack/run"))
    p_status = sub.add_parser("status", help="print PID and RSS of each broker")
    p_status.add_argument("--data", type=Path, default=Path(".devstack/run"))
    args = parser.parse_args(argv)

    try:
        if args.command == "install":
            install(args.cache)
        elif args.command == "up":
            endpoints = up(
                args.cache, args.data, args.elasticmq_conf,
                args.kafka_port, args.controller_port, args.sqs_port, args.timeout,
            )  # fmt: skip
            print(f"kafka {endpoints['kafka']}")
            print(f"sqs {endpoints['sqs']}")
        elif args.command == "down":
            down(args.data)
        elif args.command == "status":
            code = 0
            for name in ("kafka", "elasticmq"):
                pid = running_pid(args.data / f"{name}.pid")
                if pid is None:
                    code = 3
                    print(f"{name} stopped")
                else:
                    print(f"{name} running pid={pid} rss={rss_kib(pid)}KiB")
            return code
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
