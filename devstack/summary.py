"""What the pipelines did with what the publisher sent: runs, task states, rows, alerts, replies, latency.

Reads the publisher's records (``devstack.publish --record``: one JSON line per message with what it must
produce), then looks at Airflow's metadata DB (asset events -> DAG runs -> task instances), the shared dead letters
and the dead-letter queues/topics; what each pipeline's own sinks hold (rows, alerts on a topic, replies on a queue)
is its sink check (``include/<dag_id>/samples.py``, found by ``devstack.pipelines``), which reads brokers through
``Brokers``. ``collect`` waits until every expected effect is there (or the deadline passes) and returns one report
per pipeline; ``missing`` lists what never appeared.
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, bindparam, create_engine, select, text

from devstack import pipelines
from event_streams.pipelines import db
from event_streams.pipelines.messages import envelopes_from_asset_events
from event_streams.pipelines.samples_api import DEAD_LETTER, PipelineSamples


@dataclass
class Report:
    pipeline: str
    published: int = 0
    runs: Counter = field(default_factory=Counter)
    tasks: Counter = field(default_factory=Counter)
    rows: int = 0
    outputs: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # publish -> DAG run start
    task_latencies: list[float] = field(default_factory=list)  # publish -> its run's first task start
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        unfinished = {s: n for s, n in self.runs.items() if s != "success"}
        return not self.missing and not unfinished and self.runs.total() > 0

    def latency(self, q: float, task: bool = False) -> float | None:
        values = sorted(self.task_latencies if task else self.latencies)
        if not values:
            return None
        return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def read_records(paths: Iterable[Path]) -> list[dict[str, Any]]:
    records = []
    for path in paths:
        records += [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return records


def _ts(value: Any) -> datetime:
    return db.as_utc(value if isinstance(value, datetime) else datetime.fromisoformat(str(value)))


def message_runs(airflow: Engine, dag_id: str) -> dict[str, tuple[str, datetime | None, str]]:
    """message id -> (run_id, run start, run state), from the asset events each run consumed."""
    sql = text(
        "SELECT e.extra, r.run_id, r.start_date, r.state FROM asset_event e"
        " JOIN dagrun_asset_event a ON a.event_id = e.id JOIN dag_run r ON r.id = a.dag_run_id"
        " WHERE r.dag_id = :dag_id"
    )
    out: dict[str, tuple[str, datetime | None, str]] = {}
    with airflow.connect() as conn:
        for extra, run_id, start, state in conn.execute(sql, {"dag_id": dag_id}):
            extra = json.loads(extra) if isinstance(extra, str) else extra
            for env in envelopes_from_asset_events([extra]):
                out.setdefault(env.message_id, (run_id, _ts(start) if start else None, state))
    return out


def first_task_starts(airflow: Engine, dag_id: str) -> dict[str, datetime]:
    """run_id -> when its first task started."""
    sql = text("SELECT run_id, MIN(start_date) FROM task_instance WHERE dag_id = :dag_id AND start_date IS NOT NULL"
               " GROUP BY run_id")
    with airflow.connect() as conn:
        return {run_id: _ts(start) for run_id, start in conn.execute(sql, {"dag_id": dag_id})}


def timeline(airflow_url: str, dag_id: str) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """message id -> first asset event time and the run (queued, started, its first task started, ended, state)
    that consumed it; and how many asset events carried each message."""
    engine = create_engine(airflow_url)
    sql = text(
        "SELECT e.extra, e.timestamp, r.queued_at, r.start_date, r.end_date, r.state,"
        " (SELECT MIN(t.start_date) FROM task_instance t WHERE t.dag_id = r.dag_id AND t.run_id = r.run_id)"
        " FROM asset_event e"
        " JOIN dag_schedule_asset_reference s ON s.asset_id = e.asset_id AND s.dag_id = :d"
        " LEFT JOIN dagrun_asset_event a ON a.event_id = e.id LEFT JOIN dag_run r ON r.id = a.dag_run_id"
        " ORDER BY e.timestamp"
    )
    out: dict[str, dict[str, Any]] = {}
    deliveries: dict[str, int] = {}
    with engine.connect() as conn:  # one row per asset event (only this DAG consumes the asset)
        for extra, ts, queued, start, end, state, task in conn.execute(sql, {"d": dag_id}):
            extra = json.loads(extra) if isinstance(extra, str) else extra
            for env in envelopes_from_asset_events([extra]):
                deliveries[env.message_id] = deliveries.get(env.message_id, 0) + 1
                row = out.setdefault(env.message_id, {"event": _t(ts)})
                if start is not None and row.get("start") is None:
                    row.update(queued=_t(queued), start=_t(start), task=_t(task), end=_t(end), state=state)
    return out, deliveries


def _t(value: Any) -> float | None:
    return None if value is None else _ts(value).timestamp()


def run_and_task_states(airflow: Engine, dag_id: str, run_ids: set[str]) -> tuple[Counter, Counter]:
    if not run_ids:
        return Counter(), Counter()
    runs_sql = text("SELECT state FROM dag_run WHERE dag_id = :d AND run_id IN :r").bindparams(bindparam("r", expanding=True))
    tis_sql = text("SELECT state FROM task_instance WHERE dag_id = :d AND run_id IN :r").bindparams(bindparam("r", expanding=True))
    with airflow.connect() as conn:
        runs = Counter(s for (s,) in conn.execute(runs_sql, {"d": dag_id, "r": sorted(run_ids)}))
        tasks = Counter(str(s) for (s,) in conn.execute(tis_sql, {"d": dag_id, "r": sorted(run_ids)}))
    return runs, tasks


def _dead_letters(events: Engine, pipeline: str) -> dict[str, str]:
    t = db.dead_letters
    with events.connect() as conn:
        return dict(conn.execute(select(t.c.message_id, t.c.reason).where(t.c.pipeline == pipeline)).all())


def read_topic(bootstrap: str, topic: str, timeout: float = 10) -> list[Any]:
    """Every record now on a topic, read from the beginning to the end offsets by a throwaway consumer group."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"summary-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    try:
        parts = [TopicPartition(topic, p, 0) for p in consumer.list_topics(topic, timeout=timeout).topics[topic].partitions]
        ends = {p.partition: consumer.get_watermark_offsets(p, timeout=timeout)[1] for p in parts}
        consumer.assign(parts)
        records, done, deadline = [], {p for p, end in ends.items() if end == 0}, time.monotonic() + timeout
        while len(done) < len(parts) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            records.append(msg)
            if msg.offset() + 1 >= ends[msg.partition()]:
                done.add(msg.partition())
        return records
    finally:
        consumer.close()


def read_replies(sqs: Any, queue_url: str, wanted: set[str], seen: dict[str, dict], wait: float = 1,
                 field: str = "correlation_id") -> None:
    """Receive replies, keep (and delete) those whose ``field`` (the correlation id) is wanted. Others are hidden for
    10 s, so one call ends even when replies of other publishers are queued, and then come back for their owner."""
    for _ in range(500):  # bounded: at most 5,000 replies per call
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=int(wait),
                                  VisibilityTimeout=10).get("Messages", [])
        if not got:
            return
        for m in got:
            reply = json.loads(m["Body"])
            if reply.get(field) in wanted:
                seen.setdefault(reply[field], reply)
                seen[reply[field]].setdefault("_copies", 0)
                seen[reply[field]]["_copies"] += 1
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
        wait = 0


def read_sqs_dlq(sqs: Any, dlq_url: str, seen: dict[str, str]) -> dict[str, str]:
    """source message id -> reason of every dead letter on an SQS DLQ (kept invisible to others while we look)."""
    while True:
        got = sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=600,
                                  MessageAttributeNames=["All"]).get("Messages", [])
        if not got:
            return seen
        for m in got:
            attrs = {k: v.get("StringValue", "") for k, v in m.get("MessageAttributes", {}).items()}
            if "source_message_id" in attrs:
                seen[attrs["source_message_id"]] = attrs.get("reason", "")


def read_kafka_dlq(bootstrap: str, topic: str, timeout: float = 10) -> dict[str, str]:
    """source message id -> reason (from the headers) of every dead letter on a DLQ topic."""
    found: dict[str, str] = {}
    for msg in read_topic(bootstrap, topic, timeout):
        headers = {k: v.decode("utf-8", "replace") for k, v in (msg.headers() or [])}
        if "source_message_id" in headers:
            found[headers["source_message_id"]] = headers.get("reason", "")
    return found


class Brokers:
    """The brokers as a pipeline's sink check reads them (``SinkReader``): Kafka topics from the beginning, SQS
    queues whose taken messages are kept in ``replies`` (they are gone from the queue once taken)."""

    def __init__(self, bootstrap: str, sqs: Any, queue_url_prefix: str, replies: dict[str, dict]) -> None:
        self.bootstrap, self.sqs, self.queue_url_prefix, self.replies = bootstrap, sqs, queue_url_prefix, replies

    def topic(self, topic: str) -> list[bytes]:
        return [m.value() for m in read_topic(self.bootstrap, topic)]

    def take(self, queue: str, field: str, wanted: set[str]) -> Mapping[str, int]:
        read_replies(self.sqs, f"{self.queue_url_prefix}/{queue}", wanted, self.replies, field=field)
        return {k: v["_copies"] for k, v in self.replies.items()}


def collect(
    records: Sequence[dict[str, Any]],
    airflow_url: str,
    events_url: str,
    *,
    bootstrap: str,
    sqs: Any,
    queue_url_prefix: str,
    timeout: float = 180,
    on_progress: Any = None,
    until_finished: bool = True,
    seen: dict[str, dict] | None = None,
) -> dict[str, Report]:
    """Wait until every expected effect is there and (``until_finished``) every run involved has finished."""
    known = {p.name: p for p in pipelines.pipelines()}  # imports their tables before ensure_schema
    airflow, events = create_engine(airflow_url), db.configure_sqlite(create_engine(events_url))
    db.ensure_schema(events)  # the pipelines create it on their first run; the summary may look before that
    by_pipeline: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_pipeline.setdefault(r["pipeline"], []).append(r)
    # Replies and SQS dead letters are consumed from their queues as they are read: keep them across calls.
    seen = {} if seen is None else seen
    replies: dict[str, dict] = seen.setdefault("replies", {})
    sqs_dlq: dict[str, str] = seen.setdefault("sqs_dlq", {})
    brokers = Brokers(bootstrap, sqs, queue_url_prefix, replies)
    deadline = time.monotonic() + timeout
    while True:
        reports = {p: _report(known[p], recs, airflow, events, brokers) for p, recs in by_pipeline.items()}
        for p, rep in reports.items():
            spec = known[p]
            wanted = [r for r in by_pipeline[p] if DEAD_LETTER in r["expect"]]
            if not wanted:
                continue
            if spec.broker == "sqs":
                dlq = read_sqs_dlq(sqs, f"{queue_url_prefix}/{spec.dlq}", sqs_dlq)
            else:
                dlq = read_kafka_dlq(bootstrap, spec.dlq)
            rep.outputs["in_dlq"] = sum(1 for r in wanted if r["message_id"] in dlq)
            for r in wanted:
                if r["expect"][DEAD_LETTER] not in dlq.get(r["message_id"], ""):
                    rep.missing.append(f"{r['message_id']} not on {spec.dlq} with reason containing "
                                       f"{r['expect'][DEAD_LETTER]!r}")
        done = all(r.ok if until_finished else not r.missing for r in reports.values())
        if done or time.monotonic() > deadline:
            return reports
        if on_progress is not None:
            on_progress(reports)
        time.sleep(2)


def _report(spec: PipelineSamples, recs: Sequence[dict[str, Any]], airflow: Engine, events: Engine,
            brokers: Brokers) -> Report:
    rep = Report(spec.name, published=len(recs))
    runs = message_runs(airflow, spec.dag_id)
    for r in recs:
        run = runs.get(r["message_id"])
        if run is None:
            rep.missing.append(f"message {r['message_id']} is in no DAG run")
        elif run[1] is not None:
            rep.latencies.append((run[1] - _ts(r["published_at"])).total_seconds())
    first_task = first_task_starts(airflow, spec.dag_id)
    for r in recs:
        if (run := runs.get(r["message_id"])) is not None and (task := first_task.get(run[0])) is not None:
            rep.task_latencies.append((task - _ts(r["published_at"])).total_seconds())
    rep.runs, rep.tasks = run_and_task_states(airflow, spec.dag_id, {runs[r["message_id"]][0] for r in recs if r["message_id"] in runs})

    letters = _dead_letters(events, spec.dag_id)
    for r in recs:
        want = r["expect"].get(DEAD_LETTER)
        if want is not None and want not in letters.get(r["message_id"], ""):
            rep.missing.append(f"dead letter for {r['message_id']} with reason containing {want!r}")
    rep.outputs["dead_lettered"] = sum(1 for r in recs if r["message_id"] in letters)

    sinks = spec.check(events, recs, brokers)  # the pipeline's own outputs: rows, alerts, replies, ...
    rep.rows = sinks.rows
    rep.outputs.update(sinks.outputs)
    rep.missing += sinks.missing
    return rep


def render(reports: dict[str, Report]) -> str:
    lines = [f"{'pipeline':<10} {'sent':>5} {'runs':>5} {'run states':<22} {'task states':<32} {'rows':>5} "
             f"{'outputs':<46} {'p50 s':>6} {'p95 s':>6} {'task50':>6}  result"]
    for p, r in reports.items():
        fmt = lambda v: f"{v:6.2f}" if v is not None else "     -"  # noqa: E731
        outputs = ", ".join(f"{k}={v}" for k, v in r.outputs.items())
        lines.append(
            f"{p:<10} {r.published:>5} {r.runs.total():>5} {json.dumps(dict(r.runs)):<22} {json.dumps(dict(r.tasks)):<32} "
            f"{r.rows:>5} {outputs:<46} {fmt(r.latency(0.5))} {fmt(r.latency(0.95))} {fmt(r.latency(0.5, task=True))}  {'OK' if r.ok else 'MISSING'}"
        )
        lines += [f"    missing: {m}" for m in r.missing[:10]]
    return "\n".join(lines)


def statistics_of(reports: dict[str, Report]) -> dict[str, Any]:
    return {p: {"published": r.published, "runs": dict(r.runs), "tasks": dict(r.tasks), "rows": r.rows,
                **r.outputs, "p50_s": r.latency(0.5), "p95_s": r.latency(0.95),
                "first_task_p50_s": r.latency(0.5, task=True),
                "mean_s": statistics.fmean(r.latencies) if r.latencies else None, "ok": r.ok} for p, r in reports.items()}
