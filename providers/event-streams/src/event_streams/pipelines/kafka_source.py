"""How a DAG fed by Kafka topics takes and settles its records (``KafkaSource``).

A run applies a record only after every record before it in its partition (``hold_unsettled``: overlapping runs
wait for the run before them; records behind one that failed for good are held for the re-read). After its effects
are committed, bad records go to the dead-letter topic with their original key, bytes and headers, then the run
commits the settled offsets (``event_streams.kafka_offsets``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from event_streams.pipelines import config, db, metrics
from event_streams.pipelines.messages import Envelope

log = logging.getLogger(__name__)


class KafkaSource:
    """How a DAG fed by Kafka topics settles its records (offsets are committed by the run, see settle_kafka)."""

    def __init__(self, dlq_topic: str) -> None:
        self.dlq_topic = dlq_topic

    def take(self, envelopes: Sequence[Envelope], dag_id: str) -> list[Envelope]:
        """The records this run may apply now, once the runs before it settled theirs: not those behind an earlier
        record of their partition that no run has settled (a run failed on it); the watcher reads them again after
        it (``hold_unsettled``)."""
        if not config.streaming():
            return list(envelopes)
        return hold_unsettled(envelopes, dag_id, config.KAFKA_ORDER_WAIT_SECONDS)

    def settle(self, envelopes: Sequence[Envelope], dead_letters: Sequence[Mapping[str, Any]]) -> None:
        settle_kafka(self.dlq_topic, envelopes, dead_letters)
        metrics.settled_batch(envelopes, dead_letters)

    def held(self) -> list[Envelope] | None:
        """None: a Kafka run's records are the run's as a whole (its one task), nothing is held per task."""
        return None

    def give_back(self, envelopes: Sequence[Envelope]) -> None:
        """Nothing to do: the watcher reads again from the committed offset (KAFKA_REDELIVERY_SECONDS)."""
        return None


def settle_kafka(dlq_topic: str, envelopes: Sequence[Envelope], dead_letters: Sequence[Mapping[str, Any]]) -> None:
    """After the run's effects are committed: dead letters to the DLQ topic (original key, bytes and headers, then
    headers ``reason`` and ``source_message_id``), flushed, then the consumed offsets committed (streaming trigger
    only)."""
    from event_streams.pipelines.messages import raw_bytes, raw_headers, raw_key

    if dead_letters:
        from airflow.providers.apache.kafka.hooks.produce import KafkaProducerHook

        by_id = {e.message_id: e for e in envelopes}
        producer = KafkaProducerHook(kafka_config_id=config.KAFKA_CONN_ID).get_producer()
        errors: list[str] = []
        for d in dead_letters:
            env = by_id.get(d["message_id"])
            if env is None:
                continue
            producer.produce(
                dlq_topic,
                key=raw_key(env),
                value=raw_bytes(env),
                headers=[*raw_headers(env), ("reason", str(d["reason"]).encode()),
                         ("source_message_id", env.message_id.encode())],
                on_delivery=lambda err, msg: errors.append(str(err)) if err is not None else None,
            )
        if producer.flush(30) or errors:
            raise RuntimeError(f"dead letters not acknowledged by {dlq_topic}: {errors[:3]}")
    if config.streaming():
        commit_kafka_offsets(envelopes)


def _by_group(envelopes: Sequence[Envelope]) -> dict[str | None, list[Envelope]]:
    by_group: dict[str | None, list[Envelope]] = {}
    for e in envelopes:
        if e.source == "kafka" and e.topic is not None:
            by_group.setdefault(e.group_id, []).append(e)
    return by_group


@contextmanager
def _group_consumer(group: str | None, envelopes: Sequence[Envelope]) -> Iterator[tuple[Any, Any]]:
    """A consumer in ``group`` (else the connection's group) and its hook, closed on leaving."""
    from event_streams.kafka_offsets import SafeKafkaConsumerHook

    hook = SafeKafkaConsumerHook(topics=sorted({e.topic for e in envelopes if e.topic}),
                                 kafka_config_id=config.KAFKA_CONN_ID, group_id=group)
    consumer = hook.get_conn
    try:
        yield consumer, hook
    finally:
        consumer.close()


def hold_unsettled(envelopes: Sequence[Envelope], dag_id: str = "", wait_seconds: float = 0.0) -> list[Envelope]:
    """The run's messages without the Kafka records that would overtake an unsettled one.

    Per-partition order is the contract (the key picks the partition): a record is applied only after every record
    before it in its partition. A record is late when an offset before it is neither settled (``kafka_settled`` and
    the committed offset) nor in this run (``event_streams.kafka_offsets.in_order``). Runs overlap
    (``max_active_runs`` > 1), so a late record is usually in the run before this one, still working: this run waits
    for it to settle (``_await_earlier_runs``, at most ``wait_seconds``). What is still late then (a run failed on
    it) is held: not settled, so the committed offset stays and the watcher reads it again, after the failed run's
    records, once it has stood still for ``KAFKA_REDELIVERY_SECONDS``. What the runs committed (the events database)
    usually settles the question, waiting included; the broker is asked only when it does not.
    """
    from event_streams.kafka_offsets import in_order, settled_in_database

    held: list[Envelope] = []
    for group, members in _by_group(envelopes).items():
        partitions = {(e.topic, e.partition) for e in members if e.topic is not None and e.partition is not None}
        known = settled_in_database(db.engine(), group, partitions) if group else {}
        from_database = known.keys() >= partitions  # the runs' own records answer, with no broker call
        through = known if from_database else _broker_through(group, members, partitions)
        late = in_order(members, through)[1]
        if late and group and wait_seconds > 0:
            late = _await_earlier_runs(group, members, through, dag_id, wait_seconds)
        if late and from_database:  # still late by the database alone: the broker may know more (committed gaps)
            late = in_order(members, _broker_through(group, members, partitions))[1]
        held += late
    if not held:
        return list(envelopes)
    log.warning("held %d record(s) behind an earlier record of their partition that no run has settled yet; the "
                "watcher reads them again after it: %s", len(held), [e.message_id for e in held[:5]])
    skip = {id(e) for e in held}
    return [e for e in envelopes if id(e) not in skip]


def _broker_through(group: str | None, members: Sequence[Envelope],
                    partitions: set[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """``event_streams.kafka_offsets.settled_through``: the committed offsets (asked of the broker) advanced through
    the settled ranges, per partition."""
    from event_streams.kafka_offsets import settled_through

    with _group_consumer(group, members) as (consumer, hook):
        return settled_through(db.engine(), consumer, hook.effective_config["group.id"], partitions,
                               from_beginning=hook.from_beginning)


def _await_earlier_runs(group: str, members: Sequence[Envelope], through: Mapping[tuple[str, int], int],
                        dag_id: str, wait_seconds: float, poll_seconds: float = 0.2) -> list[Envelope]:
    """The records of ``members`` still late once the runs before this one have settled theirs (the events
    database, polled every ``poll_seconds``). Stops waiting after ``wait_seconds``, or as soon as a record before a
    late one in its partition is unsettled because its run of this DAG failed for good (``message_failures``): it
    comes back only when the watcher reads it again, so waiting would gain nothing."""
    from event_streams.kafka_offsets import in_order, settled_in_database
    from event_streams.pipelines import redelivery

    started = time.monotonic()
    partitions = {(e.topic, e.partition) for e in members if e.topic is not None and e.partition is not None}
    while True:
        known = settled_in_database(db.engine(), group, partitions)
        reach = {key: max(through.get(key, -1), known.get(key, -1)) for key in through.keys() | known.keys()}
        late = in_order(members, reach)[1]
        first_late: dict[tuple[str, int], int] = {}
        for e in late:
            if e.topic is not None and e.partition is not None and e.offset is not None:
                key = (e.topic, e.partition)
                first_late[key] = min(first_late.get(key, e.offset), e.offset)
        failed = redelivery.failed_offsets(db.engine(), dag_id, first_late) if first_late else {}
        blocked = any(reach.get(key, 0) <= offset < first_late[key] for key, offs in failed.items() for offset in offs)
        waited = time.monotonic() - started
        if not late or blocked or waited >= wait_seconds:
            if waited >= poll_seconds:
                log.info("waited %.1fs for the runs before this one to settle their records; %d still late%s",
                         waited, len(late), " (behind a run that failed for good)" if blocked else "")
            return late
        time.sleep(poll_seconds)


def commit_kafka_offsets(envelopes: Sequence[Envelope]) -> dict[tuple[str, int], int]:
    """Record this run's offsets as settled and commit, per partition, the contiguous low watermark of settled
    offsets (``event_streams.kafka_offsets.commit_settled``): never past a record that no run settled, never
    backwards. Each record counts in the consumer group its watcher read it for (``Envelope.group_id``; records
    without one, in the connection's ``group.id``)."""
    from event_streams.kafka_offsets import commit_settled

    committed: dict[tuple[str, int], int] = {}
    for group, members in _by_group(envelopes).items():
        with _group_consumer(group, members) as (consumer, hook):
            committed |= commit_settled(db.engine(), consumer, hook.effective_config["group.id"], members,
                                        from_beginning=hook.from_beginning)
    return committed
