"""The provider's tables in the events database, and the SQL helpers the project's pipelines share with it.

Tables are created safely when several first tasks arrive together on a fresh database (a deploy: none of them may
fail). Writes go through ``dialect_insert`` / ``insert_ignore`` (PostgreSQL or SQLite), reads of many keys through
``chunked`` (bounded ``IN (...)`` lists).

PostgreSQL creates them in one transaction under an advisory lock (the others wait, then find them); SQLite's
check-then-create can lose the race to a concurrent ``CREATE TABLE`` (or find its read lock not upgradable:
"database is locked", at once), and is then simply run again.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, MetaData, Table, insert, text
from sqlalchemy.dialects import postgresql, sqlite

T = TypeVar("T")
IN_CHUNK = 500  # keys per ``IN (...)`` list: well under SQLite's 32,766 bound parameters and PostgreSQL's 65,535

RETRYABLE = ("already exists", "duplicate", "unique", "database is locked")
_ready: dict[str, weakref.WeakSet[Engine]] = {}  # lock name -> the engines whose tables this process created


def create_all(metadata: MetaData, engine: Engine, lock_name: str, attempts: int = 10) -> None:
    """``metadata.create_all(checkfirst=True)``, safe from concurrent callers on SQLite and PostgreSQL. A SQLite
    file's folder is created first if missing (SQLite creates the file, not its folder)."""
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        Path(engine.url.database).parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(attempts):
        try:
            with engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": lock_name})
                metadata.create_all(conn, checkfirst=True)
            return
        except (OperationalError, ProgrammingError, IntegrityError) as exc:  # another caller created a table first
            if attempt == attempts - 1 or not any(w in str(exc).lower() for w in RETRYABLE):
                raise
            time.sleep(0.05 * (attempt + 1))


def ready(metadata: MetaData, engine: Engine, lock_name: str) -> Engine:
    """``engine``, with ``metadata``'s tables created (``create_all``) once per engine and ``lock_name`` in this
    process."""
    done = _ready.setdefault(lock_name, weakref.WeakSet())
    if engine not in done:
        create_all(metadata, engine, lock_name)
        done.add(engine)
    return engine


def dialect_insert(conn: Any, table: Table) -> Any:
    """``INSERT INTO table`` in the connection's dialect (PostgreSQL, else SQLite): the construct that takes
    ``on_conflict_do_nothing`` / ``on_conflict_do_update``."""
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


def insert_ignore_statement(dialect: str, table: Table) -> Any:
    """An insert that leaves rows whose key is already there: ``ON CONFLICT DO NOTHING`` (PostgreSQL, SQLite),
    ``INSERT IGNORE`` (MySQL, for Airflow's own metadata database)."""
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    return insert(table).prefix_with("IGNORE")


def insert_ignore(conn: Any, table: Table, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert ``rows``, leaving any whose key is already there (``ON CONFLICT DO NOTHING``, PostgreSQL or SQLite);
    returns how many were new."""
    if not rows:
        return 0
    return max(conn.execute(dialect_insert(conn, table).on_conflict_do_nothing(), list(rows)).rowcount, 0)


def chunked(items: Iterable[T], size: int = IN_CHUNK) -> list[list[T]]:
    """``items`` in lists of at most ``size``, in order (bounded ``IN (...)`` lists, SQS's batches of 10...)."""
    values = list(items)
    return [values[i : i + size] for i in range(0, len(values), size)]
