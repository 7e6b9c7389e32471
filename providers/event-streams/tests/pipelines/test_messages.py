from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, ConfigDict

from event_streams.pipelines.messages import (
    MAX_BODY_BYTES,
    Envelope,
    PoisonMessage,
    decode,
    envelopes_from_asset_events,
    envelopes_from_conf,
    kafka_message_to_event,
    raw_bytes,
    raw_headers,
    raw_key,
)


class Record:
    """A stand-in for a confluent_kafka.Message (a plain value object; no broker involved)."""

    def __init__(self, value: bytes | None, offset: int = 7, key: bytes | None = b"pump-1",
                 headers: list[tuple[str, bytes | None]] | None = None) -> None:
        self._value, self._offset, self._key, self._headers = value, offset, key, headers

    def value(self): return self._value
    def key(self): return self._key
    def topic(self): return "iot-readings"
    def partition(self): return 2
    def offset(self): return self._offset
    def timestamp(self): return (1, 1_764_000_000_000)
    def headers(self): return self._headers


class Thing(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    n: int
    name: str


def sqs_event(*messages: tuple[str, str, str]) -> dict:
    return {"from_trigger": True, "payload": {"status": "success", "message_batch": [
        {"MessageId": mid, "ReceiptHandle": rh, "Body": body, "MD5OfBody": "x"} for mid, rh, body in messages]}}


def test_kafka_apply_function_keeps_identity_and_body() -> None:
    event = kafka_message_to_event(Record(b'{"a": 1}'))
    assert event["message_id"] == "iot-readings/2/7"
    assert (event["topic"], event["partition"], event["offset"], event["key"]) == ("iot-readings", 2, 7, "pump-1")
    assert event["body"] == '{"a": 1}' and event["broker_timestamp_ms"] == 1_764_000_000_000
    json.dumps(event)  # must be storable as an asset-event extra


@pytest.mark.parametrize("value", [b"\xff\xfe not utf-8", b"", None])
def test_kafka_apply_function_never_drops_a_record(value: bytes | None) -> None:
    event = kafka_message_to_event(Record(value))
    assert event, "a falsy return makes AwaitMessageTrigger commit past the record and drop it"
    env = Envelope.model_validate(event)
    assert raw_bytes(env) == (value or b"")


def test_all_coalesced_events_and_every_batch_message_are_read() -> None:
    events = [
        sqs_event(("m1", "rh1", "a"), ("m2", "rh2", "b")),
        {"from_trigger": False},  # an asset event not emitted by a watcher: no payload, no message
        sqs_event(("m3", "rh3", "c"), ("m1", "rh1-new", "a")),  # m1 redelivered after its visibility timeout
        {"payload": kafka_message_to_event(Record(b"k"))},
    ]
    envs = envelopes_from_asset_events(events)
    assert [e.message_id for e in envs] == ["m1", "m2", "m3", "iot-readings/2/7"]
    assert envs[0].receipt_handle == "rh1-new", "only the newest receipt handle can delete the message"


def test_unknown_payload_is_an_error_not_a_silent_skip() -> None:
    with pytest.raises(ValueError, match="unrecognised trigger payload"):
        envelopes_from_asset_events([{"payload": {"something": "else"}}])


def test_manual_run_messages() -> None:
    envs = envelopes_from_conf("manual__1", [{"n": 1, "name": "x"}, "raw"])
    assert [e.message_id for e in envs] == ["manual:manual__1:0", "manual:manual__1:1"]
    assert decode(envs[0], Thing) == Thing(n=1, name="x")


@pytest.mark.parametrize(
    ("body", "b64", "reason"),
    [
        ("", None, "empty body"),
        ("   ", None, "empty body"),
        (None, "//79", "not valid UTF-8"),
        ("{not json", None, "not JSON"),
        ("[1, 2]", None, "expected an object"),
        ('{"n": 1}', None, "name: Field required"),
        ('{"n": "1", "name": "x"}', None, "n: Input should be a valid integer"),
        ('{"n": 1, "name": "x", "extra": true}', None, "extra: Extra inputs are not permitted"),
        ("x" * (MAX_BODY_BYTES + 1), None, "over the 262144-byte limit"),
    ],
)
def test_poison_messages_get_a_reason_naming_the_message(body: str | None, b64: str | None, reason: str) -> None:
    env = Envelope(source="sqs", message_id="msg-42", body=body, body_b64=b64)
    with pytest.raises(PoisonMessage) as info:
        decode(env, Thing)
    assert info.value.message_id == "msg-42" and reason in info.value.reason
    assert str(info.value).startswith("message msg-42: ")


def test_a_streamed_kafka_batch_yields_every_record_once() -> None:
    records = [kafka_message_to_event(Record(b'{"a": %d}' % i, offset=i)) for i in range(3)]
    events = [{"payload": {"source": "kafka_batch", "records": records}},
              {"payload": {"source": "kafka_batch", "records": records[1:]}}]  # re-read after a triggerer restart
    assert [e.message_id for e in envelopes_from_asset_events(events)] == [f"iot-readings/2/{i}" for i in range(3)]


def test_each_record_counts_in_the_consumer_group_its_event_names() -> None:
    records = [kafka_message_to_event(Record(b'{"a": %d}' % i, offset=i)) for i in range(2)]
    events = [{"payload": {"source": "kafka_batch", "group_id": "airflow.iot_alerting", "records": records[:1]}},
              {"payload": {"source": "kafka_batch", "group_id": "airflow.iot_copy", "records": records[1:]}},
              {"payload": {"source": "kafka_batch", "records": [records[0] | {"offset": 5, "message_id": "x/0/5"}]}}]
    assert [e.group_id for e in envelopes_from_asset_events(events)] == ["airflow.iot_alerting", "airflow.iot_copy",
                                                                         None]  # an event from before groups


def test_dead_letter_copies_keep_the_original_headers_in_order() -> None:
    headers = [("traceparent", b"00-abc-01"), ("bin", b"\xff\x00"), ("none", None), ("traceparent", b"again")]
    [env] = envelopes_from_asset_events([{"payload": {"source": "kafka_batch", "records": [
        kafka_message_to_event(Record(b"{}", headers=headers))]}}])
    assert raw_headers(env) == headers
    assert raw_headers(Envelope(source="kafka", message_id="t/0/1", body="{}")) == []


def test_dead_letter_copies_keep_the_original_key_bytes() -> None:
    binary = Envelope(source="kafka", message_id="t/0/1", body="{}", key_b64="/wBkZXY=")
    assert raw_key(binary) == b"\xff\x00dev"
    assert raw_key(Envelope(source="kafka", message_id="t/0/2", body="{}", key="pump-1")) == b"pump-1"
    assert raw_key(Envelope(source="kafka", message_id="t/0/3", body="{}")) is None


def test_a_shared_stream_event_is_a_message_named_by_its_value() -> None:
    """Airflow 3.3's KafkaSharedStreamTrigger (the benchmark's ``shared`` baseline) gives one event per record whose
    payload is the value as text: the message is named by the value's SHA-256, as the publisher records it."""
    import hashlib

    reading = '{"device_id": "pump-1", "sensor": "temperature", "value": 81.5, "unit": "C", "ts": "2026-12-06T08:00:00Z"}'
    events = [{"payload": reading}, {"payload": reading}, {"payload": reading.replace("81.5", "82.0")}]
    envelopes = envelopes_from_asset_events(events)
    assert [e.message_id for e in envelopes] == [
        "sha256:" + hashlib.sha256(reading.encode()).hexdigest(),
        "sha256:" + hashlib.sha256(reading.replace("81.5", "82.0").encode()).hexdigest()]  # the same value: once
    assert envelopes[0].source == "kafka" and envelopes[0].body == reading and envelopes[0].offset is None
