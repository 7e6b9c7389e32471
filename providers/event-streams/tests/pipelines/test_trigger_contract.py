"""The installed event_streams distribution and this project agree: the payloads its triggers emit are read by
``messages``, its built-in Kafka record form is ``kafka_message_to_event``'s, and its offset logic reads Envelopes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from event_streams import payload
from event_streams.kafka_offsets import settled_intervals
from event_streams.pipelines.messages import (
    MAX_BODY_BYTES,
    Envelope,
    envelopes_from_asset_events,
    kafka_message_to_event,
)
from event_streams.triggers import StreamingSqsTrigger


class Record:
    def __init__(self, value: bytes | None, key: Any = b"pump-1", timestamp: int = 1_764_000_000_000) -> None:
        self._value, self._key, self._ts = value, key, timestamp

    def value(self): return self._value
    def key(self): return self._key
    def topic(self): return "iot-readings"
    def partition(self): return 2
    def offset(self): return 7
    def timestamp(self): return (1, self._ts)
    def headers(self): return None


@pytest.mark.parametrize("record", [
    Record(b'{"a": 1}'), Record(b"\xff\x00"), Record(b"x" * (MAX_BODY_BYTES + 1)), Record(None, key=None, timestamp=0),
    Record(b"", key="text-key"),
])
def test_built_in_record_form_is_kafka_message_to_event(record: Record) -> None:
    assert payload.kafka_record(record, MAX_BODY_BYTES) == kafka_message_to_event(record)


class OneMessage:
    async def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        return {"Messages": [{"MessageId": "big", "ReceiptHandle": "rh", "Body": "é" * 150}]}


def test_payloads_of_both_triggers_are_read_by_messages() -> None:
    trigger = StreamingSqsTrigger(sqs_queue="q", max_message_bytes=200, max_messages_per_event=1)
    (big,) = asyncio.run(trigger.gather(OneMessage()))
    kafka = {payload.SOURCE: payload.KAFKA_BATCH, payload.RECORDS: [payload.kafka_record(Record(b"{}"))]}
    envelopes = envelopes_from_asset_events([
        {"payload": {"status": "success", payload.MESSAGE_BATCH: [big]}}, {"payload": kafka}])
    assert [(e.source, e.message_id) for e in envelopes] == [("sqs", "big"), ("kafka", "iot-readings/2/7")]
    assert envelopes[0].body is None and envelopes[0].body_omitted_bytes == 300  # bytes, not characters
    assert settled_intervals(envelopes) == {("iot-readings", 2): [(7, 8)]}
    assert isinstance(envelopes[1], Envelope)
