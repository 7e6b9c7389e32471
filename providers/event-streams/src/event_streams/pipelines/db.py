"""The events database: its engine (``engine``, from an Airflow connection), shared tables and idempotent writes,
portable between SQLite (the embedded default) and PostgreSQL.

Every table is keyed on the identity of what was received and written with ``insert_ignore`` / ``upsert``, so a
redelivery, a retry or a cleared run changes nothing. Each pipeline defines its own tables on ``metadata`` in its
folder's ``tables.py``. ``record_dead_letters`` fills in the bodies the SQS trigger kept (``kept_bodies``, a table of
the event-streams provider in the same database). docs/delivery-guarantees.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from functools import cache
from typing import Any

from sqlalchemy import Column, DateTime, Engine, Float, Index, Integer, MetaData, String, Table, Text, event
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.types import TypeDecorator

from event_streams.pipelines import config
from event_streams.schema import chunked, dialect_insert, insert_ignore

metadata = MetaData()


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes from timezone-aware columns; everything is stored in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and read back timezone-aware (SQLite would keep only the wall time); naive values
    are refused."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: every stored time must carry its offset")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value).astimezone(timezone.utc)


# --- shared ----------------------------------------------------------------------------------------------------
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("pipeline", String(64), primary_key=True),
    Column("message_id", String(256), primary_key=True),
    Column("source", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("body", Text),  # the original body (base64 for bytes that are not UTF-8)
    Column("recorded_at", UtcDateTime(), nullable=False, default=utcnow),
    Index("ix_dead_letters_recorded_at", "recorded_at"),  # newest first, bounded, with a million rows
    Index("ix_dead_letters_pipeline_recorded_at", "pipeline", "recorded_at"),
)

# What an operator did with a dead letter (the streams page): replayed it (as a manual run: ``run_id``) or discarded
# it; once per dead letter, so a second click changes nothing.
dead_letter_actions = Table(
    "dead_letter_actions",
    metadata,
    Column("pipeline", String(64), primary_key=True),
    Column("message_id", String(256), primary_key=True),
    Column("action", String(16), nullable=False),  # replayed | discarded
    Column("actor", String(250), nullable=False),
    Column("run_id", String(250)),
    Column("acted_at", UtcDateTime(), nullable=False, default=utcnow),
)

# Per-run figures: how long the run's events waited (producer timestamp -> run start) and its batch size.
run_stats = Table(
    "pipeline_run_stats",
    metadata,
    Column("dag_id", String(250), primary_key=True),
    Column("run_id", String(250), primary_key=True),
    Column("messages", Integer, nullable=False),
    Column("wait_p50_s", Float),
    Column("wait_max_s", Float),
    Column("recorded_at", UtcDateTime(), nullable=False, default=utcnow),
    Index("ix_pipeline_run_stats_dag_recorded_at", "dag_id", "recorded_at"),
)

# Runs that failed for good (every retry), per message they carried: how many times a message has been in such a
# run, and why. A message that reaches MAX_FAILED_RUNS is dead-lettered with the last reason on its next delivery.
message_failures = Table(
    "message_failures",
    metadata,
    Column("dag_id", String(250), primary_key=True),
    Column("message_id", String(256), primary_key=True),
    Column("run_id", String(250), primary_key=True),
    Column("task_id", String(250), nullable=False),
    Column("reason", Text, nullable=False),
    Column("failed_at", UtcDateTime(), nullable=False, default=utcnow),
)

def ensure_schema(engine: Engine) -> None:
    """Create the tables defined on ``metadata`` (the shared ones and those of every pipeline module imported) if they
    are missing, and add the nullable columns a newer version defines to tables that exist (idempotent).

    Safe when the first tasks of several pipelines arrive together on a fresh database (``event_streams.schema``).
    """
    from event_streams import schema

    schema.create_all(metadata, engine, "event_pipelines.schema")
    add_missing_nullable_columns(engine)
    add_missing_indexes(engine)


def add_missing_indexes(engine: Engine) -> list[str]:
    """``CREATE INDEX`` for each index of ``metadata`` an existing table lacks (an events database made by an older
    version; ``create_all`` makes them only with a new table); returns the names of those created."""
    from sqlalchemy import inspect
    from sqlalchemy.exc import OperationalError, ProgrammingError

    created: list[str] = []
    inspector = inspect(engine)
    for table in metadata.sorted_tables:
        have = {i["name"] for i in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name in have:
                continue
            try:
                index.create(engine, checkfirst=True)
                created.append(str(index.name))
            except (OperationalError, ProgrammingError) as exc:  # a concurrent task created it first
                if "already exists" not in str(exc).lower():
                    raise
    return created


def add_missing_nullable_columns(engine: Engine) -> list[str]:
    """``ALTER TABLE ... ADD COLUMN`` for each nullable column of ``metadata`` an existing table lacks (an events
    database made by an older version); returns ``table.column`` of each one added."""
    from sqlalchemy import inspect
    from sqlalchemy.exc import OperationalError, ProgrammingError

    added: list[str] = []
    inspector = inspect(engine)
    existing = set(inspector.get_table_names())
    for table in metadata.sorted_tables:
        if table.name not in existing:
            continue
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in have or not column.nullable:
                continue
            ddl = f"ALTER TABLE {table.name} ADD COLUMN {column.name} {column.type.compile(engine.dialect)}"
            try:
                with engine.begin() as conn:
                    conn.exec_driver_sql(ddl)
                added.append(f"{table.name}.{column.name}")
            except (OperationalError, ProgrammingError):  # a concurrent task added it first
                if column.name not in {c["name"] for c in inspect(engine).get_columns(table.name)}:
                    raise
    return added


def configure_sqlite(engine: Engine) -> Engine:
    """WAL + a generous busy timeout so overlapping runs and mapped tasks wait for the lock instead of failing."""
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA busy_timeout=60000")  # first: switching to WAL waits for the lock too
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

    return engine


# The provider's SQL helpers (event_streams.schema), one place for the project: the dialect's insert, insert-ignore,
# and bounded IN (...) lists.
__all__ = ["chunked", "dialect_insert", "insert_ignore", "upsert"]


@cache
def engine(conn_id: str = config.DB_CONN_ID) -> Engine:
    """The events database: a SQLAlchemy engine for an Airflow SQL connection (SQLite by default, PostgreSQL or any
    DbApiHook by config), its schema created (race-safe) the first time a process asks. Tasks and callbacks only:
    the Airflow SDK is imported here, not when the module is."""
    from airflow.sdk import BaseHook

    hook = BaseHook.get_connection(conn_id).get_hook()
    eng = configure_sqlite(hook.get_sqlalchemy_engine())
    ensure_schema(eng)
    return eng


def upsert(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert rows, replacing the non-key columns of rows whose primary key exists."""
    if not rows:
        return
    stmt = dialect_insert(conn, table)
    keys = [c.name for c in table.primary_key.columns]
    updates = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
    conn.execute(stmt.on_conflict_do_update(index_elements=keys, set_=updates), list(rows))


def record_dead_letters(conn: Connection, pipeline: str, letters: Iterable[Mapping[str, Any]]) -> int:
    """Keep each poison message once per pipeline with its reason and original body.

    The one place every pipeline's dead letters are written: an SQS letter without a body (the trigger left an
    oversize body out of the event) gets the body the streaming trigger kept (``event_streams.kept_bodies``), found
    by message id in one bounded query per 500 such letters; it stays ``NULL`` when none was kept."""
    rows = [{"pipeline": pipeline, "recorded_at": utcnow(), **letter} for letter in letters]
    missing = [r["message_id"] for r in rows if r.get("body") is None and r.get("source") == "sqs"]
    if missing:
        from event_streams import kept_bodies

        kept = kept_bodies.bodies(conn, missing)
        rows = [{**r, "body": kept[r["message_id"]]} if r.get("body") is None and r["message_id"] in kept else r
                for r in rows]
    return insert_ignore(conn, dead_letters, rows)
