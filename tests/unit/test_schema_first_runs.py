"""The pipelines' first tasks create the events schema at the same moment (a fresh deploy): none of them may fail.

Real processes started together behind a barrier, as three first tasks are: on a real SQLite file, and on a private
PostgreSQL server (Debian's binaries, a free loopback port; skipped without them, failed under CI). Before the fix,
16 of 24 such tasks on SQLite failed with ``table dead_letters already exists`` or ``database is locked``.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text


def _first_task(url: str, barrier: multiprocessing.synchronize.Barrier, errors: multiprocessing.Queue) -> None:
    from event_streams.pipelines import db
    from include.data_delivery_etl import tables as _etl  # noqa: F401
    from include.inference_execution import tables as _inference  # noqa: F401
    from include.iot_alerting import tables as _iot  # noqa: F401

    engine = db.configure_sqlite(create_engine(url))
    barrier.wait()
    try:
        db.ensure_schema(engine)
    except Exception as exc:  # what failed the task before
        errors.put(f"{type(exc).__name__}: {exc}"[:300])


def _race(urls: list[str]) -> list[str]:
    """Three first tasks per fresh database; what failed."""
    from event_streams.pipelines import db

    ctx = multiprocessing.get_context("fork")
    failures: list[str] = []
    for url in urls:
        barrier, errors = ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=_first_task, args=(url, barrier, errors)) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        while not errors.empty():
            failures.append(errors.get())
        assert set(inspect(create_engine(url)).get_table_names()) >= {t.name for t in db.metadata.sorted_tables}
    return failures


def test_three_first_tasks_creating_the_schema_at_once_all_succeed_on_sqlite(tmp_path: Path) -> None:
    assert _race([f"sqlite:///{tmp_path / f'events-{i}.db'}" for i in range(8)]) == []


def test_three_first_tasks_creating_the_schema_at_once_all_succeed_on_postgresql(tmp_path: Path) -> None:
    from devstack import postgres

    reason = postgres.unavailable_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is needed in CI: {reason}")
        pytest.skip(reason)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp_path / "pg"
    base = postgres.start(data, tmp_path / "pg.log", port)
    try:
        admin = create_engine(base, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for i in range(5):
                conn.execute(text(f"CREATE DATABASE events_{i}"))
        admin.dispose()
        assert _race([base.rsplit("/", 1)[0] + f"/events_{i}" for i in range(5)]) == []
    finally:
        postgres.stop(data)
