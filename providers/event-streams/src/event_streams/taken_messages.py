"""Which SQS messages a run has taken, in the events database (``taken_messages``).

The streaming SQS trigger keeps the messages it handed out invisible until their run takes them (the run may be
queued behind ``max_active_runs`` for longer than the visibility budget); from then on the task that holds them
extends their visibility itself. A run's first task ``mark``s the messages it takes; the trigger asks which of its
messages were ``taken`` and ``forget``s those. Keyed on the message id and the queue. Imported at run time only.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

from sqlalchemy import Column, DateTime, Engine, MetaData, String, Table, delete, select

from event_streams import schema

metadata = MetaData()

taken_messages = Table(
    "taken_messages",
    metadata,
    Column("message_id", String(256), primary_key=True),
    Column("source_queue", String(1024), primary_key=True),  # the queue URL the trigger received it from
    Column("taken_at", DateTime(timezone=True), nullable=False, index=True),  # UTC
)


def _ready(engine: Engine) -> Engine:
    return schema.ready(metadata, engine, "event_streams.taken_messages")


def mark(engine: Engine, source_queue: str, message_ids: Iterable[str]) -> int:
    """Record that a run took these messages of ``source_queue`` (committed on return); returns how many were new."""
    now = datetime.now(timezone.utc)
    rows = [{"message_id": mid, "source_queue": source_queue, "taken_at": now} for mid in sorted(set(message_ids))]
    with _ready(engine).begin() as conn:
        return schema.insert_ignore(conn, taken_messages, rows)


def taken(engine: Engine, source_queue: str, message_ids: Iterable[str]) -> set[str]:
    """The ids among ``message_ids`` that a run of ``source_queue`` has taken."""
    t = taken_messages
    found: set[str] = set()
    with _ready(engine).connect() as conn:
        for chunk in schema.chunked(sorted(set(message_ids))):
            found.update(conn.execute(select(t.c.message_id).where(
                t.c.source_queue == source_queue, t.c.message_id.in_(chunk))).scalars())
    return found


def forget(engine: Engine, source_queue: str, message_ids: Iterable[str], older_than: timedelta) -> None:
    """Delete these rows of ``source_queue``, and every row of it taken more than ``older_than`` ago (taken by a
    run whose trigger is gone, or by a manual run)."""
    t = taken_messages
    cutoff = datetime.now(timezone.utc) - older_than
    with _ready(engine).begin() as conn:
        for chunk in schema.chunked(sorted(set(message_ids))):
            conn.execute(delete(t).where(t.c.source_queue == source_queue, t.c.message_id.in_(chunk)))
        conn.execute(delete(t).where(t.c.source_queue == source_queue, t.c.taken_at < cutoff))
