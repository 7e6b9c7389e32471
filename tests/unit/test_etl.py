from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import urlparse

import pytest
from sqlalchemy import Engine, func, select

from include.event_pipelines import db
from include.event_pipelines.etl.pipeline import process_delivery, render_csv
from include.event_pipelines.messages import Envelope

ROWS = [
    {"order_id": "o-1", "customer_id": "c-1", "amount": "12.50", "currency": "eur", "ordered_at": "2026-11-24T08:00:00+01:00"},
    {"order_id": "o-2", "customer_id": "c-2", "amount": "0.99", "currency": "USD", "ordered_at": "2026-11-24T07:30:00Z"},
    {"order_id": "o-3", "customer_id": "c-1", "amount": "100", "currency": "GBP", "ordered_at": "2026-11-24T09:00:00Z"},
]


def resolve(uri: str) -> Path:
    return Path(urlparse(uri).path)


def deliver(tmp_path: Path, name: str, data: bytes, *, delivery_id: str = "d-1", sha: str | None = None,
            rows: int = 3, message_id: str = "m-1") -> tuple[Envelope, Path]:
    landing = tmp_path / "landing"
    landing.mkdir(exist_ok=True)
    path = landing / name
    path.write_bytes(data)
    notice = {"delivery_id": delivery_id, "uri": path.as_uri(), "sha256": sha or hashlib.sha256(data).hexdigest(),
              "row_count": rows, "producer": "shop-export", "delivered_at": "2026-11-24T08:05:00Z"}
    return Envelope(source="sqs", message_id=message_id, body=json.dumps(notice), receipt_handle="rh"), path


def table(engine: Engine, t) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(t)).mappings()]


def count(engine: Engine, t) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(t)).scalar_one()


def test_a_delivered_file_loads_exactly_its_rows_transformed(engine: Engine, tmp_path: Path) -> None:
    env, _ = deliver(tmp_path, "orders-1.csv", render_csv(ROWS))
    outcome = process_delivery(env, engine, resolve, tmp_path / "quarantine")
    assert (outcome.status, outcome.rows) == ("loaded", 3)
    orders = {r["order_id"]: r for r in table(engine, db.orders)}
    assert set(orders) == {"o-1", "o-2", "o-3"}
    assert (orders["o-1"]["amount_cents"], orders["o-1"]["currency"]) == (1250, "EUR")
    assert db.as_utc(orders["o-1"]["ordered_at"]).isoformat() == "2026-11-24T07:00:00+00:00"
    assert orders["o-3"]["amount_cents"] == 10000
    ledger = table(engine, db.etl_deliveries)
    assert [(r["delivery_id"], r["rows_loaded"], r["message_id"]) for r in ledger] == [("d-1", 3, "m-1")]


def test_the_same_file_delivered_twice_changes_nothing(engine: Engine, tmp_path: Path) -> None:
    data = render_csv(ROWS)
    first, _ = deliver(tmp_path, "a.csv", data)
    assert process_delivery(first, engine, resolve, tmp_path / "q").status == "loaded"
    before = table(engine, db.orders)
    # the same message redelivered, and the same content announced again under another message and name
    again, _ = deliver(tmp_path, "b.csv", data, delivery_id="d-2", message_id="m-2")
    assert process_delivery(first, engine, resolve, tmp_path / "q").status == "duplicate"
    assert process_delivery(again, engine, resolve, tmp_path / "q").status == "duplicate"
    assert table(engine, db.orders) == before and count(engine, db.etl_deliveries) == 1


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda data: data[: len(data) - 20], "checksum mismatch"),  # truncated after the notice was computed
        (lambda data: data.replace(b"12.50", b"-1.00"), "line 2: amount: Input should be greater than or equal to 0"),
        (lambda data: data.replace(b"2026-11-24T07:30:00Z", b"yesterday"), "line 3: ordered_at"),
        (lambda data: data.replace(b"order_id,", b"id,"), "header is"),
        (lambda data: data + b"o-4,c-9,1.00,EUR\n", "line 5: 4 fields, expected 5"),
        (lambda data: data.replace(b"o-2", b"o-1"), "repeats an order_id"),
    ],
)
def test_a_bad_file_is_quarantined_with_its_reason_and_nothing_is_loaded(engine, tmp_path, mutate, reason) -> None:
    data = mutate(render_csv(ROWS))
    sha = hashlib.sha256(render_csv(ROWS)).hexdigest() if reason == "checksum mismatch" else None
    env, path = deliver(tmp_path, "bad.csv", data, sha=sha)
    outcome = process_delivery(env, engine, resolve, tmp_path / "quarantine")
    assert outcome.status == "quarantined" and reason in outcome.reason
    assert count(engine, db.orders) == 0 and count(engine, db.etl_deliveries) == 0
    [q] = table(engine, db.etl_quarantine)
    assert (q["delivery_id"], q["message_id"]) == ("d-1", "m-1") and reason in q["reason"]
    moved = tmp_path / "quarantine" / "d-1" / "bad.csv"
    assert not path.exists() and moved.read_bytes() == data
    assert reason in json.loads((tmp_path / "quarantine" / "d-1" / "bad.csv.reason.json").read_text())["reason"]


def test_row_count_must_match_the_notice(engine: Engine, tmp_path: Path) -> None:
    env, _ = deliver(tmp_path, "short.csv", render_csv(ROWS), rows=4)
    outcome = process_delivery(env, engine, resolve, tmp_path / "q")
    assert outcome.status == "quarantined" and outcome.reason == "file has 3 data rows, message says 4"


def test_a_missing_file_is_quarantined(engine: Engine, tmp_path: Path) -> None:
    env, path = deliver(tmp_path, "gone.csv", render_csv(ROWS))
    path.unlink()
    outcome = process_delivery(env, engine, resolve, tmp_path / "q")
    assert outcome.status == "quarantined" and "does not exist" in outcome.reason
    assert table(engine, db.etl_quarantine)[0]["quarantined_uri"] is None


def test_a_bad_message_is_dead_lettered_with_its_body(engine: Engine, tmp_path: Path) -> None:
    env = Envelope(source="sqs", message_id="m-9", body='{"delivery_id": "d", "uri": "ftp://x"}')
    outcome = process_delivery(env, engine, resolve, tmp_path / "q")
    assert outcome.status == "dead_letter"
    [letter] = table(engine, db.dead_letters)
    assert (letter["pipeline"], letter["message_id"], letter["body"]) == ("data_delivery_etl", "m-9", env.body)
    assert "uri: Value error, URI must start with" in letter["reason"] and "sha256: Field required" in letter["reason"]
    # a replay of the same poison message keeps one dead letter
    process_delivery(env, engine, resolve, tmp_path / "q")
    assert count(engine, db.dead_letters) == 1


def test_a_delivery_id_reused_for_other_content_is_dead_lettered(engine: Engine, tmp_path: Path) -> None:
    first, _ = deliver(tmp_path, "a.csv", render_csv(ROWS))
    assert process_delivery(first, engine, resolve, tmp_path / "q").status == "loaded"
    other, _ = deliver(tmp_path, "b.csv", render_csv(ROWS[:2]), rows=2, message_id="m-2")  # same delivery_id "d-1"
    outcome = process_delivery(other, engine, resolve, tmp_path / "q")
    assert outcome.status == "dead_letter" and outcome.reason.startswith("duplicate delivery_id d-1: already loaded")
    assert outcome.dead_letters() == [{"message_id": "m-2", "reason": outcome.reason}]
    assert count(engine, db.etl_deliveries) == 1 and count(engine, db.orders) == 3
