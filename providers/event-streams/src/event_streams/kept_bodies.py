"""The bodies of SQS messages too large to ride in an asset event, kept in the events database (``kept_bodies``).

The streaming SQS trigger writes each one here (``keep``) before the event that names it goes out, so the run can
delete the source message and still dead-letter its original content (``bodies``). Keyed on the message id and the
queue, never on a receipt handle: a redelivery inserts nothing new. Imported at run time only (trigger and task).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Engine, MetaData, String, Table, Text, inspect, select

from event_streams import payload, schema

TABLE = payload.KEPT_BODIES_TABLE  # also the marker's value in an event's message (``payload.BODY_KEPT_IN``)
LOOKUP_CHUNK = schema.IN_CHUNK  # message ids per ``IN (...)`` query

metadata = MetaData()

kept_bodies = Table(
    TABLE,
    metadata,
    Column("message_id", String(256), primary_key=True),  # first: looked up by message id
    Column("source_queue", String(1024), primary_key=True),  # the queue URL the trigger received it from
    Column("body", Text, nullable=False),  # the body as SQS delivered it (SQS bodies are XML text: no NUL)
    Column("body_bytes", BigInteger, nullable=False),  # its size in UTF-8 bytes
    Column("received_at", DateTime(timezone=True), nullable=False),  # first reception (UTC)
)


def ensure_schema(engine: Engine) -> None:
    """Create ``kept_bodies`` if it is missing (idempotent; safe from callers arriving together)."""
    schema.create_all(metadata, engine, "event_streams.kept_bodies")


def _ready(engine: Engine) -> Engine:
    """``engine`` with ``kept_bodies`` created, once per engine in this process."""
    return schema.ready(metadata, engine, "event_streams.kept_bodies")


def keep(engine: Engine, source_queue: str, messages: Sequence[tuple[str, str]]) -> int:
    """Store ``(message_id, body)`` pairs of ``source_queue`` durably (committed on return); a pair already kept
    (a redelivery) is left as it is. Returns how many were new. Raises on any database error: the caller must then
    not hand the messages on."""
    if not messages:
        return 0
    now = datetime.now(timezone.utc)
    rows = [{"message_id": mid, "source_queue": source_queue, "body": body,
             "body_bytes": len(body.encode("utf-8", "surrogatepass")), "received_at": now}
            for mid, body in dict(messages).items()]
    with _ready(engine).begin() as conn:
        return schema.insert_ignore(conn, kept_bodies, rows)


def bodies(conn: Any, message_ids: Iterable[str]) -> dict[str, str]:
    """The kept bodies of ``message_ids`` (a ``Connection`` or ``Engine``), ``{message_id: body}``; ids never kept
    are left out, and so is everything when the table does not exist (no trigger ever kept a body there). One
    query per ``LOOKUP_CHUNK`` ids."""
    ids = sorted(set(message_ids))
    if not ids:
        return {}
    if isinstance(conn, Engine):
        with conn.connect() as c:
            return bodies(c, ids)
    if not inspect(conn).has_table(TABLE):
        return {}
    t = kept_bodies
    found: dict[str, str] = {}
    for chunk in schema.chunked(ids, LOOKUP_CHUNK):
        for mid, body in conn.execute(select(t.c.message_id, t.c.body).where(t.c.message_id.in_(chunk))):
            found.setdefault(mid, body)
    return found
