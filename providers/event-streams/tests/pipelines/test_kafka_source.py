"""Overlapping Kafka runs keep each partition's order (event_streams.pipelines.kafka_source ``_await_earlier_runs``):
a run whose records follow records of the run before it waits for that run to settle them, and stops waiting when
a run of its DAG failed for good or the wait's bound is reached. The events database is real SQLite; the earlier
run settles through ``event_streams.kafka_offsets.commit_settled`` with a scripted consumer group."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from confluent_kafka import OFFSET_INVALID, TopicPartition
from sqlalchemy import Engine

from event_streams.kafka_offsets import commit_settled
from event_streams.pipelines import db, kafka_source, redelivery
from event_streams.pipelines.messages import Envelope

T, GROUP, DAG = "iot-readings", "airflow.iot_alerting", "iot_alerting"


def records(offsets: range, partition: int = 0) -> list[Envelope]:
    return [Envelope(source="kafka", message_id=f"{T}/{partition}/{o}", body="{}", topic=T, partition=partition,
                     offset=o, group_id=GROUP) for o in offsets]


class Group:
    """A consumer of one group: committed offsets and synchronous commits (what ``commit_settled`` calls)."""

    def __init__(self) -> None:
        self.offsets: dict[tuple[str, int], int] = {}

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.offsets.get((tp.topic, tp.partition), OFFSET_INVALID))
                for tp in partitions]

    def get_watermark_offsets(self, partition: TopicPartition, timeout: float) -> tuple[int, int]:
        return 0, 10**9

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.offsets.update({(tp.topic, tp.partition): tp.offset for tp in offsets})


@pytest.fixture
def settled(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Runs 1 and 2 settled offsets 0-9 of partitions 0 and 1 (the events database knows the partitions)."""
    monkeypatch.setattr(db, "engine", lambda: engine)
    group = Group()
    commit_settled(engine, group, GROUP, records(range(0, 10)) + records(range(0, 10), partition=1))
    return lambda envelopes: commit_settled(engine, group, GROUP, envelopes)


def test_a_run_waits_for_the_run_before_it_then_applies_everything(settled: Any) -> None:
    earlier, mine = records(range(10, 20)), records(range(20, 25)) + records(range(10, 12), partition=1)
    later = threading.Timer(0.6, settled, args=(earlier,))  # the run before this one settles 10-19 in 0.6 s
    later.start()
    started = time.monotonic()
    late = kafka_source._await_earlier_runs(GROUP, mine, {(T, 0): 10, (T, 1): 10}, DAG, wait_seconds=10,
                                          poll_seconds=0.05)
    took = time.monotonic() - started
    later.join()
    assert late == [] and 0.5 <= took < 5, took
    assert kafka_source.hold_unsettled(mine, DAG) == mine  # and the database alone now says so


def test_a_run_of_the_dag_failing_for_good_ends_the_wait_and_its_successors_are_held(
    settled: Any, engine: Engine
) -> None:
    mine = records(range(20, 25)) + records(range(10, 12), partition=1)  # partition 1 follows what is settled
    failing = threading.Timer(0.4, redelivery.record_failure, args=(
        engine, DAG, "run-1", "evaluate_and_alert", [e.message_id for e in records(range(10, 20))], "boom"))
    failing.start()
    started = time.monotonic()
    late = kafka_source._await_earlier_runs(GROUP, mine, {(T, 0): 10, (T, 1): 10}, DAG, wait_seconds=30,
                                          poll_seconds=0.05)
    failing.join()
    assert time.monotonic() - started < 5
    assert [e.message_id for e in late] == [e.message_id for e in records(range(20, 25))]


def test_failures_elsewhere_do_not_end_the_wait_its_bound_does(settled: Any, engine: Engine) -> None:
    """Another DAG's failure on the same records, and this DAG's failure on another partition, settle nothing that
    this run waits for: it waits out its bound, and its records are still late."""
    redelivery.record_failure(engine, "iot_archive", "run-x", "archive", [f"{T}/0/{o}" for o in range(10, 20)], "x")
    redelivery.record_failure(engine, DAG, "run-y", "evaluate_and_alert", [f"{T}/1/10"], "boom")
    mine = records(range(20, 22))
    started = time.monotonic()
    late = kafka_source._await_earlier_runs(GROUP, mine, {(T, 0): 10}, DAG, wait_seconds=0.5, poll_seconds=0.05)
    assert late == mine and 0.5 <= time.monotonic() - started < 5
