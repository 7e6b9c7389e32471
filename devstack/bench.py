"""``make bench``: publish -> run start -> effect, and throughput, on the real local stack, guide settings vs this
project's.

For each metadata database (``--db``: SQLite, the embedded default; PostgreSQL, what ``astro dev start`` runs) and
each settings (``guide``: ``MessageQueueTrigger`` with the provider's defaults, as in Astronomer's guide;
``shared``: Airflow 3.3's own shared-stream ``KafkaSharedStreamTrigger``, ack mode, Kafka only: no SQS one has
shipped; ``project``: this project's streaming triggers) a fresh native stack is started, and for each broker (SQS
through ``inference_execution``, Kafka through ``iot_alerting``) workloads are published by long-lived clients:

* ``latency``: single messages into a system at rest (each one after the previous one's run finished, at a random
  phase);
* ``burst``: ``1000 x scale`` messages at once; ``max_s`` is first publish -> last run finished;
* ``sustained``: a steady rate (SQS 375/s, Kafka 1,250/s: 1.25 x the targets; ``--rate``) for 20 s;
* ``mixed``: ``make demo``'s traffic, the three pipelines at once (one row per pipeline; not with ``shared``);
* fault rows, Kafka: ``kill-triggerer`` (readings at 100/s for 6 s; the triggerer is killed with ``kill -9`` 2 s in
  and started again 2 s later) and ``fails-for-good`` (20 readings; every attempt fails before storing anything
  until a run has failed for good): what reached the sink (``iot_readings``) within 240 s, what did not (``lost``),
  and what was delivered twice.

Per message: publish -> asset event -> run queued -> run started -> first task started -> effect, from Airflow's own
records (``asset_event.timestamp``, ``dag_run``, ``task_instance``) and the publisher's timestamps. The effect is
the reply received by a client listening on the reply queue (inference; also when SQS stamped it sent), else the
end of the run (every pipeline acknowledges in its last task, after its sink write). Rates: into asset events, and
into effects (messages with their effect / first publish -> last effect). A message counts as ``lost`` if no run
processed it within the scenario's bounded wait (``timed_out``); ``duplicated`` counts extra deliveries (asset
events), ``reply_duplicates`` extra replies. Before the workloads, with the stack idle, the CPU of each Airflow
component is sampled (``--idle`` seconds); the DAG folder's parse time is measured once, in a fresh interpreter.

Writes ``bench/results.json`` (the rows) and ``bench/checks.json`` (parse times, idle CPU, machine) and prints both.
Bounded: every wait has a deadline; each stack is stopped at the end, whatever happens. The two Kafka fault rows
(``kill-triggerer``, ``fails-for-good``) run on a fresh stack of their own per database and settings, so that no
backlog an earlier row left behind is measured as the fault's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select

from devstack import demo, pipelines, publish
from devstack.stack import components
from devstack.summary import timeline
from devstack.testing import ROOT, Stack, unavailable_reason

DAG_OF = {"sqs": "inference_execution", "kafka": "iot_alerting"}
# What the DAGs' "+stream" schemes build in each settings (event_streams.queues): the stock provider triggers (the
# guide) or this project's streaming ones.
SCHEMES_OF = {"guide": {"EVENT_STREAMS_TRIGGERS": "stock"}, "shared": {"EVENT_STREAMS_TRIGGERS": "shared"},
              "project": {"EVENT_STREAMS_TRIGGERS": "stream"}}
SETTINGS = list(SCHEMES_OF)
SCENARIOS = ["latency", "burst", "sustained", "mixed", "kill-triggerer", "fails-for-good"]
FAULT_SCENARIOS = ["kill-triggerer", "fails-for-good"]  # Kafka only, each (db, settings) on a stack of its own
FAULT_WAIT_S = 240  # a run that fails for good: 4 attempts 10 s apart, then the re-read after 120 s standing still
SUSTAINED_RATE = {"sqs": 375, "kafka": 1250}  # 1.25 x the targets (300, 1,000): a rate we merely match says little
SUSTAINED_SECONDS = 20
LATENCY_RUN_WAIT_S = 90  # per message of the latency scenario (the guide's SQS trigger sleeps 60 s when idle)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(round(q * (len(values) - 1))))], 2)


def _published(records: list[dict[str, Any]]) -> dict[str, float]:
    return {r["message_id"]: datetime.fromisoformat(r["published_at"]).timestamp() for r in records}


def wait_finished(stack: Stack, dag_id: str, ids: set[str], wait: float) -> dict[str, dict[str, Any]]:
    """Poll Airflow's tables until every message's run finished or the wait runs out; the messages' timelines."""
    deadline = time.monotonic() + wait
    url = stack.info["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    while True:
        seen, deliveries = timeline(url, dag_id)
        done = [m for m in ids if seen.get(m, {}).get("state") in ("success", "failed")]
        if len(done) == len(ids) or time.monotonic() > deadline:
            return {"seen": seen, "deliveries": deliveries}
        time.sleep(1)


class ReplyListener:
    """Receives (and deletes) every reply on the inference reply queue in the background, as a client would:
    request id -> the times its replies arrived, and when SQS got the first one (its ``SentTimestamp``)."""

    def __init__(self, stack: Stack, threads: int = 2) -> None:
        self.url = f"{stack.info['SQS_QUEUE_URL_PREFIX']}/inference-replies"
        self.received: dict[str, list[float]] = defaultdict(list)
        self.sent: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(stack.sqs(),), daemon=True) for _ in range(threads)]

    def __enter__(self) -> ReplyListener:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)

    def _run(self, sqs: Any) -> None:
        while not self._stop.is_set():
            try:
                got = sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                          AttributeNames=["SentTimestamp"]).get("Messages", [])
                now = time.time()
                with self._lock:
                    for m in got:
                        rid = str(json.loads(m["Body"]).get("correlation_id"))
                        self.received[rid].append(now)
                        self.sent.setdefault(rid, int(m["Attributes"]["SentTimestamp"]) / 1000)
                if got:
                    sqs.delete_message_batch(QueueUrl=self.url, Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)])
            except Exception as exc:  # the broker is the stack's: report, keep listening
                print(f"  reply listener: {type(exc).__name__}: {exc}", flush=True)
                time.sleep(0.5)

    def wait(self, request_ids: set[str], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not request_ids <= self.received.keys():
            time.sleep(0.2)


def measure(stack: Stack, db: str, broker: str, records: list[dict[str, Any]], scenario: str, settings: str,
            wait: float, replies: ReplyListener | None = None, dag_id: str | None = None) -> dict[str, Any]:
    """One row: publish -> asset event -> run queued -> run started -> first task started -> effect, per message.
    The effect is the reply received by the client (inference, ``replies``), else the run finished: every
    pipeline acknowledges in its last task, after its sink write."""
    records = named(records, settings, broker)
    ids = {r["message_id"] for r in records}
    published = _published(records)
    state = wait_finished(stack, dag_id or DAG_OF[broker], ids, wait)
    seen, deliveries = state["seen"], state["deliveries"]
    mine = {m: seen[m] for m in ids if m in seen}
    done = [m for m in mine if mine[m].get("state") in ("success", "failed")]
    request_of = {r["message_id"]: r["expect"].get("request_id") for r in records}
    if replies is not None:
        replies.wait({request_of[m] for m in done}, 10)  # a reply is sent before its run ends; let it arrive
        for m in mine:
            got = replies.received.get(request_of[m] or "")
            mine[m]["effect"] = min(got) if got else None
            mine[m]["sent"] = replies.sent.get(request_of[m] or "")
    else:
        for m in mine:
            mine[m]["effect"] = mine[m].get("end") if mine[m].get("state") == "success" else None

    def hop(name: str, q: float) -> float | None:
        return _pct([mine[m][name] - published[m] for m in mine if mine[m].get(name)], q)

    events = [mine[m]["event"] for m in mine]
    effects = [mine[m]["effect"] for m in mine if mine[m].get("effect")]
    first_pub = min(published.values())
    ends = [mine[m]["end"] for m in mine if mine[m].get("end")]
    row = {
        "database": db,
        "broker": broker,
        "settings": settings,
        "scenario": scenario,
        "p50_s": hop("start", 0.5),
        "p95_s": hop("start", 0.95),
        "max_s": round(max(ends) - first_pub, 2) if scenario == "burst" and ends else hop("start", 1.0),
        "msgs_per_s": round(len(events) / max(max(events) - first_pub, 1e-3), 1) if events else 0.0,
        "sent": len(ids),
        "lost": len(ids) - len(done),
        "duplicated": sum(max(0, deliveries.get(m, 0) - 1) for m in ids),
        "timed_out": len(done) < len(ids),
        "runs": len({(mine[m].get("queued"), mine[m].get("start")) for m in mine if mine[m].get("start")}),
        "failed_runs": len({mine[m].get("start") for m in done if mine[m]["state"] == "failed"}),
        "event_p50_s": hop("event", 0.5),
        "event_p95_s": hop("event", 0.95),
        "queued_p50_s": hop("queued", 0.5),
        "task_p50_s": hop("task", 0.5),
        "finished_p50_s": hop("end", 0.5),
        "effect": "reply received" if replies is not None else "run finished",
        "effect_p50_s": hop("effect", 0.5),
        "effect_p95_s": hop("effect", 0.95),
        "effect_max_s": hop("effect", 1.0),
        "effect_msgs_per_s": round(len(effects) / max(max(effects) - first_pub, 1e-3), 1) if effects else 0.0,
        "no_effect": len(ids) - len(effects),
    }
    if replies is not None:
        row["reply_sent_p50_s"] = hop("sent", 0.5)
        row["reply_duplicates"] = sum(max(0, len(replies.received.get(request_of[m] or "", [])) - 1) for m in ids)
    print(f"  {db:<8} {broker:<9} {settings:<7} {scenario:<9} "
          + json.dumps({k: row[k] for k in list(row)[4:]}), flush=True)
    return row


def named(records: list[dict[str, Any]], settings: str, broker: str) -> list[dict[str, Any]]:
    """The records under the message ids the pipeline will know them by: with the shared stream a Kafka record
    arrives as its value only, named by its SHA-256 (``messages.SHARED_STREAM_ID``)."""
    if settings != "shared" or broker not in ("kafka", "iot"):
        return records
    from event_streams.pipelines.messages import SHARED_STREAM_ID

    return [{**r, "message_id": SHARED_STREAM_ID + r["body_sha256"]} for r in records]


def fault_workloads(stack: Stack) -> dict[str, Callable[[], list[dict[str, Any]]]]:
    """The two fault rows, on Kafka: the triggerer killed mid-stream, and a run that fails for good."""
    def kill_triggerer() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        sender = threading.Thread(target=lambda: out.extend(publish.publish("iot",
            600, devices=50, rate=100, run_id=f"kill{int(time.time())}", bootstrap=stack.bootstrap)))
        sender.start()
        time.sleep(2)
        stack.cli("crash", "triggerer")
        time.sleep(2)
        stack.cli("start", "triggerer")
        sender.join()
        return out

    def fails_for_good() -> list[dict[str, Any]]:
        """Every attempt fails before the run stores anything until a run has failed for good (all 4 attempts;
        with runs side by side, each of them): then the fault is lifted."""
        marker = Path(stack.info["EVENTS_FAULTS_DIR"]) / "iot.before_commit"
        airflow = create_engine(stack.info["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        count = "SELECT COUNT(*) FROM dag_run WHERE dag_id = 'iot_alerting' AND state = 'failed'"
        with airflow.connect() as conn:
            failed_before = conn.exec_driver_sql(count).scalar_one()
        marker.write_text("always")
        records = publish.publish("iot", 20, devices=4, rate=10, run_id=f"ffg{int(time.time())}",
                                  bootstrap=stack.bootstrap)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with airflow.connect() as conn:
                if conn.exec_driver_sql(count).scalar_one() > failed_before:
                    break
            time.sleep(1)
        marker.unlink(missing_ok=True)
        return records

    return {"kill-triggerer": kill_triggerer, "fails-for-good": fails_for_good}


def fault_row(stack: Stack, db: str, settings: str, scenario: str, records: list[dict[str, Any]],
              wait: float) -> dict[str, Any]:
    """What reached the sink (``iot_readings``, keyed by message id), what had not when ``wait`` ran out (lost: a
    run that failed for good is read again only after ``KAFKA_REDELIVERY_SECONDS``, so the wait is not cut short),
    and how many messages were delivered more than once (asset events)."""
    from include.iot_alerting.tables import iot_readings

    records = named(records, settings, "kafka")
    ids = [r["message_id"] for r in records]
    events = create_engine(stack.events_url)
    deadline, found, changed = time.monotonic() + wait, set(), time.monotonic()
    while time.monotonic() < deadline and len(found) < len(ids):
        time.sleep(3)
        with events.connect() as conn:
            now = {m for part in range(0, len(ids), 500) for m in conn.execute(
                select(iot_readings.c.message_id).where(iot_readings.c.message_id.in_(ids[part:part + 500]))).scalars()}
        if len(now) > len(found):
            found, changed = now, time.monotonic()
    _, deliveries = timeline(stack.info["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], DAG_OF["kafka"])
    row = {"database": db, "broker": "kafka", "settings": settings, "scenario": scenario, "sent": len(ids),
           "in_sink": len(found), "lost": len(ids) - len(found),
           "delivered_twice": sum(1 for m in ids if deliveries.get(m, 0) > 1),
           "timed_out": len(found) < len(ids) and time.monotonic() - changed < 30}
    print(f"  {db:<8} kafka     {settings:<7} {scenario:<15} " + json.dumps({k: row[k] for k in list(row)[4:]}),
          flush=True)
    return row


def workloads(stack: Stack, broker: str, scale: float, replies: ReplyListener | None,
              rates: dict[str, float], settings: str = "project") -> dict[str, Callable[[], list[dict[str, Any]]]]:
    producer = publish.make_producer(stack.bootstrap) if broker == "kafka" else None
    sqs = stack.sqs() if broker == "sqs" else None

    def pub(count: int, rate: float, run_id: str) -> list[dict[str, Any]]:
        if broker == "sqs":
            return publish.publish("inference", count, run_id=run_id, rate=rate, target=stack.target, sqs_client=sqs)
        return publish.publish("iot", count, devices=50, run_id=run_id, rate=rate, producer=producer)

    def latency() -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        for i in range(max(3, int(10 * scale))):
            time.sleep(1 + random.random())  # at rest, at a random phase of the components' loops
            one = pub(1, 0, f"lat{broker}{i}x{int(time.time())}")
            # under the id the pipeline knows it by (the shared stream names a record by its value's SHA-256)
            wait_finished(stack, DAG_OF[broker], {named(one, settings, broker)[0]["message_id"]}, LATENCY_RUN_WAIT_S)
            if replies is not None:
                replies.wait({one[0]["expect"]["request_id"]}, 10)
            records += one
        return records

    rate = rates.get(broker, SUSTAINED_RATE[broker])
    return {
        "latency": latency,
        "burst": lambda: pub(max(10, int(1000 * scale)), 0, f"burst{broker}{int(time.time())}"),
        "sustained": lambda: pub(max(10, int(rate * SUSTAINED_SECONDS * scale)), rate, f"sus{broker}{int(time.time())}"),
    }


def mixed(stack: Stack, db: str, settings: str, scale: float, wait: float,
          replies: ReplyListener) -> list[dict[str, Any]]:
    """``make demo``'s traffic, all three pipelines at once (deliveries 5/s, readings 5/s, requests 10/s and a burst
    of 100 requests): one row per pipeline."""
    records = demo.publish_all({**stack.info}, f"mix{int(time.time())}", scale)
    rows = []
    for pipeline, dag_id in ((p.name, p.dag_id) for p in pipelines.pipelines()):
        mine = [r for r in records if r["pipeline"] == pipeline]
        rows.append(measure(stack, db, pipeline, mine, "mixed", settings, wait,
                            replies=replies if pipeline == "inference" else None, dag_id=dag_id))
    return rows


# --------------------------------------------------------------------------------------------------- checks


def _proc_stats(proc: Path = Path("/proc")) -> dict[int, list[str]]:
    """pid -> the fields of /proc/<pid>/stat after the command name (field 3, the state, is index 0)."""
    stats: dict[int, list[str]] = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                stats[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
    return stats


def _cpu_ticks(fields: list[str]) -> int:
    """utime + stime + cutime + cstime: a process's CPU time with that of its children it has reaped. Without the
    latter, a child that exits between two samples (the dag-processor's parsing processes do) takes its seconds with
    it, and a difference can come out negative."""
    return sum(int(f) for f in fields[11:15])


def group_cpu_seconds(pgid: int, proc: Path = Path("/proc")) -> float:
    """CPU seconds used so far by a process group (a component and its children)."""
    ticks = sum(_cpu_ticks(f) for f in _proc_stats(proc).values() if int(f[2]) == pgid)  # field 5: pgrp
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int, proc: Path = Path("/proc")) -> float:
    """CPU seconds of a process and its live descendants (``group_cpu_seconds``, but by parentage: PostgreSQL's
    backends are children of the postmaster, not members of a group it leads)."""
    stats = _proc_stats(proc)
    children: dict[int, list[int]] = {}
    for pid, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(pid)  # field 4: ppid
    ticks, todo = 0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            ticks += _cpu_ticks(stats[pid])
            todo += children.get(pid, [])
    return ticks / os.sysconf("SC_CLK_TCK")


def group_rss_mb(pgid: int, proc: Path = Path("/proc")) -> float:
    """Resident memory of a process group (a component and its children), in MB."""
    pages = 0
    for pid, fields in _proc_stats(proc).items():
        if int(fields[2]) == pgid:
            try:
                pages += int((proc / str(pid) / "statm").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


class Meter:
    """CPU seconds and peak resident memory of each stage (the Airflow components with their children, LocalExecutor
    task processes included in the scheduler's; the two brokers' JVMs) while a scenario runs: memory sampled every
    0.5 s."""

    def __init__(self, stack: Stack) -> None:
        run = Path(stack.info["DEVSTACK_RUN"])
        names = components(stack.info.get("DEVSTACK_PROFILE", "default"))
        self.groups = {name: int((run / f"airflow-{name}.pid").read_text()) for name in names}
        for broker in ("kafka", "elasticmq"):
            if (run / f"{broker}.pid").exists():
                self.groups[broker] = int((run / f"{broker}.pid").read_text())
        self.peak: dict[str, float] = defaultdict(float)
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            for name, pgid in self.groups.items():
                self.peak[name] = max(self.peak[name], group_rss_mb(pgid))

    def __enter__(self) -> Meter:
        self.cpu = {n: group_cpu_seconds(g) for n, g in self.groups.items()}
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.used = {n: group_cpu_seconds(g) - self.cpu[n] for n, g in self.groups.items()}

    def per_1000(self, messages: int) -> dict[str, dict[str, float]]:
        """Per stage: CPU seconds per 1,000 messages, and the peak RSS (MB) while the scenario ran."""
        scale = 1000 / max(messages, 1)
        return {n: {"cpu_s_per_1000": round(max(0.0, self.used[n]) * scale, 2), "peak_rss_mb": round(self.peak[n])}
                for n in self.groups}


def at_rest(stack: Stack, seconds: float) -> dict[str, dict[str, float]]:
    """Per stage at rest: % of one core and resident memory (MB)."""
    with Meter(stack) as meter:
        time.sleep(seconds)
    return {n: {"cpu_pct": round(100 * max(0.0, meter.used[n]) / seconds, 1), "rss_mb": round(meter.peak[n])}
            for n in meter.groups}


PARSE_SCRIPT = """
import json, time
from pathlib import Path
import airflow.sdk  # the interpreter's own start-up is not the DAG folder's cost
from airflow.dag_processing.dagbag import DagBag
start = time.perf_counter()
bag = DagBag(dag_folder=str(Path("dags").resolve()))
total = time.perf_counter() - start
print(json.dumps({"dags_folder_s": round(total, 3), "dags": len(bag.dags), "errors": len(bag.import_errors),
                  "files_s": {Path(s.file).name: round(s.duration.total_seconds(), 3) for s in bag.dagbag_stats}}))
"""


def parse_time() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-parse-") as home:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW_HOME": home}
        out = subprocess.run([sys.executable, "-c", PARSE_SCRIPT], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal")))
    import airflow

    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem_kb / 1024 / 1024, 1),
            "python": platform.python_version(), "airflow": airflow.__version__, "kernel": platform.release()}


# --------------------------------------------------------------------------------------------------- driver


@contextlib.contextmanager
def fresh_stack(db: str, settings: str, purpose: str) -> Iterator[Stack]:
    """A stack of its own on ``db`` with ``settings``, stopped at the end whatever happens."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{db}-{settings}-") as home:
        stack = Stack(Path(home), db=db)
        stack.env.update(SCHEMES_OF[settings])
        try:
            schemes = " ".join(f"{k}={v}" for k, v in SCHEMES_OF[settings].items())
            print(f"starting the stack on {db} with {settings} settings ({schemes}) for {purpose}", flush=True)
            stack.up()
            yield stack
        finally:
            stack.down()


def run(dbs: list[str], settings_list: list[str], brokers: list[str], scenarios: list[str], scale: float,
        wait: float, idle_seconds: float, rates: dict[str, float] | None = None,
        ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Per database and settings, the workloads on one stack, then the fault rows on a fresh one: a fault injected
    while a pipeline still works through the backlog an earlier row left (the shared stream's, after the sustained
    row) measured that backlog, not the fault."""
    rows: list[dict[str, Any]] = []
    idle: list[dict[str, Any]] = []
    faults: list[dict[str, Any]] = []
    fault_scenarios = [s for s in FAULT_SCENARIOS if s in scenarios] if "kafka" in brokers else []
    for db in dbs:
        for settings in settings_list:
            if any(s not in FAULT_SCENARIOS for s in scenarios):  # idle cost is measured on this stack
                with fresh_stack(db, settings, "the workloads") as stack:
                    rows += workload_rows(stack, db, settings, brokers, scenarios, scale, wait, idle_seconds,
                                          rates or {}, idle)
            if fault_scenarios:
                with fresh_stack(db, settings, "the fault rows") as stack:
                    for scenario in fault_scenarios:
                        faults.append(fault_row(stack, db, settings, scenario, fault_workloads(stack)[scenario](),
                                                max(wait, FAULT_WAIT_S)))
    return rows, idle, faults


def workload_rows(stack: Stack, db: str, settings: str, brokers: list[str], scenarios: list[str], scale: float,
                  wait: float, idle_seconds: float, rates: dict[str, float],
                  idle: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Idle cost (appended to ``idle``), then the latency/burst/sustained rows per broker and the mixed rows."""
    rows: list[dict[str, Any]] = []
    if idle_seconds > 0:
        time.sleep(10)  # let start-up work (first parses, first polls) settle
        rest = at_rest(stack, idle_seconds)
        cpu = {n: f["cpu_pct"] for n, f in rest.items()}
        idle.append({"database": db, "settings": settings, "seconds": idle_seconds, "cpu_pct": cpu,
                     "rss_mb": {n: f["rss_mb"] for n, f in rest.items()}})
        print(f"  {db:<8} {settings:<7} idle CPU % of one core over {idle_seconds:.0f}s: {cpu}", flush=True)
    with ReplyListener(stack) as replies:
        for broker in brokers:
            if settings == "shared" and broker == "sqs":
                print("  shared: no shared-stream SQS trigger has shipped (amazon 9.39); the SQS "
                      "baseline is the guide's", flush=True)
                continue
            listener = replies if broker == "sqs" else None
            for scenario, make in workloads(stack, broker, scale, listener, rates, settings).items():
                if scenario in scenarios:
                    with Meter(stack) as meter:
                        records = make()
                        row = measure(stack, db, broker, records, scenario, settings, wait, replies=listener)
                    rows.append({**row, "cost": meter.per_1000(len(records))})
        if "mixed" in scenarios and settings != "shared":
            rows += mixed(stack, db, settings, scale, wait, replies)
    return rows


def _f(v: Any) -> str:
    return f"{v:7.2f}" if isinstance(v, (int, float)) else f"{'-':>7}"


def render(rows: list[dict[str, Any]]) -> str:
    """start = publish -> run started; effect = publish -> reply received (inference) or run finished (the others);
    msg/s: into asset events, and into effects."""
    head = (f"{'db':<8} {'broker':<9} {'settings':<8} {'scenario':<9} {'start p50':>9} {'p95':>6} {'max s':>7} "
            f"{'effect p50':>10} {'p95':>6} {'msg/s in':>8} {'effect':>7} {'sent':>6} {'lost':>5} {'dup':>4} "
            f"{'runs':>5}  {'event p50/p95 s':>15}  note")
    lines = [head]
    for r in rows:
        notes = (["wait ran out"] if r["timed_out"] else []) + ([f"{r['failed_runs']} failed run(s)"]
                                                              if r.get("failed_runs") else [])
        notes += [f"{r['reply_duplicates']} replies twice"] if r.get("reply_duplicates") else []
        notes += [f"{r['no_effect']} without effect"] if r.get("no_effect") and not r["timed_out"] else []
        lines.append(f"{r['database']:<8} {r['broker']:<9} {r['settings']:<8} {r['scenario']:<9} {_f(r['p50_s']):>9} "
                     f"{_f(r['p95_s']).strip():>6} {_f(r['max_s'])} {_f(r.get('effect_p50_s')):>10} "
                     f"{_f(r.get('effect_p95_s')).strip():>6} {r['msgs_per_s']:8.1f} "
                     f"{r.get('effect_msgs_per_s', 0.0):7.1f} {r['sent']:>6} {r['lost']:>5} {r['duplicated']:>4} "
                     f"{r['runs']:>5}  {_f(r['event_p50_s'])}/{_f(r['event_p95_s']).strip():<7}  {', '.join(notes)}")
    return "\n".join(lines)


def render_hops(rows: list[dict[str, Any]]) -> str:
    """Where the time goes, p50 of publish -> each hop, per row."""
    names = [("event_p50_s", "event"), ("queued_p50_s", "queued"), ("p50_s", "run start"),
             ("task_p50_s", "first task"), ("reply_sent_p50_s", "reply sent"), ("effect_p50_s", "effect"),
             ("finished_p50_s", "run end")]
    lines = []
    for r in rows:
        hops = " -> ".join(f"{label} {r[k]:.2f}" for k, label in names if isinstance(r.get(k), (int, float)))
        lines.append(f"{r['database']:<8} {r['broker']:<9} {r['settings']:<7} {r['scenario']:<9} {hops}")
    return "\n".join(lines)


def render_ratios(rows: list[dict[str, Any]], baseline: str = "guide") -> str:
    """``baseline`` / project, side by side: how many times slower (latency) and faster (rate) the project is."""
    by = {(r["database"], r["broker"], r["scenario"], r["settings"]): r for r in rows}
    lines = []
    for (db, broker, scenario, settings), project in by.items():
        base = by.get((db, broker, scenario, baseline))
        if settings != "project" or base is None:
            continue
        parts = []
        if project["p50_s"] and base["p50_s"]:
            parts.append(f"p50 start {base['p50_s']:.2f}s -> {project['p50_s']:.2f}s (x{base['p50_s'] / project['p50_s']:.1f})")
        if scenario != "latency":
            parts.append(f"into asset events {base['msgs_per_s']:.1f} -> {project['msgs_per_s']:.1f} msg/s")
            parts.append(f"into effects {base.get('effect_msgs_per_s', 0):.1f} -> {project.get('effect_msgs_per_s', 0):.1f} msg/s")
            parts.append(f"processed in the wait {base['sent'] - base['lost']} -> {project['sent'] - project['lost']}"
                         f" of {project['sent']}")
        lines.append(f"{db:<8} {broker:<5} {scenario:<9} " + "; ".join(parts))
    return "\n".join(lines)


def render_cost(rows: list[dict[str, Any]]) -> str:
    """CPU seconds per 1,000 messages and peak RSS (MB) of each stage, per row that has them."""
    stages = sorted({n for r in rows for n in r.get("cost", {})})
    lines = [f"{'db':<8} {'broker':<9} {'settings':<8} {'scenario':<9} " + " ".join(f"{n:>19}" for n in stages)
             + "   (CPU s per 1,000 msgs / peak RSS MB)"]
    for r in rows:
        if "cost" in r:
            cells = [f"{r['cost'][n]['cpu_s_per_1000']:>9.2f} / {r['cost'][n]['peak_rss_mb']:>6.0f}"
                     if n in r["cost"] else f"{'-':>19}" for n in stages]
            lines.append(f"{r['database']:<8} {r['broker']:<9} {r['settings']:<8} {r['scenario']:<9} " + " ".join(cells))
    return "\n".join(lines)


def render_faults(faults: list[dict[str, Any]]) -> str:
    lines = [f"{'db':<8} {'settings':<8} {'scenario':<15} {'sent':>5} {'in sink':>8} {'lost':>5} {'delivered twice':>16}"]
    for f in faults:
        lines.append(f"{f['database']:<8} {f['settings']:<8} {f['scenario']:<15} {f['sent']:>5} {f['in_sink']:>8} "
                     f"{f['lost']:>5} {f['delivered_twice']:>16}" + ("  (still arriving when the wait ran out)"
                                                                       if f["timed_out"] else ""))
    return "\n".join(lines)


def render_checks(checks: dict[str, Any]) -> str:
    m, p = checks["machine"], checks["parse"]
    lines = [f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; Python {m['python']}, "
             f"Airflow {m['airflow']}",
             f"dags/ parse (fresh interpreter, DagBag): {p['dags_folder_s']:.2f}s for {p['dags']} DAGs, "
             f"{p['errors']} errors; per file: " + ", ".join(f"{k} {v:.2f}s" for k, v in p["files_s"].items())]
    for i in checks["idle"]:
        lines.append(f"at rest ({i['database']}, {i['settings']}, {i['seconds']:.0f}s), % of one core / RSS MB: "
                     + ", ".join(f"{k} {v} / {i.get('rss_mb', {}).get(k, '-')}" for k, v in i["cpu_pct"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    parser.add_argument("--settings", nargs="+", default=SETTINGS, choices=SETTINGS)
    parser.add_argument("--brokers", nargs="+", default=["sqs", "kafka"], choices=["sqs", "kafka"])
    parser.add_argument("--scenarios", nargs="+", default=SCENARIOS, choices=SCENARIOS)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every message count")
    parser.add_argument("--rate", nargs=2, action="append", metavar=("BROKER", "PER_S"), default=[],
                        help=f"sustained publish rate of a broker (default {SUSTAINED_RATE})")
    parser.add_argument("--wait", type=float, default=120, help="seconds each scenario may take to finish")
    parser.add_argument("--idle", type=float, default=30, help="seconds of idle CPU sampling per stack (0: skip)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--keep", action="store_true",
                        help="keep the rows (and idle figures) of --out for the databases/settings not run now")
    args = parser.parse_args(argv)
    for db in args.db:
        reason = unavailable_reason(db)
        if reason:
            print(f"cannot benchmark on {db}: {reason}", file=sys.stderr)
            return 2
    started = time.monotonic()
    checks: dict[str, Any] = {"machine": machine(), "parse": parse_time()}
    rates = {broker: float(per_s) for broker, per_s in args.rate}
    rows, checks["idle"], checks["faults"] = run(args.db, args.settings, args.brokers, args.scenarios, args.scale, args.wait, args.idle,
                               rates)
    checks_out = args.out.with_name("checks.json")
    if args.keep and args.out.exists():
        rerun = {(d, s) for d in args.db for s in args.settings}
        rows = [r for r in json.loads(args.out.read_text()) if (r["database"], r["settings"]) not in rerun] + rows
        if checks_out.exists():
            kept = json.loads(checks_out.read_text()).get("idle", [])
            checks["idle"] = [i for i in kept if (i["database"], i["settings"]) not in rerun] + checks["idle"]
            kept_faults = json.loads(checks_out.read_text()).get("faults", [])
            checks["faults"] = [f for f in kept_faults if (f["database"], f["settings"]) not in rerun] + checks["faults"]
    order = {"sqlite": 0, "postgres": 1, "guide": 0, "shared": 1, "project": 2, "sqs": 0, "kafka": 1, "etl": 2, "iot": 3,
             "inference": 4}
    rows.sort(key=lambda r: (order[r["database"]], order[r["broker"]], order[r["settings"]]))  # stable: scenarios
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    checks_out.write_text(json.dumps(checks, indent=2) + "\n")
    print(f"\n{render(rows)}\n\nwhere the time goes (p50 s after publish):\n{render_hops(rows)}\n\nguide -> project:\n{render_ratios(rows)}\n\nshared -> project:\n{render_ratios(rows, 'shared')}\n\ncost per stage:\n{render_cost(rows)}\n\nfaults (Kafka):\n{render_faults(checks['faults'])}\n\n{render_checks(checks)}\n\n{len(rows)} rows in {time.monotonic() - started:.0f}s; "
          f"written to {args.out} and {checks_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
