"""Per-run figures: how long a run's messages waited (producer timestamp -> run start) and the batch size.

Written to the task log and to ``pipeline_run_stats`` so users see the same figure in production.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from datetime import datetime, timezone

from sqlalchemy import Engine

from event_streams.pipelines import db
from event_streams.pipelines.messages import CONTENT_ERRORS, Envelope


def produced_at(envelope: Envelope, body_field: str | None) -> datetime | None:
    """The producer's timestamp: the Kafka record timestamp, else an ISO-8601 field of the JSON body.

    None for messages replayed by hand (a manual run's conf): their wait says nothing about the pipeline.
    """
    if envelope.source == "manual":
        return None
    if envelope.broker_timestamp_ms is not None:
        try:
            return datetime.fromtimestamp(envelope.broker_timestamp_ms / 1000, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):  # a broker timestamp no datetime holds: no wait to report
            return None
    if body_field is None or not envelope.body:
        return None
    try:
        value = json.loads(envelope.body).get(body_field)
        stamp = datetime.fromisoformat(value) if isinstance(value, str) else None
    except CONTENT_ERRORS + (AttributeError,):  # a hostile body has no usable timestamp; it is dead-lettered later
        return None
    return stamp if stamp is not None and stamp.tzinfo is not None else None


def waits(run_start: datetime, envelopes: Sequence[Envelope], body_field: str | None) -> list[float]:
    """Each message's wait in seconds (producer timestamp -> run start), in the run's order. A producer timestamp
    after the run started says nothing about the wait (a skewed or hostile clock): left out, like a missing one."""
    stamps = (produced_at(e, body_field) for e in envelopes)
    return [(run_start - t).total_seconds() for t in stamps if t is not None and t <= run_start]


def summarize(
    run_start: datetime, envelopes: Sequence[Envelope], body_field: str | None
) -> dict[str, float | int | None]:
    return summary_of(len(envelopes), waits(run_start, envelopes, body_field))


def summary_of(messages: int, run_waits: Sequence[float]) -> dict[str, float | int | None]:
    """The run's batch size and the median and longest wait of its messages."""
    waits = sorted(run_waits)
    return {
        "messages": messages,
        "wait_p50_s": round(statistics.median(waits), 3) if waits else None,
        "wait_max_s": round(waits[-1], 3) if waits else None,
    }


def record(engine: Engine, dag_id: str, run_id: str, summary: dict[str, float | int | None]) -> None:
    with engine.begin() as conn:
        db.upsert(conn, db.run_stats, [{"dag_id": dag_id, "run_id": run_id, "recorded_at": db.utcnow(), **summary}])
