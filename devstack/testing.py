"""Helpers for tests that run against a real native stack (tests/stack/e2e, tests/stack/faults): start/stop it in its own state
folder, drive its components through the CLI (so the test process never shares state with the stack's), and read
what the pipelines did."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from devstack import pipelines, postgres, publish, redis, summary

ROOT = Path(__file__).resolve().parents[1]
PORTS = (9092, 9093, 9324, 9325, 8080)


class Stack:
    def __init__(self, home: Path, db: str | None = None, env: dict[str, str] | None = None) -> None:
        db = db or os.environ.get("DEVSTACK_DB", "sqlite")
        self.env = {**os.environ, "DEVSTACK_HOME": str(home), "DEVSTACK_CACHE": str(ROOT / ".devstack" / "cache"),
                    "DEVSTACK_DB": db, **(env or {})}
        self.info: dict[str, Any] = {}
        self.seen: dict[str, dict] = {}  # replies and dead letters already read off their queues

    def cli(self, *args: str, timeout: float = 600, capture: bool = False) -> str:
        out = subprocess.run([sys.executable, "-m", "devstack.stack", *args], cwd=ROOT, env=self.env, check=True,
                             timeout=timeout, capture_output=capture, text=True)
        return out.stdout if capture else ""

    def up(self) -> None:
        self.cli("up")
        self.info = json.loads(self.cli("env-json", capture=True))

    def down(self) -> None:
        subprocess.run([sys.executable, "-m", "devstack.stack", "down"], cwd=ROOT, env=self.env, timeout=180)

    def airflow(self, *args: str) -> str:
        exe = str(Path(sys.executable).parent / "airflow")
        return subprocess.run([exe, *args], cwd=ROOT, env={**self.env, **self.info}, check=True,
                              capture_output=True, text=True, timeout=120).stdout

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Call Airflow's REST API (simple auth manager: any user is admin; the token is fetched first)."""
        import urllib.request

        base = f"http://127.0.0.1:{self.info.get('AIRFLOW__API__PORT', '8080')}"
        with urllib.request.urlopen(f"{base}/auth/token", timeout=30) as resp:  # GET: the all-admins token
            token = json.loads(resp.read())["access_token"]
        req = urllib.request.Request(f"{base}{path}", method=method, data=json.dumps(body or {}).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read() or b"null")

    # --- where things are ---
    @property
    def events_url(self) -> str:
        return f"sqlite:///{Path(self.info['DEVSTACK_DATA']) / 'events.db'}"

    @property
    def target(self) -> publish.SqsTarget:
        return publish.SqsTarget(self.info["SQS_ENDPOINT_URL"], self.info["SQS_QUEUE_URL_PREFIX"], "us-east-1")

    @property
    def bootstrap(self) -> str:
        return self.info["KAFKA_BOOTSTRAP"]

    def sqs(self) -> Any:
        return publish.make_sqs_client(self.info["SQS_ENDPOINT_URL"], "us-east-1")

    def queue_depth(self, queue: str) -> int:
        attrs = self.sqs().get_queue_attributes(
            QueueUrl=f"{self.info['SQS_QUEUE_URL_PREFIX']}/{queue}",
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])

    def kafka_offsets(self, topic: str, group: str | None = None) -> dict[int, tuple[int, int]]:
        """partition -> (the consumer group's committed offset, or -1; the end of the partition). The group is the
        IoT watcher's unless given."""
        from confluent_kafka import Consumer, TopicPartition

        from include.iot_alerting.settings import IOT_KAFKA_GROUP_ID

        group = group or IOT_KAFKA_GROUP_ID
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group,
                             "enable.auto.commit": False})
        try:
            parts = [TopicPartition(topic, p) for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions]
            committed = consumer.committed(parts, timeout=30)
            return {tp.partition: (tp.offset, consumer.get_watermark_offsets(tp, timeout=10)[1]) for tp in committed}
        finally:
            consumer.close()

    def collect(self, records: list[dict[str, Any]], timeout: float = 240, until_finished: bool = True) -> summary.Report:
        reports = summary.collect(
            records, self.info["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], self.events_url, bootstrap=self.bootstrap,
            sqs=self.sqs() if any(pipelines.get(r["pipeline"]).broker == "sqs" for r in records) else None,
            queue_url_prefix=self.info["SQS_QUEUE_URL_PREFIX"], timeout=timeout,
            until_finished=until_finished, seen=self.seen,
        )
        print(summary.render(reports))
        [report] = reports.values()
        return report

    def deliveries(self, dag_id: str, message_ids: set[str]) -> Counter:
        """How many asset events carried each of these messages (1 = delivered once; more = redelivered)."""
        _, counts = summary.timeline(self.info["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], dag_id)
        return Counter({m: n for m, n in counts.items() if m in message_ids})


def unavailable_reason(db: str | None = None, profile: str | None = None) -> str | None:
    profile = profile or os.environ.get("DEVSTACK_PROFILE", "default")
    db = "postgres" if profile == "ha" else db or os.environ.get("DEVSTACK_DB", "sqlite")  # as devstack.stack does
    if not (shutil.which("java") and shutil.which("mvn")):
        return "java and mvn are needed to run the real brokers (apt-get install default-jdk-headless maven)"
    if db == "postgres" and postgres.unavailable_reason():
        return postgres.unavailable_reason()
    if profile == "ha" and redis.unavailable_reason():
        return redis.unavailable_reason()
    taken = []
    for port in PORTS + ((postgres.PORT,) if db == "postgres" else ()) + ((redis.PORT,) if profile == "ha" else ()):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                taken.append(port)
    if taken:
        return f"ports {taken} are in use (a stack from `make up` is running? `make down` first)"
    return None


def in_background(fn, *args, **kwargs) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``fn(*args, **kwargs)`` in a thread (a publisher while a test breaks something); ``result`` joins it."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # re-raised by result()
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def result(thread: threading.Thread, box: dict[str, Any]) -> Any:
    """What ``in_background``'s function returned, once it has; its exception, if it raised one."""
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def wait_for(check, timeout: float, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)
