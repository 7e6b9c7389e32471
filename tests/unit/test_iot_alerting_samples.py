"""IoT alerting's samples module (``include/iot_alerting/samples.py``): its readings are valid, the transitions it
expects are the ones the pipeline produces, its poison is dead-lettered as recorded, and its sink check compares the
alerts on the topic with those transitions, reading by reading."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine

from event_streams.pipelines import db
from event_streams.pipelines.messages import (
    MAX_BODY_BYTES,
    Envelope,
    PoisonMessage,
    decode,
    kafka_message_to_event,
)
from event_streams.pipelines.samples_api import Sample
from include.iot_alerting.pipeline import process_readings
from include.iot_alerting.samples import SAMPLES, check, compare_alerts, describe, expected_alerts, messages, poison
from include.iot_alerting.schemas import AlertEvent, SensorReading
from tests.fakes import FakeKafkaMessage

T0 = datetime(2026, 11, 24, 8, 0, tzinfo=timezone.utc)


def kafka_envelope(offset: int, msg: Sample, topic: str = "iot-readings") -> Envelope:
    """The envelope the Kafka watcher would build for this record (through the real apply function)."""
    raw = FakeKafkaMessage(topic, 0, offset, msg.body, msg.key.encode() if msg.key else None)
    return Envelope.model_validate(kafka_message_to_event(raw))


class AlertRecorder:
    def __init__(self) -> None:
        self.alerts: list[AlertEvent] = []

    def __call__(self, alerts: Sequence[AlertEvent]) -> None:
        self.alerts.extend(alerts)


class Topic:
    """A ``SinkReader`` whose alert topic holds the given alerts (and other records, for other devices)."""

    def __init__(self, alerts: list[AlertEvent]) -> None:
        self.values = [a.model_dump_json().encode() for a in alerts]
        self.read: list[str] = []

    def topic(self, topic: str) -> list[bytes]:
        self.read.append(topic)
        return self.values

    def take(self, queue: str, field: str, wanted: set[str]) -> dict[str, int]:
        raise AssertionError("the IoT check read a queue")


def records_of(msgs: list[Sample], envelopes: list[Envelope]) -> list[dict[str, Any]]:
    return [{"pipeline": "iot", "id": m.id, "message_id": e.message_id, "expect": m.expect}
            for m, e in zip(msgs, envelopes, strict=True)]


def test_the_samples_describe_the_pipeline() -> None:
    assert (SAMPLES.name, SAMPLES.dag_id, SAMPLES.broker) == ("iot", "iot_alerting", "kafka")
    assert (SAMPLES.source, SAMPLES.dlq) == ("iot-readings", "iot-readings-dlq")
    assert [(o.flag, o.default, o.minimum) for o in SAMPLES.options] == [("--devices", 5, 1)]


def test_readings_are_valid_and_round_robin_over_devices() -> None:
    msgs = list(messages("r4", 12, devices=3, seed=3, start=T0))
    readings = [decode(kafka_envelope(i, m), SensorReading) for i, m in enumerate(msgs)]
    assert {r.device_id for r in readings} == {"dev-r4-0", "dev-r4-1", "dev-r4-2"}
    assert all(m.key == r.device_id == m.id.rsplit("#", 1)[0] for m, r in zip(msgs, readings, strict=True))
    assert all(r.sensor == "temperature" and r.unit == "C" for r in readings)
    dev0 = [r.ts for r in readings if r.device_id == "dev-r4-0"]
    assert [(t - T0).total_seconds() for t in dev0] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="devices"):
        next(iter(messages("r4", 1, devices=0)))


@pytest.mark.parametrize("chunks", [[60], [7, 13, 1, 20, 19]], ids=["one run", "several runs"])
def test_expected_transitions_are_what_the_pipeline_produces(engine: Engine, chunks: list[int]) -> None:
    msgs = list(messages("r5", sum(chunks), devices=5, seed=11, start=T0))
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
    raised, cleared = expected_alerts([{"expect": m.expect} for m in msgs])
    assert raised >= 5 and cleared >= 5  # the sequences are designed to raise and clear
    assert (raised, cleared) == (list(produced.values()).count("raised"), list(produced.values()).count("cleared"))
    assert describe([{"expect": m.expect} for m in msgs]) == f"expected alerts: {raised} raised, {cleared} cleared"


def test_alerts_are_checked_against_per_device_order(engine: Engine, tmp_path: Path) -> None:
    """compare_alerts, the e2e and HA suites' order check: a device's readings applied in order give no problem (a
    retried run's repeats are only counted); applied out of order, the check names it."""
    msgs = list(messages("r9", 40, devices=2, seed=11, start=T0))
    envelopes = [kafka_envelope(i, m) for i, m in enumerate(msgs)]
    records = records_of(msgs, envelopes)

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


def test_the_sink_check_reads_the_alert_topic_and_names_a_missing_alert(engine: Engine) -> None:
    msgs = list(messages("r10", 20, devices=2, seed=11, start=T0))
    envelopes = [kafka_envelope(i, m) for i, m in enumerate(msgs)]
    records = records_of(msgs, envelopes)
    recorder = AlertRecorder()
    process_readings(envelopes, engine, recorder, now=T0 + timedelta(hours=1))
    assert recorder.alerts
    other_device = recorder.alerts[0].model_copy(update={"device_id": "someone-else", "dedup_key": "x"})
    reader = Topic(recorder.alerts + [other_device])  # another publisher's alert on the topic is not ours
    result = check(engine, records, reader)
    raised, cleared = expected_alerts(records)
    assert reader.read == ["iot-alerts"]
    assert result.rows == 20 and result.missing == []
    assert result.outputs == {"alerts_raised": raised, "alerts_cleared": cleared, "alert_duplicates": 0,
                              "alerts_out_of_order": 0}
    missing_one = check(engine, records, Topic(recorder.alerts[1:]))
    assert missing_one.missing and missing_one.missing[0].startswith("alerts ")
    assert missing_one.outputs["alerts_raised"] + missing_one.outputs["alerts_cleared"] == raised + cleared - 1


def test_the_sink_check_names_readings_not_stored(engine: Engine) -> None:
    msgs = list(messages("r11", 6, devices=1, seed=2, start=T0))
    envelopes = [kafka_envelope(i, m) for i, m in enumerate(msgs)]
    recorder = AlertRecorder()
    process_readings(envelopes[:4], engine, recorder, now=T0 + timedelta(hours=1))
    result = check(engine, records_of(msgs, envelopes), Topic(recorder.alerts))
    assert result.rows == 4 and "2 of 6 readings not stored" in result.missing


def kind(m: Sample) -> str:
    return m.id.removeprefix("poison-pz-")


def test_poison_kinds_and_bodies() -> None:
    by_kind = {kind(m): m for m in poison("pz")}
    assert set(by_kind) == {"not_json", "not_object", "wrong_schema", "empty", "wrong_type", "out_of_range",
                            "oversize", "invalid_utf8"}
    assert by_kind["empty"].body == b""
    assert len(by_kind["oversize"].body) > MAX_BODY_BYTES and len(by_kind["oversize"].body) < 1_000_000
    assert by_kind["invalid_utf8"].body.startswith(b"\xff\xfe")
    assert all(m.key == "poison-pz" for m in by_kind.values())


def test_every_poison_body_is_dead_lettered_with_the_recorded_reason(engine: Engine) -> None:
    msgs = poison("pz")
    for i, m in enumerate(msgs):
        with pytest.raises(PoisonMessage) as caught:
            decode(kafka_envelope(i, m), SensorReading)
        assert m.expect["dead_letter_reason_contains"] in caught.value.reason, (m.id, caught.value.reason)
    outcome = process_readings([kafka_envelope(i, m) for i, m in enumerate(msgs)], engine, AlertRecorder())
    assert outcome.readings == 0 and len(outcome.dead_letters) == len(msgs)
    for m, dead in zip(msgs, outcome.dead_letters, strict=True):
        assert m.expect["dead_letter_reason_contains"] in dead["reason"]
    assert all(json.loads(m.body) for m in msgs if kind(m) in ("wrong_type", "out_of_range"))
