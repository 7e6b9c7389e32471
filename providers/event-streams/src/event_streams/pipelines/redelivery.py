"""Runs that fail for good (docs/delivery-guarantees.md): their messages are delivered again, then dead-lettered.

The failure callback records each message of the run in ``message_failures``; when it comes back, the run's
first task dead-letters it with the last error once it has been in ``max_failed_runs`` failed runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select

from event_streams.pipelines import db
from event_streams.pipelines.messages import Envelope

MAX_REASON_CHARS = 1000


@dataclass(frozen=True)
class Exhausted:
    envelope: Envelope
    failed_runs: int
    reason: str


def record_failure(
    engine: Engine, dag_id: str, run_id: str, task_id: str, message_ids: Sequence[str], error: str
) -> int:
    """Note that these messages were in a run that failed for good (once per run, however many tasks failed)."""
    now = db.utcnow()
    rows = [
        {"dag_id": dag_id, "message_id": mid, "run_id": run_id, "task_id": task_id,
         "reason": error[:MAX_REASON_CHARS], "failed_at": now}
        for mid in dict.fromkeys(message_ids)
    ]
    with engine.begin() as conn:
        return db.insert_ignore(conn, db.message_failures, rows)


def failures(engine: Engine, dag_id: str, message_ids: Sequence[str]) -> dict[str, tuple[int, str]]:
    """Per message id that was in failed runs: how many, and the latest reason."""
    t = db.message_failures
    seen: dict[str, list[tuple[datetime, str]]] = {}
    with engine.connect() as conn:
        for chunk in db.chunked(sorted(set(message_ids))):
            rows = conn.execute(
                select(t.c.message_id, t.c.failed_at, t.c.reason).where(t.c.dag_id == dag_id, t.c.message_id.in_(chunk))
            )
            for mid, at, reason in rows:
                seen.setdefault(mid, []).append((at, reason))
    return {mid: (len(rs), max(rs)[1]) for mid, rs in seen.items()}


def failed_offsets(
    engine: Engine, dag_id: str, partitions: Iterable[tuple[str, int]]
) -> dict[tuple[str, int], set[int]]:
    """Per Kafka partition, the offsets of its records that were in runs of ``dag_id`` that failed for good (Kafka
    message ids are ``topic/partition/offset``)."""
    t = db.message_failures
    found: dict[tuple[str, int], set[int]] = {}
    with engine.connect() as conn:
        for topic, partition in sorted(set(partitions)):
            prefix = f"{topic}/{partition}/"
            rows = conn.execute(select(t.c.message_id).where(t.c.dag_id == dag_id, t.c.message_id.like(f"{prefix}%")))
            tails = [mid[len(prefix) :] for (mid,) in rows if mid.startswith(prefix)]
            offsets = {int(tail) for tail in tails if tail.isdigit()}
            if offsets:
                found[(topic, partition)] = offsets
    return found


def split_exhausted(
    envelopes: Sequence[Envelope], counts: Mapping[str, tuple[int, str]], max_failed_runs: int
) -> tuple[list[Envelope], list[Exhausted]]:
    """The run's messages to process, and those that already failed ``max_failed_runs`` runs (to dead-letter), from
    the ``failures`` of these messages."""
    keep: list[Envelope] = []
    done: list[Exhausted] = []
    for env in envelopes:
        n, last = counts.get(env.message_id, (0, ""))
        if n >= max_failed_runs:
            done.append(Exhausted(env, n, f"failed for good in {n} runs (limit {max_failed_runs}); last error: {last}"))
        else:
            keep.append(env)
    return keep, done
