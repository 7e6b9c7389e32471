"""The provider's tables in the events database: created safely when several first tasks arrive together on a fresh
database (a deploy: none of them may fail), and written with ``insert_ignore``.

PostgreSQL creates them in one transaction under an advisory lock (the others wait, then find them); SQLite's
check-then-create can lose the race to a concurrent ``CREATE TABLE`` (or find its read lock not upgradable:
"database is locked", at once), and is then simply run again.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Engine, MetaData, Table, text
from sqlalchemy.dialects import postgresql, sqlite

RETRYABLE = ("already exists", "duplicate", "unique", "database is locked")
_ready: dict[str, weakref.WeakSet[Engine]] = {}  # lock name -> the engines whose tables this process created


def create_all(metadata: MetaData, engine: Engine, lock_name: str, attempts: int = 10) -> None:
    """``metadata.create_all(checkfirst=True)``, safe from concurrent callers on SQLite and PostgreSQL."""
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

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


def insert_ignore(conn: Any, table: Table, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert ``rows``, leaving any whose key is already there (``ON CONFLICT DO NOTHING``, PostgreSQL or SQLite);
    returns how many were new."""
    if not rows:
        return 0
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    return max(conn.execute(insert(table).on_conflict_do_nothing(), list(rows)).rowcount, 0)
