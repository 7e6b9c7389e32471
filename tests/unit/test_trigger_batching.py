"""How the streaming triggers pack messages into events: a lone message is not held back, a backlog is packed.

The broker clients are replaced by scripted stand-ins here (this is about the gathering loop, not the brokers); the
triggers run against the real brokers in tests/e2e and tests/faults.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from include.event_pipelines.triggers import StreamingKafkaTrigger, StreamingSqsTrigger


class ScriptedSqs:
    """``receive_message`` answers from a script: one list of message ids per call, then nothing."""

    def __init__(self, *answers: list[str], deleted: tuple[str, ...] = ()) -> None:
        self.answers = deque(answers)
        self.waits: list[int] = []
        self.deleted = set(deleted)
        self.visibility: dict[str, int] = {}

    async def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        self.waits.append(kwargs["WaitTimeSeconds"])
        ids = self.answers.popleft() if self.answers else []
        return {"Messages": [{"MessageId": i, "ReceiptHandle": f"rh-{i}", "Body": "{}"} for i in ids]}


    async def change_message_visibility_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        ok, failed = [], []
        for e in Entries:
            if e["ReceiptHandle"] in self.deleted:
                failed.append({"Id": e["Id"], "Code": "ReceiptHandleIsInvalid"})
            else:
                self.visibility[e["ReceiptHandle"]] = e["VisibilityTimeout"]
                ok.append({"Id": e["Id"]})
        return {"Successful": ok, "Failed": failed}


def _sqs(**kwargs: Any) -> StreamingSqsTrigger:
    return StreamingSqsTrigger(sqs_queue="http://sqs.local/000000000000/q", **kwargs)


def test_sqs_lone_message_is_yielded_after_one_empty_look() -> None:
    client = ScriptedSqs(["m1"])
    started = time.monotonic()
    batch = asyncio.run(_sqs(linger_seconds=5).gather(client))
    assert [m["MessageId"] for m in batch] == ["m1"]
    assert client.waits == [20, 0]  # the long poll, then one look for more: no lingering on an empty queue
    assert time.monotonic() - started < 1


def test_sqs_backlog_is_packed_up_to_the_cap() -> None:
    client = ScriptedSqs(*[[f"m{i}{j}" for j in range(10)] for i in range(5)])
    batch = asyncio.run(_sqs(max_messages_per_event=30).gather(client))
    assert len(batch) == 30
    assert len(client.answers) == 2  # stopped receiving once full; the rest stays in the queue, invisible to no one


def test_sqs_in_a_stream_keeps_packing_until_linger_after_the_last_event() -> None:
    trigger = _sqs(linger_seconds=0.3)
    trigger._last_event_at = time.monotonic()  # an event just went out: we are in a stream
    client = ScriptedSqs(["m1"], [], [], ["m2"])
    batch = asyncio.run(trigger.gather(client))
    assert [m["MessageId"] for m in batch] == ["m1", "m2"]  # the empty looks did not end the batch
    assert time.monotonic() - trigger._last_event_at < 0.1  # and the next event is paced from this one


def test_sqs_hands_messages_over_to_the_run_budget_once_their_event_is_stored() -> None:
    trigger = _sqs(handover_after_seconds=0.2, handover_visibility_timeout=300)
    client = ScriptedSqs([f"m{i}" for i in range(12)], deleted=("rh-m3",))
    batch = asyncio.run(trigger.gather(client))
    trigger.handed(batch)
    assert trigger._long_poll_seconds() == 1  # the long poll is cut short so the handover is not late
    assert asyncio.run(trigger.hand_over(client)) == 0 and client.visibility == {}  # not yet: still 20 s
    time.sleep(0.25)
    assert asyncio.run(trigger.hand_over(client)) == 11  # m3 was already deleted by its run: skipped
    assert client.visibility == {f"rh-m{i}": 300 for i in range(12) if i != 3}
    assert trigger._long_poll_seconds() == 20


def test_sqs_empty_long_poll_yields_nothing() -> None:
    assert asyncio.run(_sqs().gather(ScriptedSqs())) == []


class FakeRecord:
    def __init__(self, offset: int) -> None:
        self._offset = offset

    def error(self) -> None:
        return None

    def value(self) -> bytes:
        return b'{"reading": 1}'

    def key(self) -> bytes:
        return b"dev-1"

    def timestamp(self) -> tuple[int, int]:
        return 1, 1_700_000_000_000

    def topic(self) -> str:
        return "iot-readings"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


class ScriptedConsumer:
    """``consume`` answers with up to ``num_messages`` of the records already fetched (like librdkafka's queue)."""

    def __init__(self, fetched: int) -> None:
        self.fetched = deque(FakeRecord(i) for i in range(fetched))
        self.calls: list[tuple[int, float]] = []

    def consume(self, num_messages: int, timeout: float) -> list[FakeRecord]:
        self.calls.append((num_messages, timeout))
        return [self.fetched.popleft() for _ in range(min(num_messages, len(self.fetched)))]


def _kafka(consumer: ScriptedConsumer, **kwargs: Any) -> StreamingKafkaTrigger:
    trigger = StreamingKafkaTrigger(topics=["iot-readings"], **kwargs)
    trigger._consumer = consumer
    return trigger


def test_kafka_lone_record_returns_on_arrival() -> None:
    consumer = ScriptedConsumer(1)
    records = _kafka(consumer, poll_timeout=1.0, linger_seconds=5).gather()
    assert [r["message_id"] for r in records] == ["iot-readings/0/0"]
    # wait for one record (returns as soon as it is there), then one look at what is already fetched
    assert consumer.calls == [(1, 1.0), (499, 0)]


def test_kafka_in_a_stream_waits_for_more_until_linger_after_the_last_event() -> None:
    consumer = ScriptedConsumer(3)
    trigger = _kafka(consumer, linger_seconds=0.5)
    trigger._last_event_at = time.monotonic()
    assert len(trigger.gather()) == 3
    first, second = consumer.calls[:2]
    assert first == (1, 1.0)
    assert second[0] == 499 and 0.3 < second[1] <= 0.5  # consume() may block for the rest of the linger


def test_kafka_backlog_is_packed_up_to_the_cap() -> None:
    consumer = ScriptedConsumer(1200)
    records = _kafka(consumer, max_messages_per_event=500).gather()
    assert [r["message_id"] for r in records] == [f"iot-readings/0/{i}" for i in range(500)]
    assert len(consumer.fetched) == 700


def test_kafka_nothing_fetched_yields_nothing() -> None:
    consumer = ScriptedConsumer(0)
    assert _kafka(consumer, poll_timeout=0.5).gather() == []
    assert consumer.calls == [(1, 0.5)]
