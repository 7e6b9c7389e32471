"""``now()`` on SQLite with the plugin's override: a row stamped a few milliseconds ago is due, one stamped later is
not (``CURRENT_TIMESTAMP`` made both wait for the next whole second); PostgreSQL's SQL is unchanged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Column, MetaData, Table, create_engine, func, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import TIMESTAMP

from event_streams import sqlite_clock


def test_a_run_after_a_few_milliseconds_ago_is_due_at_once_and_a_later_one_is_not() -> None:
    table = Table("runs", MetaData(), Column("run_after", TIMESTAMP(timezone=True)))
    engine = create_engine("sqlite://")
    table.metadata.create_all(engine)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"run_after": now - timedelta(milliseconds=20)},
                                      {"run_after": now + timedelta(seconds=2)}])
        due = conn.execute(select(table.c.run_after).where(table.c.run_after <= func.now())).scalars().all()
        db_now = conn.execute(select(func.now())).scalar_one()
    assert [d.replace(tzinfo=UTC) for d in due] == [now - timedelta(milliseconds=20)]
    assert db_now.microsecond % 1000 == 0 and abs(db_now.replace(tzinfo=UTC) - now) < timedelta(seconds=5)


def test_the_override_is_sqlite_only() -> None:
    assert sqlite_clock.SQLITE_NOW in str(select(func.now()).compile(create_engine("sqlite://")))
    assert "now()" in str(select(func.now()).compile(dialect=postgresql.dialect()))
