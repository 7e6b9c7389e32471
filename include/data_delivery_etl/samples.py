"""Sample deliveries and the sink check of the data-delivery ETL, for the lab (``devstack``), which finds ``SAMPLES``.

``messages`` writes each delivery's CSV into the landing folder and yields its notice; ``poison`` adds to the
common poison set two valid notices with bad files; ``check`` counts the loaded orders and the quarantined files.
No Airflow, no broker: the lab sends the bodies.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from event_streams.pipelines.samples_api import (
    PRODUCER,
    QUARANTINE,
    DemoLoad,
    Option,
    PipelineSamples,
    Record,
    Sample,
    SinkCheck,
    SinkReader,
    dead,
    good_records,
    iso,
    poison_id,
    poison_set,
    present,
    to_json,
    utcnow,
)
from include.data_delivery_etl import settings, tables
from include.data_delivery_etl.pipeline import render_csv
from include.data_delivery_etl.schemas import CSV_HEADER, DeliveryNotice

DEFAULT_LANDING_DIR = settings.DATA_DIR / "landing"  # where the pipeline reads by default (ETL_LANDING_ROOTS)


def landing_dir_or_default(landing_dir: Path | str | None) -> Path:
    return Path(landing_dir or os.environ.get("LANDING_DIR") or DEFAULT_LANDING_DIR)


def landing_uri_prefix_for(landing_dir: Path) -> str:
    return Path(landing_dir).resolve().as_uri()


def _join_uri(prefix: str, name: str) -> str:
    return f"{prefix.rstrip('/')}/{name}"


def order_row(rng: random.Random, order_id: str, now: datetime) -> dict[str, str]:
    """One CSV row (keys: ``CSV_HEADER``) that ``OrderRow`` accepts."""
    ordered_at = (now - timedelta(minutes=rng.randint(1, 600))).replace(microsecond=0)
    values = (
        order_id,
        f"c-{rng.randint(1, 500)}",
        f"{rng.randint(100, 50_000) / 100:.2f}",
        rng.choice(("EUR", "USD", "GBP")),
        ordered_at.isoformat(),
    )
    return dict(zip(CSV_HEADER, values, strict=True))


def messages(
    run_id: str, count: int, *, seed: int | None = None, rows: int = 5, landing_dir: Path | str | None = None,
    landing_uri_prefix: str | None = None, now: Callable[[], datetime] = utcnow,
) -> Iterator[Sample]:
    """Deliveries ``d-<run_id>-<i>`` of ``rows`` orders each: writes each CSV into ``landing_dir`` and yields its
    ``DeliveryNotice`` (built when consumed); ``expect``: ``{"orders": [order ids]}``."""
    rng = random.Random(seed)
    landing = landing_dir_or_default(landing_dir)
    landing.mkdir(parents=True, exist_ok=True)
    prefix = landing_uri_prefix or landing_uri_prefix_for(landing)
    for i in range(count):
        delivery_id = f"d-{run_id}-{i}"
        orders = [order_row(rng, f"o-{run_id}-{i}-{j}", now()) for j in range(rows)]
        data = render_csv(orders)
        name = f"{delivery_id}.csv"
        (landing / name).write_bytes(data)
        notice = DeliveryNotice(
            delivery_id=delivery_id, uri=_join_uri(prefix, name), sha256=hashlib.sha256(data).hexdigest(),
            row_count=len(orders), producer=PRODUCER, delivered_at=now(),
        )
        yield Sample(delivery_id, to_json(notice), {"orders": [o["order_id"] for o in orders]})


def poison(
    run_id: str, *, landing_dir: Path | str | None = None, landing_uri_prefix: str | None = None,
    now: Callable[[], datetime] = utcnow, **_: Any,
) -> list[Sample]:
    """The common poison set (bad bodies) and two valid notices whose files are bad (``_file_poison``)."""
    good: dict[str, Any] = {"delivery_id": poison_id(run_id, "x"), "uri": "file:///nonexistent/poison.csv",
                            "sha256": "0" * 64, "row_count": 1, "producer": PRODUCER, "delivered_at": iso(now())}
    return poison_set(
        run_id, "sqs", model="DeliveryNotice",
        wrong_type=({**good, "delivery_id": poison_id(run_id, "wrong_type"), "row_count": "5"},
                    "row_count: Input should be a valid integer"),
        out_of_range=({**good, "delivery_id": poison_id(run_id, "out_of_range"), "row_count": -1},
                      "row_count: Input should be greater than or equal to 0"),
        extra=_file_poison(run_id, landing_dir_or_default(landing_dir), landing_uri_prefix, now),
    )


def _file_poison(
    run_id: str, landing_dir: Path, landing_uri_prefix: str | None, now: Callable[[], datetime]
) -> list[Sample]:
    """Valid notices whose files are bad: one never written (quarantined), one truncated after its checksum was
    taken (dead-lettered as a checksum mismatch, the file left in place). Ids ``d-<run_id>-missing-file`` and
    ``d-<run_id>-truncated-file``."""
    landing_dir.mkdir(parents=True, exist_ok=True)
    prefix = landing_uri_prefix or landing_uri_prefix_for(landing_dir)
    rng = random.Random(run_id)
    out = []
    for kind, reason in (("missing_file", "does not exist"), ("truncated_file", "checksum mismatch")):
        delivery_id = f"d-{run_id}-{kind.replace('_', '-')}"
        orders = [order_row(rng, f"o-{run_id}-{kind.replace('_', '-')}-{j}", now()) for j in range(4)]
        data = render_csv(orders)
        name = f"{delivery_id}.csv"
        if kind == "truncated_file":
            (landing_dir / name).write_bytes(data[: len(data) // 2])  # the upload broke off half way
        notice = DeliveryNotice(delivery_id=delivery_id, uri=_join_uri(prefix, name),
                                sha256=hashlib.sha256(data).hexdigest(), row_count=len(orders), producer=PRODUCER,
                                delivered_at=now())
        # a truncated file's checksum is not the notice's: dead-lettered, the file left in place (never moved)
        expect = dead(reason) if kind == "truncated_file" else {QUARANTINE: reason}
        out.append(Sample(delivery_id, to_json(notice), expect))
    return out


def _quarantined(events: Engine) -> dict[str, str]:
    t = tables.etl_quarantine
    with events.connect() as conn:
        return dict(conn.execute(select(t.c.delivery_id, t.c.reason)).all())


def check(events: Engine, records: Sequence[Record], reader: SinkReader) -> SinkCheck:
    """Each quarantine expected (by delivery id, with its reason) and every order of the good deliveries loaded."""
    out = SinkCheck()
    quarantined = _quarantined(events)
    for r in records:
        want = r["expect"].get(QUARANTINE)
        if want is not None and want not in quarantined.get(r["id"], ""):
            out.missing.append(f"quarantine of {r['id']} with reason containing {want!r}")
    order_ids = [o for r in good_records(records) for o in r["expect"]["orders"]]
    found = present(events, tables.orders.c.order_id, order_ids)
    out.rows = len(found)
    out.outputs["quarantined"] = sum(1 for r in records if r["id"] in quarantined)
    if len(found) < len(order_ids):
        out.missing.append(f"{len(order_ids) - len(found)} of {len(order_ids)} orders not loaded")
    return out


SAMPLES = PipelineSamples(
    name="etl",
    dag_id="data_delivery_etl",
    broker="sqs",
    source=settings.DELIVERY_QUEUE,
    dlq=settings.DELIVERY_DLQ,
    messages=messages,
    poison=poison,
    check=check,
    options=(
        Option("rows", int, 5, "orders per delivered file (default 5)", minimum=0),
        Option("landing_dir", Path, None,
               f"where the files are written (default: $LANDING_DIR or {DEFAULT_LANDING_DIR})", env="LANDING_DIR"),
        Option("landing_uri_prefix", str, None,
               "URI of the landing dir as Airflow sees it (default: its file:// URI here)"),
    ),
    demo=(DemoLoad(10, 5, {"rows": 5}),),
)
