"""The publisher (``devstack/publish.py``) without a broker: its messages are what the pipelines accept, its
expectations are what the pipelines produce, and every poison body is dead-lettered with the recorded reason."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from sqlalchemy import Engine, select

from devstack import publish as pub
from include.data_delivery_etl import tables as etl_tables
from include.data_delivery_etl.pipeline import parse_orders, process_delivery
from include.data_delivery_etl.schemas import CSV_HEADER, DeliveryNotice
from include.event_pipelines.messages import (
    MAX_BODY_BYTES,
    Envelope,
    PoisonMessage,
    decode,
    kafka_message_to_event,
)
from include.inference_execution.schemas import InferenceRequest
from include.iot_alerting.pipeline import process_readings
from include.iot_alerting.schemas import AlertEvent, SensorReading

T0 = datetime(2026, 11, 24, 8, 0, tzinfo=timezone.utc)
MODELS = {"etl": DeliveryNotice, "iot": SensorReading, "inference": InferenceRequest}


def resolve(uri: str) -> Path:
    return Path(urlparse(uri).path)


class FakeKafkaMessage:
    """What ``confluent_kafka`` hands the watcher's apply function (and the delivery callback)."""

    def __init__(self, topic: str, partition: int, offset: int, value: bytes | None, key: bytes | None) -> None:
        self._t, self._p, self._o, self._v, self._k = topic, partition, offset, value, key

    def value(self) -> bytes | None:
        return self._v

    def key(self) -> bytes | None:
        return self._k

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)

    def headers(self) -> None:
        return None


def kafka_envelope(offset: int, msg: pub.OutMessage, topic: str = "iot-readings") -> Envelope:
    """The envelope the Kafka watcher would build for this record (through the real apply function)."""
    raw = FakeKafkaMessage(topic, 0, offset, msg.body, msg.key.encode() if msg.key else None)
    return Envelope.model_validate(kafka_message_to_event(raw))


def sqs_envelope(n: int, msg: pub.OutMessage) -> Envelope:
    return Envelope.from_sqs({"MessageId": f"m-{n}", "Body": msg.body.decode("utf-8"), "ReceiptHandle": f"rh-{n}"})


class FakeSqs:
    """Records SendMessage / SendMessageBatch calls; optionally fails some entries."""

    def __init__(self, fail_ids: Sequence[str] = ()) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.sent: list[str] = []
        self.fail_ids = set(fail_ids)

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:  # noqa: N803
        self.calls.append(("batch", {"QueueUrl": QueueUrl, "Entries": Entries}))
        ok, failed = [], []
        for e in Entries:
            if e["Id"] in self.fail_ids:
                failed.append({"Id": e["Id"], "Code": "InvalidMessageContents", "SenderFault": True})
            else:
                self.sent.append(e["MessageBody"])
                ok.append({"Id": e["Id"], "MessageId": f"sqs-{len(self.sent)}"})
        return {"Successful": ok, "Failed": failed}

    def send_message(self, QueueUrl: str, MessageBody: str) -> dict[str, Any]:  # noqa: N803
        self.calls.append(("single", {"QueueUrl": QueueUrl, "MessageBody": MessageBody}))
        self.sent.append(MessageBody)
        return {"MessageId": f"sqs-{len(self.sent)}"}


class FakeProducer:
    """A producer whose delivery reports arrive on poll/flush, like librdkafka's; 3 partitions by key hash."""

    def __init__(self, fail_every: int = 0) -> None:
        self.produced: list[tuple[str, bytes, bytes | None]] = []
        self._pending: list[tuple[Any, Any]] = []
        self._offsets = [0, 0, 0]
        self.fail_every = fail_every

    def produce(self, topic: str, value: bytes, key: bytes | None, on_delivery: Any) -> None:
        self.produced.append((topic, value, key))
        partition = int(hashlib.md5(key or b"").hexdigest(), 16) % 3
        if self.fail_every and len(self.produced) % self.fail_every == 0:
            self._pending.append((on_delivery, ("Broker: Message size too large", None)))
            return
        msg = FakeKafkaMessage(topic, partition, self._offsets[partition], value, key)
        self._offsets[partition] += 1
        self._pending.append((on_delivery, (None, msg)))

    def poll(self, timeout: float = 0) -> int:
        served, self._pending = self._pending, []
        for cb, args in served:
            cb(*args)
        return len(served)

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return 0


class AlertRecorder:
    def __init__(self) -> None:
        self.alerts: list[AlertEvent] = []

    def __call__(self, alerts: Sequence[AlertEvent]) -> None:
        self.alerts.extend(alerts)


# --------------------------------------------------------------------------------------------------- etl


def test_etl_files_and_notices_are_valid_and_agree(tmp_path: Path) -> None:
    msgs = list(pub.etl_messages("r1", 3, 4, tmp_path / "landing", seed=1))
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


def test_etl_uri_prefix_is_where_airflow_sees_the_folder(tmp_path: Path) -> None:
    [m] = pub.etl_messages("r2", 1, 1, tmp_path, "file:///usr/local/airflow/include/data/landing/")
    assert json.loads(m.body)["uri"] == "file:///usr/local/airflow/include/data/landing/d-r2-0.csv"
    assert (tmp_path / "d-r2-0.csv").exists()


def test_etl_deliveries_load_exactly_the_expected_orders(engine: Engine, tmp_path: Path) -> None:
    msgs = list(pub.etl_messages("r3", 4, 3, tmp_path / "landing", seed=2))
    outcomes = [process_delivery(sqs_envelope(i, m), engine, resolve, tmp_path / "q", landing_roots=[(tmp_path / "landing").as_uri()]) for i, m in enumerate(msgs)]
    assert [o.status for o in outcomes] == ["loaded"] * 4
    with engine.connect() as conn:
        loaded = sorted(conn.execute(select(etl_tables.orders.c.order_id)).scalars())
    assert loaded == sorted(o for m in msgs for o in m.expect["orders"])


def test_the_seed_makes_values_repeatable(tmp_path: Path) -> None:
    a = [json.loads(m.body)["features"] for m in pub.inference_messages("s", 6, seed=5)]
    b = [json.loads(m.body)["features"] for m in pub.inference_messages("s", 6, seed=5)]
    assert a == b
    pub.etl_messages("s", 1, 5, tmp_path / "a", seed=5).__next__()
    pub.etl_messages("s", 1, 5, tmp_path / "b", seed=5).__next__()
    rows = [(tmp_path / d / "d-s-0.csv").read_text().splitlines()[1:] for d in ("a", "b")]
    assert [r.split(",")[:4] for r in rows[0]] == [r.split(",")[:4] for r in rows[1]]  # ordered_at follows now()


# --------------------------------------------------------------------------------------------------- iot


def test_iot_readings_are_valid_and_round_robin_over_devices() -> None:
    msgs = list(pub.iot_messages("r4", 12, 3, seed=3, start=T0))
    readings = [decode(kafka_envelope(i, m), SensorReading) for i, m in enumerate(msgs)]
    assert {r.device_id for r in readings} == {"dev-r4-0", "dev-r4-1", "dev-r4-2"}
    assert all(m.key == r.device_id == m.id.rsplit("#", 1)[0] for m, r in zip(msgs, readings, strict=True))
    assert all(r.sensor == "temperature" and r.unit == "C" for r in readings)
    dev0 = [r.ts for r in readings if r.device_id == "dev-r4-0"]
    assert [(t - T0).total_seconds() for t in dev0] == [0, 1, 2, 3]


@pytest.mark.parametrize("chunks", [[60], [7, 13, 1, 20, 19]], ids=["one run", "several runs"])
def test_iot_expected_transitions_are_what_the_pipeline_produces(engine: Engine, chunks: list[int]) -> None:
    msgs = list(pub.iot_messages("r5", sum(chunks), 5, seed=11, start=T0))
    envelopes = [kafka_envelope(i, m) for i, m in enumerate(msgs)]
    recorder = AlertRecorder()
    start = 0
    for size in chunks:  # runs see the topic in order, in batches of any size; state carries over
        process_readings(envelopes[start : start + size], engine, recorder, now=T0 + timedelta(hours=1))
        start += size
    produced = {a.source_message_id: a.kind for a in recorder.alerts}
    expected = {env.message_id: m.expect["transition"] for env, m in zip(envelopes, msgs, strict=True)
                if m.expect["transition"] is not None}
    assert produced == expected
    raised, cleared = pub.expected_alerts([{"expect": m.expect} for m in msgs])
    assert raised >= 5 and cleared >= 5  # the sequences are designed to raise and clear
    assert (raised, cleared) == (list(produced.values()).count("raised"), list(produced.values()).count("cleared"))


def test_alerts_are_checked_against_per_device_order(engine: Engine, tmp_path: Path) -> None:
    """devstack.summary.compare_alerts, the e2e and HA suites' order check: a device's readings applied in order give
    no problem (a retried run's repeats are only counted); applied out of order, the check names it."""
    from sqlalchemy import create_engine

    from devstack.summary import compare_alerts
    from include.event_pipelines import db

    msgs = list(pub.iot_messages("r9", 40, 2, seed=11, start=T0))
    envelopes = [kafka_envelope(i, m) for i, m in enumerate(msgs)]
    records = [{"message_id": e.message_id, "expect": m.expect} for e, m in zip(envelopes, msgs, strict=True)]

    def alerts(batches: list[list[int]], sink: Engine) -> list[dict[str, str]]:
        recorder = AlertRecorder()
        for batch in batches:
            process_readings([envelopes[i] for i in batch], sink, recorder, now=T0 + timedelta(hours=1))
        return [a.model_dump(mode="json") for a in recorder.alerts]

    in_order = alerts([list(range(20)), list(range(20, 40))], engine)
    outputs, problems = compare_alerts(records, in_order + in_order[:2])
    assert problems == [] and outputs["alert_duplicates"] == 2 and outputs["alerts_out_of_order"] == 0
    other = db.configure_sqlite(create_engine(f"sqlite:///{tmp_path / 'other.db'}"))
    db.ensure_schema(other)
    late_first = alerts([list(range(20, 40)), list(range(20))], other)  # the later run's readings applied first
    outputs, problems = compare_alerts(records, late_first)
    assert problems and outputs["alerts_out_of_order"] > 0


def test_publish_iot_records_topic_partition_offset_and_keys(tmp_path: Path) -> None:
    producer = FakeProducer()
    record = tmp_path / "rec.jsonl"
    records = pub.publish_iot(10, devices=2, run_id="r6", seed=1, producer=producer, record=record, start=T0)
    assert len(records) == 10 and [json.loads(line) for line in record.read_text().splitlines()] == records
    assert {r["pipeline"] for r in records} == {"iot"}
    assert all(r["message_id"].startswith("iot-readings/") and r["message_id"].count("/") == 2 for r in records)
    assert len({r["message_id"] for r in records}) == 10
    assert [k for _, _, k in producer.produced] == [f"dev-r6-{i % 2}".encode() for i in range(10)]
    assert set(records[0]) == {"pipeline", "id", "message_id", "published_at", "body_sha256", "expect"}
    assert set(records[0]["expect"]) == {"transition"}
    # how the shared-stream baseline names a record it gives as its value only
    assert [r["body_sha256"] for r in records] == [hashlib.sha256(v).hexdigest() for _, v, _ in producer.produced]


def test_publish_iot_raises_when_a_delivery_fails_and_records_the_rest(tmp_path: Path) -> None:
    record = tmp_path / "rec.jsonl"
    with pytest.raises(pub.PublishError, match="1 of 4 message"):
        pub.publish_iot(4, run_id="r7", producer=FakeProducer(fail_every=3), record=record)
    assert len(record.read_text().splitlines()) == 3


# --------------------------------------------------------------------------------------------------- inference


def test_inference_requests_are_valid_and_mix_hot_and_cool_machines() -> None:
    msgs = list(pub.inference_messages("r8", 20, seed=4))
    reqs = [decode(sqs_envelope(i, m), InferenceRequest) for i, m in enumerate(msgs)]
    assert [r.request_id for r in reqs] == [m.expect["request_id"] for m in msgs] == [f"req-r8-{i}" for i in range(20)]
    hot = [r for r in reqs if r.features.temperature_c > 80]
    assert 0 < len(hot) < len(reqs)


# --------------------------------------------------------------------------------------------------- SQS sending


def test_publish_inference_batches_ten_per_call_and_records_each_message(tmp_path: Path) -> None:
    sqs = FakeSqs()
    record = tmp_path / "rec.jsonl"
    target = pub.SqsTarget(None, "https://sqs.eu-west-1.amazonaws.com/123456789012", "eu-west-1")
    records = pub.publish_inference(23, run_id="r9", seed=1, target=target, sqs_client=sqs, record=record)
    assert [len(c[1]["Entries"]) for c in sqs.calls] == [10, 10, 3]
    assert {c[1]["QueueUrl"] for c in sqs.calls} == {"https://sqs.eu-west-1.amazonaws.com/123456789012/inference-requests"}
    assert [r["message_id"] for r in records] == [f"sqs-{i}" for i in range(1, 24)]
    assert [r["expect"]["request_id"] for r in records] == [f"req-r9-{i}" for i in range(23)]
    assert [json.loads(line) for line in record.read_text().splitlines()] == records
    # appended, not overwritten
    pub.publish_inference(2, run_id="r9b", target=target, sqs_client=sqs, record=record)
    assert len(record.read_text().splitlines()) == 25


def test_publish_etl_with_a_rate_sends_one_by_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(pub.time, "sleep", sleeps.append)  # the Pacer's default sleep, looked up when it is built
    sqs = FakeSqs()
    records = pub.publish_etl(3, rows=2, run_id="r10", rate=1, landing_dir=tmp_path, sqs_client=sqs,
                              target=pub.SqsTarget(None, "http://q", "us-east-1"))
    assert [c[0] for c in sqs.calls] == ["single"] * 3
    assert [r["id"] for r in records] == ["d-r10-0", "d-r10-1", "d-r10-2"]
    assert len(sleeps) == 2 and all(0.5 < s <= 1.0 for s in sleeps)  # paced 1 s apart (sleeps not really taken)


def test_a_refused_batch_entry_raises_with_the_published_records(tmp_path: Path) -> None:
    record = tmp_path / "rec.jsonl"
    with pytest.raises(pub.PublishError, match="1 message"):
        pub.publish_inference(5, run_id="r11", sqs_client=FakeSqs(fail_ids=["3"]), record=record,
                              target=pub.SqsTarget(None, "http://q", "us-east-1"))
    assert len(record.read_text().splitlines()) == 4


def test_pacer_spaces_calls_and_does_not_burst_after_a_stall() -> None:
    clock = [0.0]
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        clock[0] += s

    pacer = pub.Pacer(10, clock=lambda: clock[0], sleep=sleep)
    for _ in range(3):
        pacer.wait()
    assert sleeps == pytest.approx([0.1, 0.1])
    clock[0] += 5.0  # the broker stalled for 5 s
    sleeps.clear()
    for _ in range(3):
        pacer.wait()
    assert sleeps == pytest.approx([0.1, 0.1])  # no catch-up burst, no long sleep


def test_local_endpoint_gets_dummy_credentials_only_without_real_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    client = pub.make_sqs_client("http://127.0.0.1:9324", "us-east-1")
    assert client._request_signer._credentials.access_key == "local-emulator-key"
    assert client.meta.endpoint_url == "http://127.0.0.1:9324"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-env")
    assert pub.make_sqs_client("http://127.0.0.1:9324", "us-east-1")._request_signer._credentials.access_key == "AKIAFROMENV"
    assert pub.make_sqs_client(pub.parse_endpoint("none"), "eu-west-1").meta.endpoint_url.startswith("https://")
    assert pub.parse_endpoint("") is None and pub.parse_endpoint(" http://x:1 ") == "http://x:1"


# --------------------------------------------------------------------------------------------------- poison


def kind(m: pub.OutMessage) -> str:
    """``poison-pz-not_json`` -> ``not_json``; ``d-pz-missing-file`` -> ``missing-file``."""
    return m.id.removeprefix("poison-pz-").removeprefix("d-pz-")


def test_poison_kinds_per_broker(tmp_path: Path) -> None:
    kinds = {p: {kind(m) for m in pub.poison_messages(p, "pz", tmp_path)} for p in pub.PIPELINES}
    common = {"not_json", "not_object", "wrong_schema", "empty", "wrong_type", "out_of_range"}
    assert kinds["inference"] == common
    assert kinds["iot"] == common | {"oversize", "invalid_utf8"}
    assert kinds["etl"] == common | {"missing-file", "truncated-file"}


@pytest.mark.parametrize("pipeline", pub.PIPELINES)
def test_every_poison_body_is_dead_lettered_with_the_recorded_reason(pipeline: pub.Pipeline, tmp_path: Path) -> None:
    msgs = [m for m in pub.poison_messages(pipeline, "pz", tmp_path) if "dead_letter_reason_contains" in m.expect
            and not m.id.endswith("-truncated-file")]  # a valid notice: its file's checksum is what is wrong
    assert len(msgs) >= 6
    for i, m in enumerate(msgs):
        if pub.BROKER_OF[pipeline] == "sqs":
            assert m.body and len(m.body) <= 256 * 1024  # SQS refuses empty and oversize bodies
            env = sqs_envelope(i, m)
        else:
            env = kafka_envelope(i, m)
        with pytest.raises(PoisonMessage) as caught:
            decode(env, MODELS[pipeline])
        assert m.expect["dead_letter_reason_contains"] in caught.value.reason, (m.id, caught.value.reason)


def test_kafka_poison_bodies_are_what_the_brief_says() -> None:
    by_kind = {kind(m): m for m in pub.poison_messages("iot", "pz")}
    assert by_kind["empty"].body == b""
    assert len(by_kind["oversize"].body) > MAX_BODY_BYTES and len(by_kind["oversize"].body) < 1_000_000
    assert by_kind["invalid_utf8"].body.startswith(b"\xff\xfe")
    assert all(m.key == "poison-pz" for m in by_kind.values())


def test_iot_pipeline_dead_letters_the_whole_poison_set(engine: Engine) -> None:
    msgs = pub.poison_messages("iot", "pz")
    outcome = process_readings([kafka_envelope(i, m) for i, m in enumerate(msgs)], engine, AlertRecorder())
    assert outcome.readings == 0 and len(outcome.dead_letters) == len(msgs)
    for m, dead in zip(msgs, outcome.dead_letters, strict=True):
        assert m.expect["dead_letter_reason_contains"] in dead["reason"]


def test_etl_poison_is_dead_lettered_or_quarantined_as_recorded(engine: Engine, tmp_path: Path) -> None:
    msgs = pub.poison_messages("etl", "pz", tmp_path / "landing")
    assert not (tmp_path / "landing" / "d-pz-missing-file.csv").exists()
    assert (tmp_path / "landing" / "d-pz-truncated-file.csv").exists()
    for i, m in enumerate(msgs):
        outcome = process_delivery(sqs_envelope(i, m), engine, resolve, tmp_path / "q", landing_roots=[(tmp_path / "landing").as_uri()])
        if "quarantine_reason_contains" in m.expect:
            assert outcome.status == "quarantined", outcome
            assert m.expect["quarantine_reason_contains"] in (outcome.reason or "")
        else:
            assert outcome.status == "dead_letter", outcome
            assert m.expect["dead_letter_reason_contains"] in (outcome.reason or "")
    with engine.connect() as conn:
        assert conn.execute(select(etl_tables.orders.c.order_id)).first() is None


def test_publish_poison_records_the_expectations(tmp_path: Path) -> None:
    records = pub.publish_iot(run_id="pz2", poison=True, producer=FakeProducer())
    assert len(records) == 8
    assert all(set(r["expect"]) == {"dead_letter_reason_contains"} for r in records)
    records = pub.publish_etl(run_id="pz2", poison=True, landing_dir=tmp_path, sqs_client=FakeSqs(),
                              target=pub.SqsTarget(None, "http://q", "us-east-1"))
    assert sum("quarantine_reason_contains" in r["expect"] for r in records) == 1


# --------------------------------------------------------------------------------------------------- CLI


def test_cli_publishes_and_prints_one_summary_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sqs = FakeSqs()
    seen: dict[str, Any] = {}

    def fake_client(endpoint: str | None, region: str) -> FakeSqs:
        seen.update(endpoint=endpoint, region=region)
        return sqs

    monkeypatch.setattr(pub, "make_sqs_client", fake_client)
    record = tmp_path / "rec.jsonl"
    rc = pub.main(["etl", "--count", "12", "--rows", "2", "--run-id", "cli1", "--seed", "3",
                   "--landing-dir", str(tmp_path / "landing"), "--record", str(record),
                   "--sqs-endpoint", "none", "--queue-url-prefix", "https://sqs.x/1", "--region", "eu-west-1"])
    assert rc == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("published 12 etl messages in ") and out[0].endswith(" msg/s)")
    assert seen == {"endpoint": None, "region": "eu-west-1"}
    assert len(record.read_text().splitlines()) == 12 and len(sqs.calls) == 2


def test_cli_iot_prints_the_expected_alerts(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    seen: dict[str, Any] = {}

    def fake_producer(bootstrap: str, extra: dict[str, str] | None = None) -> FakeProducer:
        seen.update(bootstrap=bootstrap, extra=extra)
        return FakeProducer()

    monkeypatch.setattr(pub, "make_producer", fake_producer)
    assert pub.main(["iot", "--count", "40", "--devices", "4", "--seed", "1", "--bootstrap", "b:9096",
                     "--kafka-config", "security.protocol=SASL_SSL", "--kafka-config", "sasl.password=a=b"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("published 40 iot messages")
    assert out[1].startswith("expected alerts: ") and "raised" in out[1] and "cleared" in out[1]
    assert seen == {"bootstrap": "b:9096", "extra": {"security.protocol": "SASL_SSL", "sasl.password": "a=b"}}


def test_cli_rejects_a_run_id_that_would_break_the_ids() -> None:
    with pytest.raises(SystemExit):
        pub.main(["inference", "--run-id", "has space"])
