"""Kafka offsets: the committed offset is the contiguous low watermark of what runs settled; consumer settings
are forced whatever the connection says. The broker is a scripted stand-in (a consumer group's committed offsets
and a partition's low watermark); the database is real SQLite."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import OFFSET_INVALID, TopicPartition
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, select

from event_streams.kafka_offsets import (
    LAST_COMMIT,
    SafeKafkaConsumerHook,
    commit_base,
    commit_settled,
    in_order,
    kafka_settled,
    safe_consumer_config,
    settled_in_database,
    settled_intervals,
    settled_state,
    settled_through,
    watermark,
)

T = "iot-readings"


@dataclass(frozen=True)
class Envelope:
    """A settled message as ``settled_intervals`` reads it (the project's pydantic Envelope has these fields)."""

    source: str
    message_id: str
    body: str | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    read_from: int | None = None


def kafka(offsets: Any, partition: int = 0, topic: str = T) -> list[Envelope]:
    return [Envelope(source="kafka", message_id=f"{topic}/{partition}/{o}", body="{}", topic=topic,
                     partition=partition, offset=o) for o in offsets]


class FakeGroup:
    """A consumer of one group: committed offsets, a low watermark per partition, synchronous commits."""

    def __init__(self, committed: dict[tuple[str, int], int] | None = None, low: int = 0) -> None:
        self.offsets = dict(committed or {})
        self.low = low
        self.commits: list[dict[tuple[str, int], int]] = []

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.offsets.get((tp.topic, tp.partition), OFFSET_INVALID))
                for tp in partitions]

    def get_watermark_offsets(self, partition: TopicPartition, timeout: float) -> tuple[int, int]:
        return self.low, 10**9

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        assert asynchronous is False
        done = {(tp.topic, tp.partition): tp.offset for tp in offsets}
        self.offsets.update(done)
        self.commits.append(done)


def stored(engine: Engine, last_commits: bool = False) -> list[tuple[Any, ...]]:
    """The settled ranges kept (or, with ``last_commits``, each partition's row of the offset committed last)."""
    t = kafka_settled
    which = t.c.start_offset == LAST_COMMIT if last_commits else t.c.start_offset != LAST_COMMIT
    with engine.connect() as conn:
        return sorted(conn.execute(select(t.c.topic, t.c.partition, t.c.start_offset, t.c.end_offset)
                                   .where(which)).all())


# --- pure functions ------------------------------------------------------------------------------------------------
def test_settled_intervals_split_at_gaps_per_partition() -> None:
    envelopes = kafka([3, 4, 5, 8, 9, 5]) + kafka([0], partition=1) + [Envelope(source="sqs", message_id="m")]
    assert settled_intervals(envelopes) == {(T, 0): [(3, 6), (8, 10)], (T, 1): [(0, 1)]}
    assert settled_intervals([]) == {}


def test_settled_intervals_cover_the_offsets_read_over_before_each_record() -> None:
    """Records 0-4, a marker at 5, an aborted transaction at 6-11 and its marker at 12, records 13-14: the run got
    seven records and the trigger said where each read started."""
    got = [Envelope("kafka", f"{T}/0/{o}", "{}", T, 0, o, read_from=r)
           for o, r in [(0, None), (1, None), (2, None), (3, None), (4, None), (13, 5), (14, None)]]
    assert settled_intervals(got) == {(T, 0): [(0, 15)]}
    assert watermark(0, settled_intervals(got)[(T, 0)]) == 15  # before: the watermark stopped at the marker, 5
    # a read_from after the offset (a stale value) or below 0 is ignored: the record's own offset
    odd = [Envelope("kafka", "x", "{}", T, 0, 7, read_from=9), Envelope("kafka", "y", "{}", T, 0, 3, read_from=-2)]
    assert settled_intervals(odd) == {(T, 0): [(3, 4), (7, 8)]}


def test_a_compacted_partition_commits_through_its_holes(engine: Engine) -> None:
    group = FakeGroup()
    holes = [Envelope("kafka", f"{T}/0/{o}", "{}", T, 0, o, read_from=r) for o, r in [(0, None), (4, 1), (9, 5)]]
    assert commit_settled(engine, group, "g", holes) == {(T, 0): 10}
    assert stored(engine) == []


def test_watermark_moves_through_contiguous_intervals_only() -> None:
    assert watermark(0, [(0, 10), (10, 20), (25, 30)]) == 20  # 20..24 not settled: stops there
    assert watermark(0, [(5, 10)]) == 0
    assert watermark(15, [(0, 10), (12, 18), (18, 19)]) == 19  # overlapping the committed offset
    assert watermark(50, [(0, 10)]) == 50  # never backwards


@given(st.integers(0, 50), st.lists(st.tuples(st.integers(0, 60), st.integers(1, 10)), max_size=12))
def test_watermark_is_the_first_offset_not_covered(committed: int, spans: list[tuple[int, int]]) -> None:
    intervals = [(s, s + n) for s, n in spans]
    covered = {o for s, e in intervals for o in range(s, e)}
    expected = committed
    while expected in covered:
        expected += 1
    assert watermark(committed, intervals) == expected


# --- per-partition order --------------------------------------------------------------------------------------------
def test_records_behind_an_unsettled_one_of_their_partition_are_held() -> None:
    """Run A (offsets 10-14 of partition 0) failed for good; run B carries 15-19 of partition 0 and 3-4 of partition
    1: B applies partition 1 and holds partition 0, whose records would overtake A's."""
    run_b = kafka(range(15, 20)) + kafka([3, 4], partition=1)
    ready, held = in_order(run_b, {(T, 0): 10, (T, 1): 3})
    assert [e.message_id for e in held] == [f"{T}/0/{o}" for o in range(15, 20)]
    assert [e.message_id for e in ready] == [f"{T}/1/3", f"{T}/1/4"]
    # A's records read again together with B's: all ready, in order; so are records already settled (a re-read)
    again = kafka(range(8, 20))
    assert in_order(again, {(T, 0): 10}) == (again, [])


def test_a_record_after_a_marker_is_ready_through_its_read_range() -> None:
    after_marker = [Envelope(source="kafka", message_id=f"{T}/0/6", topic=T, partition=0, offset=6, read_from=5)]
    assert in_order(after_marker, {(T, 0): 5}) == (after_marker, [])
    assert in_order(after_marker, {(T, 0): 4})[1] == after_marker  # offset 4 not settled: held
    other = [Envelope(source="sqs", message_id="m"), *kafka([1], partition=2)]
    assert in_order(other, {(T, 0): 0}) == (other, [])  # not Kafka, or a partition of unknown progress


@given(st.integers(0, 30), st.lists(st.integers(0, 40), unique=True, max_size=25))
def test_held_records_are_exactly_those_after_the_first_offset_nobody_settled(through: int, offsets: list[int]
                                                                               ) -> None:
    run = kafka(sorted(offsets))
    ready, held = in_order(run, {(T, 0): through})
    reach = watermark(through, [(o, o + 1) for o in offsets])
    assert [e.offset for e in ready] == [o for o in sorted(offsets) if o < reach]
    assert [e.offset for e in held] == [o for o in sorted(offsets) if o >= reach]


def test_commit_base_prefers_the_committed_offset_then_the_last_commit_then_the_reset() -> None:
    assert commit_base(12, 40, [], 3, True) == 12 and commit_base(1, -1, [], 3, True) == 3  # below the log start
    assert commit_base(-1, 40, [], 3, True) == 40  # the broker dropped the group's offsets: the last commit
    assert commit_base(-1, -1, [(7, 9)], 3, True) == 3 and commit_base(-1, -1, [(7, 9)], 3, False) == 7
    assert commit_base(-1, -1, [], 3, False) is None


def test_settled_through_counts_stored_ranges_from_the_committed_offset(engine: Engine) -> None:
    group = FakeGroup({(T, 0): 0, (T, 1): 0})
    commit_settled(engine, group, "g", kafka(range(5, 10)))  # a gap at 0-4: stored, not committed
    commit_settled(engine, group, "g", kafka(range(0, 3), partition=1))
    assert settled_through(engine, group, "g", [(T, 0), (T, 1)]) == {(T, 0): 0, (T, 1): 3}
    commit_settled(engine, group, "g", kafka(range(0, 5)))
    assert settled_through(engine, group, "g", [(T, 0)]) == {(T, 0): 10}


def test_the_database_alone_knows_what_the_runs_committed_and_settled(engine: Engine) -> None:
    group = FakeGroup({(T, 0): 0, (T, 1): 0})
    assert settled_in_database(engine, "g", [(T, 0)]) == {}  # nothing committed by a run yet: ask the broker
    commit_settled(engine, group, "g", kafka(range(0, 4)))
    commit_settled(engine, group, "g", kafka(range(6, 9)))  # stored above a gap
    commit_settled(engine, group, "g", kafka([4]))
    assert settled_in_database(engine, "g", [(T, 0), (T, 1)]) == {(T, 0): 5}
    commit_settled(engine, group, "g", kafka([5]))
    assert settled_in_database(engine, "g", [(T, 0)]) == {(T, 0): 9} and settled_in_database(engine, "h", [(T, 0)]) == {}


def test_the_status_page_reads_the_last_commit_the_ranges_above_it_and_their_watermark(engine: Engine) -> None:
    group = FakeGroup({(T, 0): 0, (T, 1): 0})
    assert settled_state(engine, "g", [(T, 0)]) == {}  # no table yet: nothing to show, no error
    commit_settled(engine, group, "g", kafka(range(0, 4)))
    commit_settled(engine, group, "g", kafka(range(6, 9)))  # above a gap: stored, not committed
    assert settled_state(engine, "g", [(T, 0), (T, 1)]) == {(T, 0): (4, [(6, 9)], 4), (T, 1): (-1, [], None)}
    assert settled_state(engine, "h", [(T, 0)]) == {(T, 0): (-1, [], None)}


# --- consumer settings ---------------------------------------------------------------------------------------------
def test_safe_consumer_config_forces_manual_offsets(caplog: pytest.LogCaptureFixture) -> None:
    extra = {"bootstrap.servers": "k:9092", "group.id": "g", "enable.auto.commit": "true",
             "enable.auto.offset.store": False, "auto.offset.reset": "LATEST"}
    with caplog.at_level(logging.WARNING):
        config = safe_consumer_config("kafka_default", extra)
    assert config == {"bootstrap.servers": "k:9092", "group.id": "g", "enable.auto.commit": False,
                      "enable.auto.offset.store": False, "auto.offset.reset": "latest"}
    assert extra["enable.auto.commit"] == "true"  # the connection's dict is not changed
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "'kafka_default'" in warnings[0] and "enable.auto.commit" in warnings[0]


def test_safe_consumer_config_defaults_reset_to_earliest(caplog: pytest.LogCaptureFixture) -> None:
    quiet = safe_consumer_config("c", {"group.id": "g"})
    assert quiet["auto.offset.reset"] == "earliest" and quiet["enable.auto.commit"] is False
    with caplog.at_level(logging.WARNING):
        assert safe_consumer_config("c", {"group.id": "g", "auto.offset.reset": "smallest"})["auto.offset.reset"] \
            == "earliest"
    assert any("auto.offset.reset" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("extra", [{}, {"group.id": ""}, {"group.id": "  "}])
def test_safe_consumer_config_refuses_a_connection_without_group_id(extra: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="'kafka_iot'.*group.id"):
        safe_consumer_config("kafka_iot", {"bootstrap.servers": "k:9092", **extra})


def test_the_watchers_own_group_wins_over_the_connections() -> None:
    config = safe_consumer_config("kafka_default", {"bootstrap.servers": "k:9092", "group.id": "shared"},
                                  group_id="airflow.iot_alerting")
    assert config["group.id"] == "airflow.iot_alerting"
    assert safe_consumer_config("c", {}, group_id="own")["group.id"] == "own"  # the connection needs none then
    with pytest.raises(ValueError, match="empty Kafka consumer group id"):
        safe_consumer_config("c", {"group.id": "shared"}, group_id=" ")


def test_hook_builds_its_consumer_with_the_forced_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import airflow.providers.apache.kafka.hooks.consume as consume

    built: list[dict[str, Any]] = []
    monkeypatch.setattr(consume, "Consumer", lambda config: built.append(config) or object())
    hook = SafeKafkaConsumerHook(topics=[T], kafka_config_id="kafka_x")
    hook._get_client({"bootstrap.servers": "k:9092", "group.id": "g", "enable.auto.commit": True})
    assert built[0]["enable.auto.commit"] is False and built[0]["enable.auto.offset.store"] is False
    assert built[0]["auto.offset.reset"] == "earliest" and hook.from_beginning
    own = SafeKafkaConsumerHook(topics=[T], kafka_config_id="kafka_x", group_id="watcher-group")
    own._get_client({"bootstrap.servers": "k:9092", "group.id": "g"})
    assert built[1]["group.id"] == own.effective_config["group.id"] == "watcher-group"


# --- committing ----------------------------------------------------------------------------------------------------
def test_a_run_that_failed_for_good_holds_the_committed_offset_back(engine: Engine) -> None:
    group = FakeGroup({(T, 0): 0})
    # run A (offsets 0-9) fails on every attempt and never settles; run B (10-19) settles
    assert commit_settled(engine, group, "g", kafka(range(10, 20))) == {}
    assert group.offsets[(T, 0)] == 0 and group.commits == []
    assert commit_settled(engine, group, "g", kafka(range(20, 30))) == {}  # later runs do not skip A either
    # A's records are read again (the trigger seeks back) and settled by a later run
    assert commit_settled(engine, group, "g", kafka(range(0, 12))) == {(T, 0): 30}
    assert group.offsets[(T, 0)] == 30
    assert stored(engine) == []  # pruned: everything is below the committed offset


def test_commit_never_moves_backwards_and_keeps_ranges_above_a_gap(engine: Engine) -> None:
    group = FakeGroup({(T, 0): 100, (T, 1): 5})
    envelopes = kafka(range(10, 20)) + kafka([5, 6, 8], partition=1)
    assert commit_settled(engine, group, "g", envelopes) == {(T, 1): 7}
    assert group.offsets == {(T, 0): 100, (T, 1): 7}
    assert stored(engine) == [(T, 1, 8, 9)]  # 7 not settled: 8 waits; partition 0's range was below 100
    assert commit_settled(engine, group, "g", kafka([7], partition=1)) == {(T, 1): 9}


def test_committed_offset_deleted_by_retention_counts_from_the_low_watermark(engine: Engine) -> None:
    group = FakeGroup({(T, 0): 5}, low=50)
    assert commit_settled(engine, group, "g", kafka(range(50, 60))) == {(T, 0): 60}


def test_no_committed_offset_counts_from_the_start(engine: Engine) -> None:
    group = FakeGroup(low=7)
    assert commit_settled(engine, group, "g", kafka(range(7, 9))) == {(T, 0): 9}
    # auto.offset.reset=latest: the trigger started wherever the end was; the lowest settled range starts there
    other = FakeGroup(low=0)
    assert commit_settled(engine, other, "h", kafka(range(40, 42)), from_beginning=False) == {(T, 0): 42}


def test_the_same_run_settled_twice_changes_nothing_and_longer_ranges_win(engine: Engine) -> None:
    group = FakeGroup({(T, 0): 0})
    assert commit_settled(engine, group, "g", kafka(range(5, 8))) == {}
    assert commit_settled(engine, group, "g", kafka(range(5, 8))) == {}  # a cleared run: idempotent
    assert commit_settled(engine, group, "g", kafka(range(5, 12))) == {}  # same start, more records
    assert stored(engine) == [(T, 0, 5, 12)]
    assert commit_settled(engine, group, "g", kafka(range(0, 5))) == {(T, 0): 12}


def test_groups_are_kept_apart(engine: Engine) -> None:
    commit_settled(engine, FakeGroup({(T, 0): 0}), "other", kafka(range(0, 10)))
    group = FakeGroup({(T, 0): 0})
    assert commit_settled(engine, group, "g", kafka(range(10, 20))) == {}


def test_nothing_from_kafka_commits_nothing(engine: Engine) -> None:
    group = FakeGroup()
    assert commit_settled(engine, group, "g", [Envelope(source="sqs", message_id="m")]) == {}
    assert group.commits == []


def test_offsets_the_broker_dropped_count_from_the_last_commit_not_from_the_start(engine: Engine) -> None:
    """An idle group's offsets expire (offsets.retention.minutes after its last commit): the next run must not
    commit the low watermark, which would make the watcher read everything retained again."""
    group = FakeGroup({(T, 0): 0})
    assert commit_settled(engine, group, "g", kafka(range(0, 50))) == {(T, 0): 50}
    assert stored(engine, last_commits=True) == [(T, 0, LAST_COMMIT, 50)]
    group.offsets.clear()  # dropped by the broker
    assert commit_settled(engine, group, "g", kafka(range(60, 70))) == {(T, 0): 50}  # restored; 50-59 not settled
    assert commit_settled(engine, group, "g", kafka(range(50, 60))) == {(T, 0): 70}
    assert stored(engine) == [] and stored(engine, last_commits=True) == [(T, 0, LAST_COMMIT, 70)]


def test_a_refused_commit_names_the_group(engine: Engine) -> None:
    from confluent_kafka import KafkaError, KafkaException

    class Refusing(FakeGroup):
        def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
            raise KafkaException(KafkaError(KafkaError.ILLEGAL_GENERATION))

    with pytest.raises(RuntimeError, match="consumer group 'shared-group'.*live member"):
        commit_settled(engine, Refusing({(T, 0): 0}), "shared-group", kafka(range(3)))
