"""The figures of the streams page (``plugins/event_streams_page.py``) and of ``make status``: for every watcher, what
its broker holds, what Airflow holds, how long messages waited, the dead letters, and whether broker and Airflow
agree (drift), with the verdict in plain words.

Watchers are found in Airflow's own tables (asset -> watcher -> trigger, and the DAGs scheduled on the asset), so a
new pipeline shows up without being named here. Every read is bounded (a LIMIT, an indexed column); every broker
call has a timeout, and a broker that does not answer is reported unreachable, never waited for.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, func, select
from sqlalchemy.orm import Session

from event_streams.pipelines import db
from event_streams.pipelines.messages import envelopes_from_asset_events

BROKER_TIMEOUT_S = 3.0
RECENT_RUNS = 50  # runs the message-age figures are taken over
RATE_WINDOW_S = 300  # messages per second over this many seconds
MAX_WAITING_EVENTS = 500  # unconsumed asset events read to count their messages
DEAD_LETTERS_PAGE = 50
MAX_ACTIONS = 500  # dead letters one replay / discard may name (one manual run)
PREVIEW_CHARS = 200


@dataclass(frozen=True)
class Watcher:
    """An asset watcher: its trigger (class and arguments, as stored) and the DAGs scheduled on its asset."""

    name: str
    asset_id: int
    asset: str
    dag_ids: tuple[str, ...]
    classpath: str
    kwargs: Mapping[str, Any]

    @property
    def broker(self) -> str:
        cls = self.classpath.rsplit(".", 1)[-1]
        return "kafka" if "Kafka" in cls else "sqs" if "Sqs" in cls else "other"


def watchers(session: Session) -> list[Watcher]:
    """Every asset watcher in Airflow's metadata database, with its trigger's arguments (decrypted)."""
    from airflow.models.asset import AssetModel, AssetWatcherModel, DagScheduleAssetReference
    from airflow.models.trigger import Trigger

    rows = session.execute(
        select(AssetWatcherModel.name, AssetModel.id, AssetModel.name, Trigger)
        .join(AssetModel, AssetModel.id == AssetWatcherModel.asset_id)
        .join(Trigger, Trigger.id == AssetWatcherModel.trigger_id)
        .order_by(AssetModel.name)
    ).all()
    dags: dict[int, list[str]] = {}
    for asset_id, dag_id in session.execute(select(DagScheduleAssetReference.asset_id,
                                                   DagScheduleAssetReference.dag_id)):
        dags.setdefault(asset_id, []).append(dag_id)
    return [Watcher(name, asset_id, asset, tuple(sorted(dags.get(asset_id, []))), trigger.classpath,
                    dict(trigger.kwargs)) for name, asset_id, asset, trigger in rows]


# --- broker side -----------------------------------------------------------------------------------------------
def unreachable(exc: BaseException) -> dict[str, Any]:
    return {"error": f"unreachable: {type(exc).__name__}: {str(exc)[:300]}"}


def sqs_figures(watcher: Watcher, client: Any = None) -> dict[str, Any]:
    """Visible / in flight / delayed on the watched queue, and visible on its redrive dead-letter queue (if any)."""
    queue_url = str(watcher.kwargs.get("sqs_queue"))
    try:
        client = client or _sqs_client(watcher.kwargs.get("aws_conn_id"), watcher.kwargs.get("region_name"))
        attrs = client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
        out: dict[str, Any] = {"queue": queue_url.rsplit("/", 1)[-1],
                               "visible": int(attrs.get("ApproximateNumberOfMessages", 0)),
                               "in_flight": int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
                               "delayed": int(attrs.get("ApproximateNumberOfMessagesDelayed", 0))}
        dlq = _redrive_target(attrs.get("RedrivePolicy"), queue_url)
        if dlq is not None:
            dlq_attrs = client.get_queue_attributes(QueueUrl=dlq, AttributeNames=["ApproximateNumberOfMessages"])
            out["dlq"] = dlq.rsplit("/", 1)[-1]
            out["dlq_visible"] = int(dlq_attrs["Attributes"].get("ApproximateNumberOfMessages", 0))
        return out
    except Exception as exc:  # any failure to ask the broker is reported, never raised: the page must render
        return {"queue": queue_url.rsplit("/", 1)[-1], **unreachable(exc)}


def _redrive_target(policy: str | None, queue_url: str) -> str | None:
    """The URL of the queue a ``RedrivePolicy`` sends to (same account and endpoint as ``queue_url``)."""
    import json

    if not policy:
        return None
    arn = str(json.loads(policy).get("deadLetterTargetArn", ""))
    return f"{queue_url.rsplit('/', 1)[0]}/{arn.rsplit(':', 1)[-1]}" if arn else None


def _sqs_client(aws_conn_id: str | None, region_name: str | None) -> Any:
    from airflow.providers.amazon.aws.hooks.sqs import SqsHook
    from botocore.config import Config

    timeouts = Config(connect_timeout=BROKER_TIMEOUT_S, read_timeout=BROKER_TIMEOUT_S, retries={"max_attempts": 1})
    return SqsHook(aws_conn_id=aws_conn_id, region_name=region_name, config=timeouts).get_conn()


def kafka_figures(watcher: Watcher, events: Engine | None, consumer: Any = None) -> dict[str, Any]:
    """Per partition of the watched topics: end offset, the group's committed offset, lag, and what the runs settled
    (``kafka_settled``: the watermark and the ranges above it not yet committed)."""
    from confluent_kafka import TopicPartition

    group = watcher.kwargs.get("group_id")
    topics = list(watcher.kwargs.get("topics") or [])
    try:
        if consumer is None:
            consumer, group = _kafka_consumer(str(watcher.kwargs.get("kafka_config_id", "kafka_default")), group)
        partitions = [TopicPartition(t, p) for t in topics
                      for p in sorted(consumer.list_topics(t, timeout=BROKER_TIMEOUT_S).topics[t].partitions)]
        committed = {(tp.topic, tp.partition): tp.offset
                     for tp in consumer.committed(partitions, timeout=BROKER_TIMEOUT_S)}
        ends = {(tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=BROKER_TIMEOUT_S)[1]
                for tp in partitions}
    except Exception as exc:  # reported, never raised: the page must render with the broker down
        return {"group": group, **unreachable(exc)}
    from event_streams.kafka_offsets import settled_state

    settled = settled_state(events, str(group), list(ends)) if events is not None else {}
    rows = []
    for key in sorted(ends):
        last, ranges, mark = settled.get(key, (-1, [], None))
        done = committed.get(key, -1)
        rows.append({"topic": key[0], "partition": key[1], "end": ends[key], "committed": done if done >= 0 else None,
                     "lag": ends[key] - done if done >= 0 else None, "settled_through": mark,
                     "settled_not_committed": [[s, e] for s, e in ranges if e > max(done, 0)]})
    return {"group": group, "partitions": rows, "lag": sum(r["lag"] or 0 for r in rows)}


def _kafka_consumer(conn_id: str, group: str | None) -> tuple[Any, str]:
    """A consumer of the watcher's group (else the connection's) that never joins it (no ``subscribe``)."""
    from event_streams.kafka_offsets import SafeKafkaConsumerHook

    hook = SafeKafkaConsumerHook(topics=[], kafka_config_id=conn_id, group_id=group)
    return hook.get_conn, str(hook.effective_config["group.id"])


# --- Airflow side ----------------------------------------------------------------------------------------------
def airflow_figures(session: Session, watcher: Watcher, dag_id: str) -> dict[str, Any]:
    """Asset events (and their messages) waiting for a run of ``dag_id``, and its runs queued and running."""
    from airflow.models.asset import AssetDagRunQueue, AssetEvent
    from airflow.models.dagrun import DagRun

    queued_since = session.scalar(select(AssetDagRunQueue.created_at).where(
        AssetDagRunQueue.asset_id == watcher.asset_id, AssetDagRunQueue.target_dag_id == dag_id))
    extras: list[Any] = []
    if queued_since is not None:
        extras = list(session.scalars(
            select(AssetEvent.extra).where(AssetEvent.asset_id == watcher.asset_id,
                                           AssetEvent.timestamp >= queued_since)
            .order_by(AssetEvent.timestamp).limit(MAX_WAITING_EVENTS)))
    runs: dict[Any, int] = dict(session.execute(select(DagRun.state, func.count()).where(
        DagRun.dag_id == dag_id, DagRun.state.in_(["queued", "running"])).group_by(DagRun.state)).all())
    return {"waiting_events": len(extras), "waiting_messages": len(envelopes_from_asset_events(extras)),
            "waiting_since": queued_since.isoformat() if queued_since else None,
            "runs_queued": int(runs.get("queued", 0)), "runs_running": int(runs.get("running", 0))}


def held_by_active_runs(session: Session, dag_id: str, limit: int = MAX_WAITING_EVENTS) -> int:
    """Messages in the asset events consumed by the DAG's queued and running runs (at most ``limit`` events read)."""
    from airflow.models.asset import AssetEvent
    from airflow.models.dagrun import DagRun

    extras = session.scalars(
        select(AssetEvent.extra).select_from(DagRun).join(DagRun.consumed_asset_events)
        .where(DagRun.dag_id == dag_id, DagRun.state.in_(["queued", "running"])).limit(limit)).all()
    return len(envelopes_from_asset_events(extras))


def run_figures(events: Engine, dag_id: str, now: datetime | None = None) -> dict[str, Any]:
    """Message age at run start over the last runs (p50 of the runs' medians, p95 of their maxima; from
    ``pipeline_run_stats``) and messages per second over the last ``RATE_WINDOW_S`` seconds."""
    t = db.run_stats
    now = now or db.utcnow()
    with events.connect() as conn:
        recent = conn.execute(select(t.c.wait_p50_s, t.c.wait_max_s).where(t.c.dag_id == dag_id)
                              .order_by(t.c.recorded_at.desc()).limit(RECENT_RUNS)).all()
        taken = conn.scalar(select(func.coalesce(func.sum(t.c.messages), 0)).where(
            t.c.dag_id == dag_id, t.c.recorded_at >= now - timedelta(seconds=RATE_WINDOW_S)))
    p50s = [r[0] for r in recent if r[0] is not None]
    maxima = [r[1] for r in recent if r[1] is not None]
    return {"runs": len(recent), "age_p50_s": round(statistics.median(p50s), 2) if p50s else None,
            "age_p95_s": round(percentile(maxima, 0.95), 2) if maxima else None,
            "messages_per_s": round(int(taken or 0) / RATE_WINDOW_S, 2)}


def percentile(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


# --- dead letters ---------------------------------------------------------------------------------------------
def dead_letters(events: Engine, pipeline: str | None = None, reason: str | None = None,
                 before: datetime | None = None, limit: int = DEAD_LETTERS_PAGE) -> list[dict[str, Any]]:
    """Newest first (``before``: the page after), with a body preview and what was done with each (replayed,
    discarded). Bounded by ``limit`` and the ``recorded_at`` indexes, whatever the table holds."""
    d, a = db.dead_letters, db.dead_letter_actions
    query = (select(d.c.pipeline, d.c.message_id, d.c.source, d.c.reason, func.substr(d.c.body, 1, PREVIEW_CHARS),
                    func.length(d.c.body), d.c.recorded_at, a.c.action, a.c.actor, a.c.acted_at, a.c.run_id)
             .outerjoin(a, and_(a.c.pipeline == d.c.pipeline, a.c.message_id == d.c.message_id))
             .order_by(d.c.recorded_at.desc()).limit(max(1, min(limit, 500))))
    if pipeline:
        query = query.where(d.c.pipeline == pipeline)
    if reason:
        query = query.where(d.c.reason.contains(reason, autoescape=True))
    if before is not None:
        query = query.where(d.c.recorded_at < before)
    with events.connect() as conn:
        rows = conn.execute(query).all()
    return [{"pipeline": r[0], "message_id": r[1], "source": r[2], "reason": r[3], "preview": r[4],
             "body_chars": r[5], "recorded_at": r[6].isoformat() if r[6] else None, "action": r[7], "actor": r[8],
             "acted_at": r[9].isoformat() if r[9] else None, "run_id": r[10]} for r in rows]


def dead_letters_since(events: Engine, pipeline: str, since: datetime) -> int:
    t = db.dead_letters
    with events.connect() as conn:
        return int(conn.scalar(select(func.count()).where(t.c.pipeline == pipeline, t.c.recorded_at >= since)) or 0)


@dataclass(frozen=True)
class Action:
    pipeline: str
    message_id: str
    action: str
    actor: str
    run_id: str | None
    acted_at: str
    new: bool  # False: this dead letter had been acted on before; nothing was done now


def act(events: Engine, pipeline: str, message_ids: Sequence[str], action: str, actor: str,
        replay: Callable[[str, list[str]], str] | None = None) -> list[Action]:
    """Replay or discard dead letters of one DAG, each once: those acted on before keep their first action and are
    returned with ``new=False``. ``replay(pipeline, bodies)`` starts one manual run that processes the original
    bodies (of the dead letters not acted on yet) and returns its run id. Unknown message ids are left out."""
    if action not in ("replayed", "discarded"):
        raise ValueError(f"unknown action {action!r}")
    d, a = db.dead_letters, db.dead_letter_actions
    ids = list(dict.fromkeys(message_ids))[:MAX_ACTIONS]
    with events.begin() as conn:
        bodies = dict(conn.execute(select(d.c.message_id, d.c.body).where(d.c.pipeline == pipeline,
                                                                          d.c.message_id.in_(ids))).all())
        done = {r.message_id for r in conn.execute(select(a.c.message_id).where(a.c.pipeline == pipeline,
                                                                                a.c.message_id.in_(ids)))}
        fresh = [m for m in ids if m in bodies and m not in done]
        if fresh:
            run_id = (replay(pipeline, [bodies[m] or "" for m in fresh])
                      if action == "replayed" and replay is not None else None)
            now = db.utcnow()
            db.insert_ignore(conn, a, [{"pipeline": pipeline, "message_id": m, "action": action, "actor": actor,
                                        "run_id": run_id, "acted_at": now} for m in fresh])
        rows = conn.execute(select(a).where(a.c.pipeline == pipeline, a.c.message_id.in_(ids))).all()
    by_id = {r.message_id: r._mapping for r in rows}
    return [Action(pipeline, m, by_id[m]["action"], by_id[m]["actor"], by_id[m]["run_id"],
                   by_id[m]["acted_at"].isoformat(), m in fresh) for m in ids if m in by_id]


# --- drift ----------------------------------------------------------------------------------------------------
def kafka_drift(partitions: Sequence[Mapping[str, Any]], group: str, in_airflow: int = 0) -> dict[str, Any]:
    """Broker's committed offset against what the runs settled (``settled_through``), per partition, in words;
    ``in_airflow``: the records Airflow holds past the committed offset (waiting asset events, active runs)."""
    held = ([f"Airflow holds {in_airflow} record(s) past the committed offset (waiting asset events and active "
             "runs); they are committed once their runs settle them"] if in_airflow else [])
    behind, ahead, lost = [], [], []
    for p in partitions:
        committed, mark = p.get("committed"), p.get("settled_through")
        name = f"{p['topic']}[{p['partition']}]"
        if mark is None:
            continue
        if committed is None:
            lost.append(f"{name}: none (runs settled through {mark})")
        elif committed < mark:
            behind.append(f"{name}: committed {committed}, settled through {mark}")
        elif committed > mark:
            ahead.append(f"{name}: committed {committed}, settled through {mark}")
    if not (behind or ahead or lost):
        return {"state": "in step", "verdict": "The broker's committed offsets match what the runs settled.",
                "details": held}
    words, action = [], []
    if behind:
        words.append("the broker's committed offset is behind what the runs settled: a restarted watcher reads those "
                     "records again (each sink applies them once)")
        action.append("the next run commits again; or reset the group's offsets to the settled offset with the DAG "
                      "paused")
    if ahead:
        words.append("the committed offset is ahead of what the runs settled: unless the offsets between are "
                     "transaction markers or compacted, the watcher will not read those records")
        action.append(f"pause the DAG and reset group {group} to the settled offset (kafka-consumer-groups "
                      "--reset-offsets --to-offset), then unpause")
    if lost:
        words.append("the broker has no committed offset for the group: the watcher resumes from the offsets the "
                     "runs recorded")
    return {"state": "drift", "verdict": "; ".join(words).capitalize() + ".", "action": "; ".join(action) or None,
            "details": behind + ahead + lost + held}


def sqs_drift(in_flight: int | None, held: int, waiting: int) -> dict[str, Any]:
    """SQS in-flight count against the messages Airflow holds (waiting asset events and active runs)."""
    if in_flight is None:
        return {"state": "unknown", "verdict": "The queue could not be asked.", "details": []}
    airflow = held + waiting
    if in_flight == airflow:
        return {"state": "in step", "verdict": f"{in_flight} in flight, all held by Airflow.", "details": []}
    if in_flight > airflow:
        return {"state": "drift", "verdict": f"{in_flight - airflow} message(s) in flight that no waiting event or "
                "active run holds: a watcher lingering before its event, or a run that ended without deleting; "
                "they are received again when their visibility timeout ends.",
                "action": "none needed if it clears within the visibility timeout", "details": []}
    return {"state": "drift", "verdict": f"Airflow holds {airflow - in_flight} message(s) more than the queue has in "
            "flight: deleted by another consumer, or their visibility ended and they are visible again (delivered "
            "twice; each sink applies them once).",
            "action": "none needed; if it persists, check for another consumer of the queue", "details": []}


# --- everything at once ------------------------------------------------------------------------------------------
def overview(session: Session, events: Engine | None) -> list[dict[str, Any]]:
    """One section per (watcher, DAG): broker, Airflow, message age and rate, dead letters of the last day, drift."""
    sections = []
    since = db.utcnow() - timedelta(days=1)
    for w in watchers(session):
        broker: dict[str, Any] = (kafka_figures(w, events) if w.broker == "kafka" else sqs_figures(w)
                                  if w.broker == "sqs" else {"error": "not a queue watcher"})
        for dag_id in w.dag_ids or ("",):
            section: dict[str, Any] = {"dag_id": dag_id, "asset": w.asset, "watcher": w.name,
                                       "trigger": w.classpath.rsplit(".", 1)[-1], "broker_kind": w.broker,
                                       "broker": broker}
            if dag_id:
                section["airflow"] = airflow_figures(session, w, dag_id)
                if events is not None:
                    section["runs"] = run_figures(events, dag_id)
                    section["dead_letters_24h"] = dead_letters_since(events, dag_id, since)
                if "error" in broker:
                    section["drift"] = {"state": "unknown", "verdict": "The broker is unreachable.", "details": []}
                elif w.broker == "kafka":
                    held = held_by_active_runs(session, dag_id) + section["airflow"]["waiting_messages"]
                    section["drift"] = kafka_drift(broker["partitions"], str(broker["group"]), held)
                elif w.broker == "sqs":
                    section["drift"] = sqs_drift(broker.get("in_flight"), held_by_active_runs(session, dag_id),
                                                 section["airflow"]["waiting_messages"])
            sections.append(section)
    return sections


def render_text(sections: Sequence[Mapping[str, Any]]) -> str:
    """The overview as ``make status`` prints it."""
    lines = []
    for s in sections:
        b, a, r = s["broker"], s.get("airflow", {}), s.get("runs", {})
        lines.append(f"{s['dag_id'] or '(no DAG)'}  <- {s['asset']} ({s['trigger']})")
        if "error" in b:
            lines.append(f"  broker    {b['error']}")
        elif s["broker_kind"] == "sqs":
            dlq = f", DLQ {b['dlq']} {b['dlq_visible']}" if "dlq" in b else ""
            lines.append(f"  broker    {b['queue']}: visible {b['visible']}, in flight {b['in_flight']}, "
                         f"delayed {b['delayed']}{dlq}")
        else:
            parts = ", ".join(f"{p['topic']}[{p['partition']}] end {p['end']} committed {p['committed']} "
                              f"lag {p['lag']}" for p in b["partitions"])
            lines.append(f"  broker    group {b['group']}: lag {b['lag']} ({parts})")
        if a:
            lines.append(f"  airflow   waiting events {a['waiting_events']} ({a['waiting_messages']} messages), runs "
                         f"queued {a['runs_queued']}, running {a['runs_running']}")
        if r:
            lines.append(f"  runs      last {r['runs']}: message age p50 {r['age_p50_s']} s, p95 {r['age_p95_s']} s;"
                         f" {r['messages_per_s']} msg/s over {RATE_WINDOW_S // 60} min; dead letters (24 h) "
                         f"{s.get('dead_letters_24h', 0)}")
        if "drift" in s:
            lines.append(f"  drift     {s['drift']['state']}: {s['drift']['verdict']}")
            lines += [f"            {d}" for d in s["drift"]["details"][:5]]
    return "\n".join(lines)


def main() -> None:
    """``python -m event_streams.pipelines.streams``: the overview in the terminal, with Airflow's configuration of
    this environment (``make status`` runs it on the native stack; in Astro, ``astro dev bash`` then this)."""
    import logging

    from airflow.utils.session import create_session

    from event_streams.pipelines.streams_api import events_engine

    logging.getLogger("airflow.providers.amazon").setLevel(logging.WARNING)  # "credentials retrieved from ..." lines
    with create_session() as session:
        print(render_text(overview(session, events_engine())))


if __name__ == "__main__":
    main()
