"""Hostile input on the real stack: messages nobody planned for, across the three pipelines.

Each kind is published between good messages. For each: the dead letter (or quarantine) with its reason, nothing
outside the pipeline's areas touched (checked on the file system), and every good message around it processed.
The table of kinds and outcomes is in docs/hostile-input.md.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select

from devstack import publish
from devstack.testing import Stack
from event_streams.pipelines import db
from event_streams.pipelines.samples_api import Sample
from include.data_delivery_etl import tables as etl_tables
from include.data_delivery_etl.pipeline import render_csv
from include.inference_execution import tables as inference_tables
from include.iot_alerting import tables as iot_tables

MAX_FILE = 1024 * 1024
# A small file limit so that the "huge file" case needs only a few MiB on disk.
STACK_ENV = {"ETL_MAX_FILE_BYTES": str(MAX_FILE)}


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _dead(reason: str) -> dict[str, str]:
    return {"dead_letter_reason_contains": reason}


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (symlinks not followed) with the SHA-256 of its content."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _notice(delivery_id: str, uri: str, data: bytes = b"x", rows: int = 1, sha: str | None = None,
            delivered_at: datetime | None = None) -> bytes:
    return json.dumps({"delivery_id": delivery_id, "uri": uri, "sha256": sha or hashlib.sha256(data).hexdigest(),
                       "row_count": rows, "producer": "hostile",
                       "delivered_at": (delivered_at or _now()).isoformat()}).encode()


def _orders_csv(prefix: str, ordered_at: str = "2026-11-24T08:00:00Z") -> bytes:
    return render_csv([{"order_id": f"{prefix}-1", "customer_id": "c-1", "amount": "1.00", "currency": "EUR",
                        "ordered_at": ordered_at}])


def test_hostile_deliveries_are_dead_lettered_or_quarantined_and_touch_nothing_outside(stack: Stack, report_line) -> None:
    data_dir = Path(stack.info["DEVSTACK_DATA"])
    landing, quarantine = Path(stack.info["LANDING_DIR"]), Path(stack.info["QUARANTINE_URI"].removeprefix("file://"))
    landing.mkdir(parents=True, exist_ok=True)
    outside = data_dir / "outside"
    outside.mkdir(exist_ok=True)
    canary = outside / "canary.csv"
    canary.write_bytes(_orders_csv("o-canary"))
    (landing / "a-directory").mkdir(exist_ok=True)
    (landing / "link-out.csv").symlink_to(canary)
    (landing / "huge.csv").write_bytes(b"order_id\n" + b"x" * (2 * MAX_FILE))
    extreme = _orders_csv("o-hx", ordered_at="9999-12-31T23:59:59-01:00")
    (landing / "extreme.csv").write_bytes(extreme)
    bad_utf8 = b"order_id,customer_id,amount,currency,ordered_at\n\xff\xfe,c,1.00,EUR,2026-11-24T08:00:00Z\n"
    (landing / "bad-utf8.csv").write_bytes(bad_utf8)
    climb = _orders_csv("o-climb")
    (landing / "climb.csv").write_bytes(climb)
    theirs = _orders_csv("o-theirs")  # another producer's delivery, named by a notice with the wrong checksum
    (landing / "theirs.csv").write_bytes(theirs)
    future = _orders_csv("o-hfuture")
    (landing / "future.csv").write_bytes(future)
    first, second = _orders_csv("o-dup-a"), _orders_csv("o-dup-b")
    (landing / "dup-a.csv").write_bytes(first)
    (landing / "dup-b.csv").write_bytes(second)
    before = {"outside": _snapshot(outside), "dags": _snapshot(Path(stack.info["AIRFLOW__CORE__DAGS_FOLDER"]))}

    L = landing.as_uri()
    hostile = [
        Sample("h-outside", _notice("h-outside", canary.as_uri(), sha="0" * 64), _dead("outside the landing roots")),
        Sample("h-dotdot", _notice("h-dotdot", f"{L}/../outside/canary.csv", sha="0" * 64),
                   _dead("has a '..' or encoded '/' segment")),
        Sample("h-symlink", _notice("h-symlink", f"{L}/link-out.csv", sha="0" * 64), _dead("outside the landing roots")),
        Sample("h-devzero", _notice("h-devzero", "file:///dev/zero"), _dead("outside the landing roots")),
        Sample("h-directory", _notice("h-directory", f"{L}/a-directory"), _dead("not a regular file")),
        Sample("h-huge", _notice("h-huge", f"{L}/huge.csv"), _dead(f"over the {MAX_FILE}-byte limit")),
        Sample("h-gs", _notice("h-gs", "gs://bucket/landing/x.csv"), _dead("gs://bucket/landing/x.csv")),
        Sample("h-ftp", _notice("h-ftp", "ftp://example/x.csv"), _dead("uri: ")),
        Sample("../../escape", _notice("../../escape", f"{L}/climb.csv", climb, rows=2),
                   {"quarantine_reason_contains": "file has 1 data rows, message says 2"}),
        Sample("h-wrong-sum", _notice("h-wrong-sum", f"{L}/theirs.csv", sha="2" * 64),
                   _dead(f"checksum mismatch: the file's sha256 is {hashlib.sha256(theirs).hexdigest()}")),
        Sample("h-future", _notice("h-future", f"{L}/future.csv", future, delivered_at=_now() + timedelta(days=1)),
                   _dead("s in the future")),
        Sample("h-extreme-ts", _notice("h-extreme-ts", f"{L}/extreme.csv", extreme),
                   {"quarantine_reason_contains": "ordered_at: Value error, 9999-12-31T23:59:59-01:00 is outside the range"}),
        Sample("h-bad-utf8", _notice("h-bad-utf8", f"{L}/bad-utf8.csv", bad_utf8), {"quarantine_reason_contains": "UTF-8"}),
        Sample("h-dup", _notice("h-dup", f"{L}/dup-a.csv", first), {}),
        Sample("h-dup", _notice("h-dup", f"{L}/dup-b.csv", second), {}),
        Sample("h-types", json.dumps({"delivery_id": 5, "uri": [], "sha256": None}).encode(), _dead("does not match")),
    ]
    good_before = publish.publish("etl", 3, rows=2, run_id="hostb", target=stack.target, landing_dir=landing)
    client = stack.sqs()
    sent = publish.send_sqs("etl", client, stack.target.queue_url("data-deliveries"), hostile)
    good_after = publish.publish("etl", 3, rows=2, run_id="hosta", target=stack.target, landing_dir=landing)
    dup = [r for r in sent if r["id"] == "h-dup"]
    report = stack.collect(good_before + good_after + [r for r in sent if r["id"] != "h-dup"], timeout=240)
    assert report.ok, report.missing
    assert report.rows == 12, "every good delivery around the hostile ones is loaded"

    events = create_engine(stack.events_url)
    with events.connect() as conn:
        letters = dict(conn.execute(select(db.dead_letters.c.message_id, db.dead_letters.c.reason)).all())
        dup_loaded = set(conn.execute(select(etl_tables.orders.c.order_id).where(etl_tables.orders.c.delivery_id == "h-dup")).scalars())
        not_loaded = set(conn.execute(select(etl_tables.orders.c.order_id).where(
            etl_tables.orders.c.delivery_id.in_(["h-wrong-sum", "h-future"]))).scalars())
        quarantined_ids = set(conn.execute(select(etl_tables.etl_quarantine.c.delivery_id)).scalars())
    dup_letters = [letters[r["message_id"]] for r in dup if r["message_id"] in letters]
    assert len(dup_loaded) == 1 and len(dup_letters) == 1 and "duplicate delivery_id h-dup" in dup_letters[0]
    for r in sent:
        if r["id"] in ("h-outside", "h-dotdot", "h-symlink", "h-devzero", "h-gs", "h-directory", "h-huge",
                       "h-wrong-sum", "h-future"):
            assert r["message_id"] in letters[r["message_id"]], "the reason names the message id"
    # Nothing outside the areas changed; nothing was created beside the quarantine root; refused files stay put.
    assert _snapshot(outside) == before["outside"] and canary.read_bytes() == _orders_csv("o-canary")
    assert _snapshot(Path(stack.info["AIRFLOW__CORE__DAGS_FOLDER"])) == before["dags"]
    home = Path(stack.env["DEVSTACK_HOME"])
    assert [p for p in home.rglob("*escape*") if not p.resolve().is_relative_to(quarantine.resolve())] == []
    assert all(p.resolve().is_relative_to(quarantine.resolve()) for p in quarantine.rglob("*"))
    assert (landing / "huge.csv").stat().st_size > MAX_FILE and (landing / "a-directory").is_dir()
    assert (landing / "link-out.csv").is_symlink()
    # A wrong checksum leaves another delivery's file where it is; a far-future delivered_at loads nothing.
    assert (landing / "theirs.csv").read_bytes() == theirs and (landing / "future.csv").read_bytes() == future
    assert not not_loaded and not {"h-wrong-sum", "h-future"} & quarantined_ids
    report_line(f"hostile etl: {len(hostile)} hostile kinds -> dead letters {report.outputs['dead_lettered']}"
                f" + quarantined {report.outputs['quarantined']} + 1 duplicate id refused; 12/12 good orders loaded;"
                " files outside the areas unchanged")


def test_hostile_readings_are_dead_lettered_and_offsets_stored_as_utc(stack: Stack, report_line) -> None:
    now = _now()

    def reading(device: str, ts: str, value: Any = 20.0) -> bytes:
        return json.dumps({"device_id": device, "sensor": "temperature", "value": value, "unit": "C", "ts": ts}).encode()

    offset_ts = now.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()
    hostile = [
        Sample("r-year1", reading("hr-year1", "0001-01-01T00:00:00+01:00"), _dead("ts")),
        Sample("r-year9999", reading("hr-year9999", "9999-12-31T23:59:59-01:00"), _dead("ts")),
        Sample("r-future", reading("hr-future", (now + timedelta(days=1)).isoformat()), _dead("in the future")),
        Sample("r-ancient", reading("hr-ancient", (now - timedelta(days=30)).isoformat()), _dead("old")),
        Sample("r-nan", b'{"device_id": "hr-nan", "sensor": "temperature", "value": NaN, "unit": "C", "ts": "'
                   + now.isoformat().encode() + b'"}', _dead("value")),
        Sample("r-deep", b"[" * 100_000 + b"]" * 100_000, _dead("nested too deeply")),
        Sample("r-surrogate", reading("hr-\udc80", now.isoformat()).replace(b"\\udc80", b"\\ud800"), _dead("Invalid JSON")),
        Sample("r-oversize", json.dumps({"pad": "x" * 300_000}).encode(), _dead("byte limit")),
        Sample("r-bad-utf8", b"\xff\xfe\xfd", _dead("not valid UTF-8")),
        Sample("r-types", json.dumps({"device_id": ["x"], "sensor": 3, "value": "hot"}).encode(), _dead("does not match")),
    ]
    good_before = publish.publish("iot", 6, devices=2, run_id="hostrb", bootstrap=stack.bootstrap)
    producer = publish.make_producer(stack.bootstrap)
    sent = publish.send_kafka("iot", producer, "iot-readings", hostile)
    offset_reading = publish.send_kafka("iot", producer, "iot-readings", [
        Sample("r-offset", reading("hr-offset", offset_ts), {})])
    good_after = publish.publish("iot", 6, devices=2, run_id="hostra", bootstrap=stack.bootstrap)
    report = stack.collect(good_before + good_after + sent, timeout=240)
    assert report.ok, report.missing
    assert report.rows == 12 and report.outputs["dead_lettered"] == report.outputs["in_dlq"] == len(hostile)
    events = create_engine(stack.events_url)
    with events.connect() as conn:
        stored = conn.execute(select(iot_tables.iot_readings.c.ts).where(
            iot_tables.iot_readings.c.message_id == offset_reading[0]["message_id"])).scalar_one()
    assert stored == datetime.fromisoformat(offset_ts) and stored.utcoffset() == timedelta(0)
    report_line(f"hostile iot: {len(hostile)} hostile kinds -> {report.outputs['in_dlq']} on iot-readings-dlq with"
                " their reasons; 12/12 good readings stored; a +05:30 reading stored as the same instant in UTC")


def test_hostile_requests_are_dead_lettered_and_a_reused_id_answered_once(stack: Stack, report_line) -> None:
    features = {"temperature_c": 70.0, "vibration_mm_s": 3.0, "pressure_kpa": 101.0, "rpm": 3000.0}

    def request(rid: str, **over: Any) -> bytes:
        return json.dumps({"request_id": rid, "submitted_at": _now().isoformat(), "features": {**features, **over}}).encode()

    hostile = [
        Sample("q-inf", request("hq-inf").replace(b"3000.0", b"1e999"), _dead("rpm")),
        Sample("q-bool", request("hq-bool", rpm=True), _dead("rpm")),
        Sample("q-negative", request("hq-negative", vibration_mm_s=-1.0), _dead("vibration_mm_s")),
        Sample("q-id", request("hq/../../x"), _dead("request_id")),
        Sample("q-extra", json.dumps({"request_id": "hq-extra", "submitted_at": _now().isoformat(),
                                          "features": features, "shell": "$(rm -rf /)"}).encode(), _dead("shell")),
        # A key made of a control character: its reason carries it, and SQS refuses that character in an attribute.
        # It reaches the DLQ (the reason escaped there); before, the refused send failed the run, and its good
        # neighbours with it.
        Sample("q-control", json.dumps({"request_id": "hq-control", "submitted_at": _now().isoformat(),
                                        "features": features, "\u0007": 1}).encode(),
               _dead(": Extra inputs are not permitted")),
        Sample("q-naive", json.dumps({"request_id": "hq-naive", "submitted_at": "2026-11-24T08:00:00",
                                          "features": features}).encode(), _dead("submitted_at")),
        Sample("q-deep", b"{" + b'"a":{' * 20_000 + b"}" * 20_001, _dead("nested too deeply")),
    ]
    # 140,000 two-byte characters: 280 KB of UTF-8, under the queue's limit (ElasticMQ counts UTF-16 units; AWS now
    # takes 1 MiB) but over MAX_MESSAGE_BYTES: left out of the event, its body kept whole by the trigger.
    oversize = Sample("q-oversize", json.dumps({"request_id": "hq-oversize", "pad": "é" * 140_000},
                                                   ensure_ascii=False).encode(), _dead("byte limit"))
    reused = [Sample("q-reused-a", request("hq-reused", rpm=1000.0), {}),
              Sample("q-reused-b", request("hq-reused", rpm=2000.0), {})]
    good_before = publish.publish("inference", 5, run_id="hostqb", target=stack.target)
    client = stack.sqs()
    url = stack.target.queue_url("inference-requests")
    sent = publish.send_sqs("inference", client, url, hostile)
    sent += publish.send_sqs("inference", client, url, [oversize])  # alone: a batch is bounded in bytes too
    pair = publish.send_sqs("inference", client, url, reused)
    good_after = publish.publish("inference", 5, run_id="hostqa", target=stack.target)
    report = stack.collect(good_before + good_after + sent, timeout=240)
    assert report.ok, report.missing
    assert report.rows == 10 and report.outputs["replies"] == 10 and report.outputs["reply_duplicates"] == 0
    events = create_engine(stack.events_url)
    with events.connect() as conn:
        letters = dict(conn.execute(select(db.dead_letters.c.message_id, db.dead_letters.c.reason)).all())
        bodies = dict(conn.execute(select(db.dead_letters.c.message_id, db.dead_letters.c.body)).all())
        stored = conn.execute(select(inference_tables.predictions.c.message_id).where(inference_tables.predictions.c.request_id == "hq-reused")).all()
    assert bodies[sent[-1]["message_id"]] == oversize.body.decode(), "the oversize body is not kept whole"
    control = next(r["message_id"] for r in sent if r["id"] == "q-control")
    assert "\x07: Extra inputs" in letters[control]  # the dead_letters row keeps the reason as it was
    pair_letters = [letters[r["message_id"]] for r in pair if r["message_id"] in letters]
    assert len(stored) == 1 and len(pair_letters) == 1 and "duplicate request_id hq-reused" in pair_letters[0]
    assert stored[0][0] != next(r["message_id"] for r in pair if r["message_id"] in letters)
    report_line(f"hostile inference: {len(hostile) + 1} hostile kinds -> {report.outputs['in_dlq']} on the DLQ with their"
                " reasons (a 280 KB body kept whole in dead_letters); a request_id reused with other features: 1 answered, 1 dead-lettered; 10/10 good replied")


def test_an_etl_run_carrying_more_than_1500_deliveries_succeeds(stack: Stack, report_line) -> None:
    """One manual run with 1,600 deliveries (more than max_map_length=1,024 messages): batches, not one task each."""
    landing = Path(stack.info["LANDING_DIR"])
    notices = []
    for i in range(1600):
        data = _orders_csv(f"o-big-{i}")
        (landing / f"big-{i}.csv").write_bytes(data)
        notices.append(json.loads(_notice(f"big-{i}", (landing / f"big-{i}.csv").as_uri(), data)))
    run = stack.api("POST", "/api/v2/dags/data_delivery_etl/dagRuns",
                    {"logical_date": None, "conf": {"messages": notices}})
    from devstack.testing import wait_for

    airflow = create_engine(stack.info["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])

    def state() -> str | None:
        with airflow.connect() as conn:
            from sqlalchemy import text
            s = conn.execute(text("SELECT state FROM dag_run WHERE run_id = :r"), {"r": run["dag_run_id"]}).scalar()
        return s if s in ("success", "failed") else None

    assert wait_for(state, timeout=600, interval=3) == "success"
    events = create_engine(stack.events_url)
    with events.connect() as conn:
        loaded = conn.execute(select(etl_tables.orders.c.order_id).where(etl_tables.orders.c.order_id.like("o-big-%"))).all()
    assert len(loaded) == 1600
    with airflow.connect() as conn:
        from sqlalchemy import text
        announced = conn.execute(text(
            "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id"
            " WHERE a.name = 'events_db.orders' AND e.source_run_id = :r"), {"r": run["dag_run_id"]}).scalars().all()
    extras = [json.loads(x) if isinstance(x, str) else x for x in announced]
    # The first task loaded 50 deliveries itself, 31 mapped tasks the other 1,550: one orders event each.
    assert len(extras) == 32 and sum(x["rows_loaded"] for x in extras) == 1600
    report_line(f"etl: one run with 1,600 deliveries succeeded, 1,600 orders loaded ({os.cpu_count()} cores)")
