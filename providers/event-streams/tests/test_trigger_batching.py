"""How the streaming triggers pack messages into events: a lone message is not held back, a backlog is packed.

The broker clients are replaced by scripted stand-ins here (this is about the gathering loop, not the brokers); the
triggers run against the real brokers in tests/stack/e2e and tests/stack/faults.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, OFFSET_INVALID, TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from event_streams.triggers import StreamingKafkaTrigger, StreamingSqsTrigger, kafka_body_bytes


class ScriptedSqs:
    """``receive_message`` answers from a script: one list of message ids per call (at most the number asked for,
    the rest in the next answer), then nothing."""

    def __init__(
        self, *answers: list[str], deleted: tuple[str, ...] = (), bodies: dict[str, str] | None = None
    ) -> None:
        self.answers = deque(answers)
        self.waits: list[int] = []
        self.deleted = set(deleted)
        self.visibility: dict[str, int] = {}
        self.bodies = bodies or {}

    async def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        self.waits.append(kwargs["WaitTimeSeconds"])
        ids = self.answers.popleft() if self.answers else []
        if len(ids) > kwargs["MaxNumberOfMessages"]:
            self.answers.appendleft(ids[kwargs["MaxNumberOfMessages"]:])
            ids = ids[: kwargs["MaxNumberOfMessages"]]
        return {"Messages": [{"MessageId": i, "ReceiptHandle": f"rh-{i}", "Body": self.bodies.get(i, "{}")}
                             for i in ids]}

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
    def __init__(self, offset: int, size: int = 14, partition: int = 0, key: bytes = b"dev-1") -> None:
        self._offset = offset
        self._value = b'{"reading": 1}' if size == 14 else b"x" * size
        self._partition = partition
        self._key = key

    def error(self) -> None:
        return None

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes:
        return self._key

    def timestamp(self) -> tuple[int, int]:
        return 1, 1_700_000_000_000

    def headers(self) -> list[tuple[str, bytes]] | None:
        return getattr(self, "_headers", None)

    def topic(self) -> str:
        return "iot-readings"

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


class ScriptedConsumer:
    """``consume`` answers with up to ``num_messages`` of the records already fetched (like librdkafka's queue)."""

    def __init__(self, fetched: int = 0, sizes: list[int] | None = None) -> None:
        self.fetched = deque(FakeRecord(i) for i in range(fetched))
        self.fetched += [FakeRecord(i, size) for i, size in enumerate(sizes or [])]
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


def _all_of(trigger_gather: Any, limit: int = 10_000) -> list[list[dict[str, Any]]]:
    """Every event ``gather`` packs until it returns nothing."""
    events = []
    for _ in range(limit):
        batch = trigger_gather()
        if not batch:
            return events
        events.append(batch)
    raise AssertionError("gather never ran dry")


# --- byte bounds -----------------------------------------------------------------------------------------------------
def test_kafka_event_stays_under_max_event_bytes_and_the_rest_opens_the_next() -> None:
    consumer = ScriptedConsumer(sizes=[400, 400, 400, 100])
    trigger = _kafka(consumer, max_event_bytes=1000, linger_seconds=0)
    first = trigger.gather()
    assert [r["offset"] for r in first] == [0, 1]  # 800 bytes; the third would make 1200
    assert [r["offset"] for r in trigger._carry] == [2, 3]  # consumed already: kept, in order
    assert [r["offset"] for r in trigger.gather()] == [2, 3]
    assert trigger.gather() == [] and not trigger._carry


def test_kafka_keys_count_toward_max_event_bytes() -> None:
    consumer = ScriptedConsumer()
    consumer.fetched += [FakeRecord(i, size=10, key=b"k" * 400) for i in range(3)]
    events = _all_of(_kafka(consumer, max_event_bytes=1000, linger_seconds=0).gather)
    assert [[r["offset"] for r in e] for e in events] == [[0, 1], [2]]  # 410 bytes each with its key


def test_kafka_headers_count_toward_max_event_bytes() -> None:
    consumer = ScriptedConsumer()
    records = [FakeRecord(i, size=10, key=b"") for i in range(3)]
    for r in records:
        r._headers = [("trace", b"t" * 395)]  # type: ignore[attr-defined]  # 400 bytes of header
    consumer.fetched += records
    events = _all_of(_kafka(consumer, max_event_bytes=1000, linger_seconds=0).gather)
    assert [[r["offset"] for r in e] for e in events] == [[0, 1], [2]]  # 410 bytes each with its header


def test_kafka_records_say_where_the_read_before_them_started() -> None:
    """Assigned at 10: records 10, 11, then 15 (12-14: a marker and an aborted transaction), then 16."""
    consumer = ScriptedConsumer()
    consumer.fetched += [FakeRecord(o) for o in (10, 11, 15, 16)]
    trigger = _kafka(consumer, linger_seconds=0)
    trigger._next[("iot-readings", 0)] = trigger._records_end[("iot-readings", 0)] = 10
    records = trigger.gather()
    assert [(r["offset"], r.get("read_from")) for r in records] == [(10, None), (11, None), (15, 12), (16, None)]
    assert trigger._records_end[("iot-readings", 0)] == 17


def test_kafka_a_single_record_over_max_event_bytes_goes_alone() -> None:
    consumer = ScriptedConsumer(sizes=[50, 5000, 50])
    events = _all_of(_kafka(consumer, max_event_bytes=1000, linger_seconds=0).gather)
    assert [[r["offset"] for r in e] for e in events] == [[0], [1], [2]]


def test_kafka_carried_over_records_go_out_without_waiting_for_new_ones() -> None:
    consumer = ScriptedConsumer(sizes=[600, 600])
    trigger = _kafka(consumer, max_event_bytes=1000, linger_seconds=0)
    trigger.gather()
    consumer.calls.clear()
    assert [r["offset"] for r in trigger.gather()] == [1]
    assert all(timeout == 0 for _, timeout in consumer.calls)  # no blocking poll for a first record


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.sampled_from([0, 1, 10, 300, 999, 1000, 1001, 4000]), max_size=60),
    max_bytes=st.integers(1, 3000),
    max_messages=st.integers(1, 12),
)
def test_kafka_events_respect_both_bounds_and_lose_nothing(sizes: list[int], max_bytes: int, max_messages: int) -> None:
    trigger = _kafka(ScriptedConsumer(sizes=sizes), max_event_bytes=max_bytes, max_messages_per_event=max_messages,
                     linger_seconds=0, poll_timeout=0)
    events = _all_of(trigger.gather)
    assert [r["offset"] for e in events for r in e] == list(range(len(sizes)))  # all, once, in order
    for e in events:
        assert 1 <= len(e) <= max_messages
        assert len(e) == 1 or sum(kafka_body_bytes(r) for r in e) <= max_bytes


def test_sqs_event_stays_under_max_event_bytes_and_carried_messages_go_first_without_a_long_poll() -> None:
    bodies = {f"m{i}": "x" * 400 for i in range(4)}
    client = ScriptedSqs(["m0", "m1", "m2"], ["m3"], bodies=bodies)
    trigger = _sqs(max_event_bytes=1000, linger_seconds=0)
    first = asyncio.run(trigger.gather(client))
    assert [m["MessageId"] for m in first] == ["m0", "m1"]
    assert client.waits == [20]  # full after the first receive: no further look
    second = asyncio.run(trigger.gather(client))
    assert [m["MessageId"] for m in second] == ["m2", "m3"]  # the carried one first, and no 20 s long poll for it
    assert client.waits == [20, 0, 0]


def test_sqs_body_over_the_message_limit_is_left_out_of_the_event() -> None:
    client = ScriptedSqs(["big", "ok"], bodies={"big": "é" * 150, "ok": "{}"})
    batch = asyncio.run(_sqs(max_message_bytes=200, max_event_bytes=10).gather(client))
    big, ok = batch
    assert "Body" not in big and big["BodyOmittedBytes"] == 300  # bytes, not characters
    assert ok["Body"] == "{}"  # the omitted body counts for nothing in the event's bytes
    # (that the project's Envelope.from_sqs reads it: tests/unit/test_event_streams_contract.py)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.sampled_from([0, 5, 200, 999, 1000, 2500]), max_size=40),
    max_bytes=st.integers(1, 3000),
    max_messages=st.integers(1, 15),
)
def test_sqs_events_respect_both_bounds_and_lose_nothing(sizes: list[int], max_bytes: int, max_messages: int) -> None:
    ids = [f"m{i}" for i in range(len(sizes))]
    client = ScriptedSqs(*[ids[i : i + 10] for i in range(0, len(ids), 10)],
                         bodies={i: "x" * n for i, n in zip(ids, sizes, strict=True)})
    trigger = _sqs(max_event_bytes=max_bytes, max_messages_per_event=max_messages, linger_seconds=0,
                   max_message_bytes=2000)
    events = []
    while batch := asyncio.run(trigger.gather(client)):
        events.append(batch)
    assert [m["MessageId"] for e in events for m in e] == ids
    for e in events:
        assert 1 <= len(e) <= max_messages
        assert len(e) == 1 or sum(len(m.get("Body", "")) for m in e) <= max_bytes


# --- redelivery of records no run settled ----------------------------------------------------------------------------
class GroupView:
    """What the trigger's consumer sees of its group: committed offsets and positions it can be told; seeks."""

    def __init__(self, committed: int, position: int) -> None:
        self.committed_offset, self.position_offset = committed, position
        self.seeks: list[tuple[str, int, int]] = []

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.committed_offset) for tp in partitions]

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.position_offset) for tp in partitions]

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))
        self.position_offset = tp.offset

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        assert asynchronous is False
        [tp] = offsets
        self.committed_offset = tp.offset


def _watching(view: GroupView, seconds: float = 120) -> StreamingKafkaTrigger:
    trigger = StreamingKafkaTrigger(topics=["iot-readings"], redelivery_seconds=seconds)
    trigger._consumer = view
    trigger._assigned = {("iot-readings", 0)}
    return trigger


def test_no_rewind_while_the_committed_offset_advances() -> None:
    view = GroupView(committed=10, position=50)
    trigger = _watching(view)
    for now, committed in [(0, 10), (100, 20), (200, 30), (300, 40), (419, 40)]:
        view.committed_offset = committed
        assert trigger.redeliver(now) == []
    assert view.seeks == []


def test_rewind_to_the_committed_offset_once_it_stood_still_for_redelivery_seconds(caplog: Any, capsys: Any) -> None:
    view = GroupView(committed=10, position=50)
    trigger = _watching(view)
    trigger._carry.extend([{"topic": "iot-readings", "partition": 0, "offset": 50},
                           {"topic": "iot-readings", "partition": 1, "offset": 7}])
    assert trigger.redeliver(0) == []
    assert trigger.redeliver(119) == []
    view.position_offset = 60  # still reading on
    assert trigger.redeliver(120) == [("iot-readings", 0, 10)]
    assert view.seeks == [("iot-readings", 0, 10)]
    assert [r["partition"] for r in trigger._carry] == [1]  # this partition's carried records will be read again
    logged = caplog.text + capsys.readouterr().out  # Airflow's logging may print instead of propagating
    assert "re-reading iot-readings/0 from 10: not settled for 120 s" in logged
    view.position_offset = 30
    assert trigger.redeliver(125) == []  # the clock restarted at the rewind
    assert trigger.redeliver(240) == [("iot-readings", 0, 10)]  # still not settled: read once more


def test_no_rewind_when_everything_read_is_committed() -> None:
    view = GroupView(committed=50, position=50)
    trigger = _watching(view)
    assert trigger.redeliver(0) == [] and trigger.redeliver(1000) == []
    view.position_offset = 51  # a record arrives after a long quiet spell: its run gets the full delay
    assert trigger.redeliver(1001) == [] and trigger.redeliver(1120) == []
    assert view.seeks == []
    assert trigger.redeliver(1121) == [("iot-readings", 0, 50)]  # 120 s after it was first seen unsettled


def test_rewind_without_a_committed_offset_goes_to_the_reset_position() -> None:
    view = GroupView(committed=OFFSET_INVALID, position=5)
    trigger = _watching(view, seconds=10)
    assert trigger.redeliver(0) == [] and trigger.redeliver(10) == [("iot-readings", 0, OFFSET_BEGINNING)]
    assert view.seeks == [("iot-readings", 0, OFFSET_BEGINNING)]


def test_the_trigger_commits_a_trailing_stretch_without_records_once_all_before_it_is_settled() -> None:
    """Records up to 49 were delivered and settled (committed 50); the consumer read on to 52 over a transaction's
    marker and records nobody receives: the trigger commits 52 itself, at once, and never re-reads."""
    view = GroupView(committed=50, position=52)
    trigger = _watching(view)
    key = ("iot-readings", 0)
    trigger._next[key] = trigger._records_end[key] = 50
    trigger._carry.append({"topic": "iot-readings", "partition": 0, "offset": 52})  # taken, not delivered yet
    assert trigger.redeliver(0) == [] and view.committed_offset == 50  # a record of it waits: not yet
    trigger._carry.clear()
    trigger._records_end[key] = 51  # the record at 50 is in an event whose run has not settled it
    assert trigger.redeliver(1) == [] and view.committed_offset == 50
    trigger._records_end[key] = 50
    assert trigger.redeliver(2) == [] and view.committed_offset == 52
    assert trigger.redeliver(500) == [] and view.seeks == []


def test_redelivery_settings_round_trip_through_serialize() -> None:
    trigger = StreamingKafkaTrigger(topics=["t"], group_id="airflow.dag", redelivery_seconds=30, max_event_bytes=2048)
    path, kwargs = trigger.serialize()
    assert path == "event_streams.triggers.StreamingKafkaTrigger" and kwargs["group_id"] == "airflow.dag"
    assert StreamingKafkaTrigger(**kwargs).serialize() == (path, kwargs)
    sqs = _sqs(max_event_bytes=10, max_message_bytes=5)
    assert StreamingSqsTrigger(**sqs.serialize()[1]).serialize() == sqs.serialize()


class Partitions:
    """A consumer's view of a topic with three partitions: 0 has a committed offset, 1 and 2 have none."""

    def __init__(self) -> None:
        self.commits: list[list[tuple[str, int, int]]] = []
        self.assigned: list[tuple[str, int, int]] = []

    def list_topics(self, topic: str, timeout: float) -> Any:
        meta = type("T", (), {"error": None, "partitions": {0: None, 1: None, 2: None}})
        return type("M", (), {"topics": {topic: meta}})

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, 7 if tp.partition == 0 else OFFSET_INVALID)
                for tp in partitions]

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        return 3, 40  # log start 3 (retention), end 40

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        assert asynchronous is False
        self.commits.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned += [(tp.topic, tp.partition, tp.offset) for tp in partitions]


@pytest.mark.parametrize(("from_beginning", "start"), [(True, 3), (False, 40)])
def test_a_partition_without_a_committed_offset_starts_at_a_committed_reset_position(from_beginning: bool,
                                                                                     start: int) -> None:
    """With ``latest``, a first run that fails for good must hold the offset back: the start is committed first."""
    consumer = Partitions()
    trigger = StreamingKafkaTrigger(topics=["t"])
    trigger._from_beginning = from_beginning
    trigger._consumer = consumer
    trigger._assign(consumer, set())
    assert consumer.commits == [[("t", 1, start), ("t", 2, start)]]  # partition 0 keeps its own
    assert consumer.assigned == [("t", 0, 7), ("t", 1, start), ("t", 2, start)]
    assert trigger._next == {("t", 0): 7, ("t", 1): start, ("t", 2): start}


def test_a_partition_the_broker_dropped_resumes_at_the_offset_the_runs_committed_last(tmp_path: Any,
                                                                                     monkeypatch: Any) -> None:
    """The triggerer was down longer than offsets.retention.minutes: partitions 1 and 2 have no committed offset.
    Partition 1's runs committed 25 last (kept in the events database): it resumes there, not at the log start;
    partition 2 was never committed by a run: the reset position."""
    from sqlalchemy import create_engine

    from event_streams.kafka_offsets import commit_settled

    url = f"sqlite:///{tmp_path / 'events.db'}"
    monkeypatch.setenv("AIRFLOW_CONN_EVENTS_DB", url)

    class Before:  # the group as it was before the broker dropped it: partition 1 at 20
        def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
            return [TopicPartition(tp.topic, tp.partition, 20) for tp in partitions]

        def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
            return 3, 40

        def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
            pass

    runs = [type("E", (), {"source": "kafka", "topic": "t", "partition": 1, "offset": o, "read_from": None})()
            for o in range(20, 25)]
    commit_settled(create_engine(url), Before(), "airflow.dag", runs)
    consumer = Partitions()
    trigger = StreamingKafkaTrigger(topics=["t"], group_id="airflow.dag", settled_conn_id="events_db")
    trigger._config = {"group.id": "airflow.dag"}
    trigger._consumer = consumer
    trigger._assign(consumer, set())
    assert consumer.assigned == [("t", 0, 7), ("t", 1, 25), ("t", 2, 3)]
    assert consumer.commits == [[("t", 1, 25), ("t", 2, 3)]]
    assert StreamingKafkaTrigger(**trigger.serialize()[1]).settled_conn_id == "events_db"


def test_offsets_gone_from_the_broker_are_committed_back_at_once_and_never_re_read() -> None:
    view = GroupView(committed=50, position=50)
    trigger = _watching(view, seconds=10)
    assert trigger.redeliver(0) == []
    view.committed_offset = OFFSET_INVALID  # deleted behind the pipeline's back (or expired)
    view.position_offset = 55  # and records keep coming
    assert trigger.redeliver(1) == [] and view.committed_offset == 50
    view.committed_offset = 55  # their run settles them
    assert trigger.redeliver(100) == [] and view.seeks == []


def test_idle_offsets_are_renewed_every_keepalive_period_only_when_nothing_is_in_flight() -> None:
    commits: list[int] = []
    view = GroupView(committed=50, position=50)
    view.commit = lambda offsets, asynchronous: commits.append(offsets[0].offset)  # type: ignore[method-assign]
    trigger = StreamingKafkaTrigger(topics=["iot-readings"], redelivery_seconds=10**9, offsets_keepalive_seconds=100)
    trigger._consumer, trigger._assigned = view, {("iot-readings", 0)}
    trigger.redeliver(0)
    trigger.redeliver(99)
    assert commits == []
    trigger.redeliver(100)
    assert commits == [50]  # the same offset, committed again: the broker keeps it another retention period
    view.position_offset = 60  # a run is settling records: its commit renews it
    trigger.redeliver(200)
    assert commits == [50]
    assert StreamingKafkaTrigger(**trigger.serialize()[1]).offsets_keepalive_seconds == 100


def test_with_re_reading_off_offsets_are_still_kept_alive_and_restored() -> None:
    view = GroupView(committed=50, position=60)
    trigger = _watching(view, seconds=0)
    assert trigger.redeliver(0) == []
    view.committed_offset = OFFSET_INVALID  # dropped by the broker
    assert trigger.redeliver(10**6) == [] and view.committed_offset == 50 and view.seeks == []  # never re-read
