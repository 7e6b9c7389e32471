"""The ETL's samples module (``include/data_delivery_etl/samples.py``): its deliveries are what the pipeline loads,
its poison is dead-lettered or quarantined as recorded, and its sink check says what is loaded and what is not."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from sqlalchemy import Engine, select

from event_streams.pipelines.messages import Envelope, PoisonMessage, decode
from event_streams.pipelines.samples_api import Sample
from include.data_delivery_etl import tables as etl_tables
from include.data_delivery_etl.pipeline import parse_orders, process_delivery
from include.data_delivery_etl.samples import SAMPLES, check, messages, poison
from include.data_delivery_etl.schemas import CSV_HEADER, DeliveryNotice


def resolve(uri: str) -> Path:
    return Path(urlparse(uri).path)


def sqs_envelope(n: int, msg: Sample) -> Envelope:
    return Envelope.from_sqs({"MessageId": f"m-{n}", "Body": msg.body.decode("utf-8"), "ReceiptHandle": f"rh-{n}"})


def record(n: int, msg: Sample) -> dict[str, Any]:
    """What the publisher records for a sample sent as SQS message ``m-<n>``."""
    return {"pipeline": "etl", "id": msg.id, "message_id": f"m-{n}", "expect": msg.expect}


def load(msgs: list[Sample], engine: Engine, tmp_path: Path, only: set[int] | None = None) -> list[Any]:
    landing = (tmp_path / "landing").as_uri()
    return [process_delivery(sqs_envelope(i, m), engine, resolve, tmp_path / "q", landing_roots=[landing])
            for i, m in enumerate(msgs) if only is None or i in only]


class NoBroker:
    """The ETL's sinks are all in the events database: its check never reads a broker."""

    def topic(self, topic: str) -> list[bytes]:
        raise AssertionError("the ETL check read a topic")

    def take(self, queue: str, field: str, wanted: set[str]) -> dict[str, int]:
        raise AssertionError("the ETL check read a queue")


def test_the_samples_describe_the_pipeline() -> None:
    assert (SAMPLES.name, SAMPLES.dag_id, SAMPLES.broker) == ("etl", "data_delivery_etl", "sqs")
    assert (SAMPLES.source, SAMPLES.dlq) == ("data-deliveries", "data-deliveries-dlq")
    assert [o.flag for o in SAMPLES.options] == ["--rows", "--landing-dir", "--landing-uri-prefix"]


def test_files_and_notices_are_valid_and_agree(tmp_path: Path) -> None:
    msgs = list(messages("r1", 3, rows=4, landing_dir=tmp_path / "landing", seed=1))
    assert [m.id for m in msgs] == ["d-r1-0", "d-r1-1", "d-r1-2"]
    for i, m in enumerate(msgs):
        notice = decode(sqs_envelope(i, m), DeliveryNotice)
        assert notice.producer == "devstack-publisher" and notice.delivered_at.tzinfo is not None
        path = resolve(notice.uri)
        assert path.parent == (tmp_path / "landing").resolve() and notice.uri.startswith("file:///")
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == notice.sha256
        assert data.decode().splitlines()[0] == ",".join(CSV_HEADER)
        records = parse_orders(data, notice)  # the pipeline's own checks: checksum, header, rows, row count
        assert len(records) == notice.row_count == 4
        assert [r["order_id"] for r in records] == m.expect["orders"] == [f"o-r1-{i}-{j}" for j in range(4)]


def test_the_uri_prefix_is_where_airflow_sees_the_folder(tmp_path: Path) -> None:
    [m] = messages("r2", 1, rows=1, landing_dir=tmp_path, landing_uri_prefix="file:///usr/local/airflow/include/data/landing/")
    assert json.loads(m.body)["uri"] == "file:///usr/local/airflow/include/data/landing/d-r2-0.csv"
    assert (tmp_path / "d-r2-0.csv").exists()


def test_the_landing_dir_defaults_to_LANDING_DIR(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: N802
    monkeypatch.setenv("LANDING_DIR", str(tmp_path / "from-env"))
    next(iter(messages("r2b", 1, rows=1)))
    assert (tmp_path / "from-env" / "d-r2b-0.csv").exists()


def test_deliveries_load_exactly_the_expected_orders(engine: Engine, tmp_path: Path) -> None:
    msgs = list(messages("r3", 4, rows=3, landing_dir=tmp_path / "landing", seed=2))
    assert [o.status for o in load(msgs, engine, tmp_path)] == ["loaded"] * 4
    with engine.connect() as conn:
        loaded = sorted(conn.execute(select(etl_tables.orders.c.order_id)).scalars())
    assert loaded == sorted(o for m in msgs for o in m.expect["orders"])


def test_the_seed_makes_values_repeatable(tmp_path: Path) -> None:
    next(iter(messages("s", 1, rows=5, landing_dir=tmp_path / "a", seed=5)))
    next(iter(messages("s", 1, rows=5, landing_dir=tmp_path / "b", seed=5)))
    rows = [(tmp_path / d / "d-s-0.csv").read_text().splitlines()[1:] for d in ("a", "b")]
    assert [r.split(",")[:4] for r in rows[0]] == [r.split(",")[:4] for r in rows[1]]  # ordered_at follows now()


def kind(m: Sample) -> str:
    """``poison-pz-not_json`` -> ``not_json``; ``d-pz-missing-file`` -> ``missing-file``."""
    return m.id.removeprefix("poison-pz-").removeprefix("d-pz-")


def test_poison_kinds(tmp_path: Path) -> None:
    assert {kind(m) for m in poison("pz", landing_dir=tmp_path)} == {
        "not_json", "not_object", "wrong_schema", "empty", "wrong_type", "out_of_range", "missing-file", "truncated-file"}


def test_every_poison_body_is_dead_lettered_with_the_recorded_reason(tmp_path: Path) -> None:
    msgs = [m for m in poison("pz", landing_dir=tmp_path) if "dead_letter_reason_contains" in m.expect
            and not m.id.endswith("-truncated-file")]  # a valid notice: its file's checksum is what is wrong
    assert len(msgs) == 6
    for i, m in enumerate(msgs):
        assert m.body and len(m.body) <= 256 * 1024 and m.key is None  # SQS refuses empty and oversize bodies
        with pytest.raises(PoisonMessage) as caught:
            decode(sqs_envelope(i, m), DeliveryNotice)
        assert m.expect["dead_letter_reason_contains"] in caught.value.reason, (m.id, caught.value.reason)


def test_poison_is_dead_lettered_or_quarantined_as_recorded(engine: Engine, tmp_path: Path) -> None:
    msgs = poison("pz", landing_dir=tmp_path / "landing")
    assert not (tmp_path / "landing" / "d-pz-missing-file.csv").exists()
    assert (tmp_path / "landing" / "d-pz-truncated-file.csv").exists()
    for m, outcome in zip(msgs, load(msgs, engine, tmp_path), strict=True):
        if "quarantine_reason_contains" in m.expect:
            assert outcome.status == "quarantined", outcome
            assert m.expect["quarantine_reason_contains"] in (outcome.reason or "")
        else:
            assert outcome.status == "dead_letter", outcome
            assert m.expect["dead_letter_reason_contains"] in (outcome.reason or "")
    with engine.connect() as conn:
        assert conn.execute(select(etl_tables.orders.c.order_id)).first() is None


def test_the_sink_check_counts_loaded_orders_and_names_a_missing_delivery(engine: Engine, tmp_path: Path) -> None:
    msgs = list(messages("r4", 3, rows=2, landing_dir=tmp_path / "landing", seed=3))
    records = [record(i, m) for i, m in enumerate(msgs)]
    load(msgs, engine, tmp_path, only={0, 2})  # the second delivery never ran
    result = check(engine, records, NoBroker())
    assert result.rows == 4 and result.outputs == {"quarantined": 0}
    assert result.missing == ["2 of 6 orders not loaded"]
    load(msgs, engine, tmp_path, only={1})
    result = check(engine, records, NoBroker())
    assert (result.rows, result.missing) == (6, [])


def test_the_sink_check_wants_each_recorded_quarantine(engine: Engine, tmp_path: Path) -> None:
    msgs = poison("pq", landing_dir=tmp_path / "landing")
    records = [record(i, m) for i, m in enumerate(msgs)]
    before = check(engine, records, NoBroker())
    assert before.missing == ["quarantine of d-pq-missing-file with reason containing 'does not exist'"]
    assert before.outputs == {"quarantined": 0} and before.rows == 0
    load(msgs, engine, tmp_path)
    after = check(engine, records, NoBroker())  # dead letters are the summary's (shared table), not this check's
    assert after.missing == [] and after.outputs == {"quarantined": 1} and after.rows == 0
