"""The publisher (``devstack/publish.py``) without a broker: what it sends where, what it records, its pacing and its
CLI. What the messages are and what they must produce is each pipeline's samples module (tests/unit/test_*_samples.py);
this sends them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from devstack import pipelines
from devstack import publish as pub
from tests.fakes import FakeKafkaMessage

T0 = datetime(2026, 11, 24, 8, 0, tzinfo=timezone.utc)


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


# --------------------------------------------------------------------------------------------------- Kafka sending


def test_publish_iot_records_topic_partition_offset_and_keys(tmp_path: Path) -> None:
    producer = FakeProducer()
    record = tmp_path / "rec.jsonl"
    records = pub.publish("iot", 10, devices=2, run_id="r6", seed=1, producer=producer, record=record, start=T0)
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
        pub.publish("iot", 4, run_id="r7", producer=FakeProducer(fail_every=3), record=record)
    assert len(record.read_text().splitlines()) == 3


# --------------------------------------------------------------------------------------------------- SQS sending


def test_publish_inference_batches_ten_per_call_and_records_each_message(tmp_path: Path) -> None:
    sqs = FakeSqs()
    record = tmp_path / "rec.jsonl"
    target = pub.SqsTarget(None, "https://sqs.eu-west-1.amazonaws.com/123456789012", "eu-west-1")
    records = pub.publish("inference", 23, run_id="r9", seed=1, target=target, sqs_client=sqs, record=record)
    assert [len(c[1]["Entries"]) for c in sqs.calls] == [10, 10, 3]
    assert {c[1]["QueueUrl"] for c in sqs.calls} == {"https://sqs.eu-west-1.amazonaws.com/123456789012/inference-requests"}
    assert [r["message_id"] for r in records] == [f"sqs-{i}" for i in range(1, 24)]
    assert [r["expect"]["request_id"] for r in records] == [f"req-r9-{i}" for i in range(23)]
    assert [json.loads(line) for line in record.read_text().splitlines()] == records
    # appended, not overwritten
    pub.publish("inference", 2, run_id="r9b", target=target, sqs_client=sqs, record=record)
    assert len(record.read_text().splitlines()) == 25


def test_publish_etl_with_a_rate_sends_one_by_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(pub.time, "sleep", sleeps.append)  # the Pacer's default sleep, looked up when it is built
    sqs = FakeSqs()
    records = pub.publish("etl", 3, rows=2, run_id="r10", rate=1, landing_dir=tmp_path, sqs_client=sqs,
                              target=pub.SqsTarget(None, "http://q", "us-east-1"))
    assert [c[0] for c in sqs.calls] == ["single"] * 3
    assert [r["id"] for r in records] == ["d-r10-0", "d-r10-1", "d-r10-2"]
    assert len(sleeps) == 2 and all(0.5 < s <= 1.0 for s in sleeps)  # paced 1 s apart (sleeps not really taken)


def test_a_refused_batch_entry_raises_with_the_published_records(tmp_path: Path) -> None:
    record = tmp_path / "rec.jsonl"
    with pytest.raises(pub.PublishError, match="1 message"):
        pub.publish("inference", 5, run_id="r11", sqs_client=FakeSqs(fail_ids=["3"]), record=record,
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


# --------------------------------------------------------------------------------------------------- any pipeline


def test_publish_sends_each_discovered_pipeline_to_its_own_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One call per pipeline found, no pipeline named: each goes to its broker and its source, recorded under its
    short name with its samples' ids and bodies (options at their defaults; those read from the environment, such as
    a folder the samples write to, pointed at tmp_path)."""
    for spec in pipelines.pipelines():
        for o in spec.options:
            if o.env:
                monkeypatch.setenv(o.env, str(tmp_path / spec.name / o.name))
        sqs, producer = FakeSqs(), FakeProducer()
        records = pub.publish(spec.name, 3, run_id="any", seed=1, sqs_client=sqs, producer=producer,
                              target=pub.SqsTarget(None, "http://q", "us-east-1"))
        assert [r["pipeline"] for r in records] == [spec.name] * 3
        if spec.broker == "sqs":
            assert producer.produced == [] and {c[1]["QueueUrl"] for c in sqs.calls} == {f"http://q/{spec.source}"}
            bodies = [b.encode() for b in sqs.sent]
        else:
            assert sqs.calls == [] and {t for t, _, _ in producer.produced} == {spec.source}
            bodies = [v for _, v, _ in producer.produced]
        assert [r["id"] for r in records] == [m.id for m in spec.messages("any", 3, seed=1)]
        assert [r["body_sha256"] for r in records] == [hashlib.sha256(b).hexdigest() for b in bodies]
        assert all(r["expect"] for r in records)


def test_publish_refuses_an_unknown_pipeline_or_option() -> None:
    with pytest.raises(KeyError, match="no pipeline named 'nope'"):
        pub.publish("nope", 1, sqs_client=FakeSqs())
    with pytest.raises(TypeError):
        pub.publish("inference", 1, devices=3, sqs_client=FakeSqs(), target=pub.SqsTarget(None, "http://q", "x"))


def test_publish_poison_records_the_expectations(tmp_path: Path) -> None:
    records = pub.publish("iot", run_id="pz2", poison=True, producer=FakeProducer())
    assert len(records) == 8
    assert all(set(r["expect"]) == {"dead_letter_reason_contains"} for r in records)
    records = pub.publish("etl", run_id="pz2", poison=True, landing_dir=tmp_path, sqs_client=FakeSqs(),
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


def test_cli_offers_every_discovered_pipeline_and_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    parser = pub.build_parser()
    [positional] = [a for a in parser._actions if a.dest == "pipeline"]
    assert positional.choices == pipelines.names() and set(pipelines.names()) == {"etl", "iot", "inference"}
    flags = {f for a in parser._actions for f in a.option_strings}
    assert {o.flag for p in pipelines.pipelines() for o in p.options} <= flags
    assert {"--rows", "--devices", "--landing-dir", "--landing-uri-prefix"} <= flags  # the documented CLI
    for bad in (["iot", "--devices", "0"], ["etl", "--rows", "-1"], ["etl", "--count", "-1"]):
        with pytest.raises(SystemExit):
            pub.main(bad)
        assert "--devices >= 1" in capsys.readouterr().err
