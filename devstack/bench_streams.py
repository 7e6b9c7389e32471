"""``make bench-streams``: how fast the streams page's dead-letter reads stay as the table grows (a real SQLite events
database; PostgreSQL with ``--db postgres``, a private server from Debian's binaries). Prints a table of the median
time of each read over several calls, per table size.

    python -m devstack.bench_streams --rows 100000 1000000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text

from event_streams.pipelines import db, streams
from include.data_delivery_etl import tables as _etl_tables  # noqa: F401  (every pipeline's tables on db.metadata)
from include.inference_execution import tables as _inference_tables  # noqa: F401
from include.iot_alerting import tables as _iot_tables  # noqa: F401

PIPELINES = ("data_delivery_etl", "iot_alerting", "inference_execution")
REASONS = ("checksum mismatch", "not JSON", "field required", "value out of range", "file does not exist")
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def fill(engine: Engine, rows: int, already: int) -> None:
    """Dead letters ``already`` .. ``rows`` - 1: one a second from T0, pipelines and reasons in turn, 200-byte bodies."""
    body = '{"reading": ' + "9" * 186 + "}"
    chunk = 20_000
    with engine.begin() as conn:
        for start in range(already, rows, chunk):
            conn.execute(db.dead_letters.insert(), [
                {"pipeline": PIPELINES[i % 3], "message_id": f"m-{i}", "source": "sqs",
                 "reason": f"message m-{i}: {REASONS[i % len(REASONS)]}", "body": body,
                 "recorded_at": T0 + timedelta(seconds=i)} for i in range(start, min(rows, start + chunk))])


def timed(call: Callable[[], Any], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def reads(engine: Engine, rows: int) -> dict[str, Callable[[], Any]]:
    middle = T0 + timedelta(seconds=rows // 2)
    return {
        "newest 50": lambda: streams.dead_letters(engine),
        "one DAG, newest 50": lambda: streams.dead_letters(engine, pipeline="iot_alerting"),
        "older page (middle)": lambda: streams.dead_letters(engine, before=middle),
        "reason contains (common)": lambda: streams.dead_letters(engine, reason="not JSON"),
        "reason contains (absent)": lambda: streams.dead_letters(engine, reason="no such reason", limit=50),
        "count, last 24 h": lambda: streams.dead_letters_since(engine, "iot_alerting",
                                                               T0 + timedelta(seconds=rows - 86400)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-streams-") as home:
        if args.db == "postgres":
            from devstack import postgres

            url = postgres.start(Path(home) / "pg", Path(home) / "pg.log", 5434)
        else:
            url = f"sqlite:///{Path(home) / 'events.db'}"
        try:
            engine = db.configure_sqlite(create_engine(url)) if args.db == "sqlite" else create_engine(url)
            db.ensure_schema(engine)
            names = list(reads(engine, 1))
            print(f"{'dead letters':>12}  " + "  ".join(f"{n:>24}" for n in names) + "   (ms, median of 5)")
            filled = 0
            for rows in sorted(args.rows):
                fill(engine, rows, filled)
                filled = rows
                with engine.begin() as conn:
                    conn.execute(text("ANALYZE"))
                figures = [timed(call) for call in reads(engine, rows).values()]
                print(f"{rows:>12,}  " + "  ".join(f"{f:>24.1f}" for f in figures), flush=True)
            engine.dispose()
        finally:
            if args.db == "postgres":
                postgres.stop(Path(home) / "pg")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
