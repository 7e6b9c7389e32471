"""Kafka offsets that only ever cover settled records, and a consumer whose settings cannot undo that.

A run settles (its effects durable, its dead letters flushed) a set of offsets per partition. Runs settle in any
order and some fail for good, so committing "highest offset + 1" would skip the records of a failed run. Instead
each run stores its settled offset ranges (``kafka_settled``), and the group's committed offset moves to the
*contiguous low watermark*: from the committed offset through every stored range that starts at or before it.
A range runs from where the consumer's read started to the record after the last one, so offsets no consumer ever
receives (transaction markers, aborted records, compacted holes) are settled with the records around them; the
trigger commits a trailing stretch of them itself (``StreamingKafkaTrigger``). A record no run settled stops it;
the watcher trigger re-reads from there once the committed offset has stood still behind its position for
``redelivery_seconds``. Each partition also keeps the offset committed last (``LAST_COMMIT`` row), the base when
the broker has dropped the group's offsets (``last_commits``, read by the trigger on start). Per-partition order:
``in_order`` holds back a run's records that lie after an offset nobody settled (``settled_through``), so a later
record never overtakes one a run failed on.

Imported at run time only (trigger and task), never while a DAG file is parsed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from airflow.providers.apache.kafka.hooks.consume import KafkaConsumerHook
from confluent_kafka import KafkaException, TopicPartition
from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    delete,
    or_,
    select,
    text,
    update,
)

from event_streams import schema

log = logging.getLogger(__name__)

metadata = MetaData()

kafka_settled = Table(  # the group's committed offset moves through these, contiguously; pruned once below it
    "kafka_settled",
    metadata,
    Column("group_id", String(255), primary_key=True),
    Column("topic", String(255), primary_key=True),
    Column("partition", Integer, primary_key=True, autoincrement=False),
    Column("start_offset", BigInteger, primary_key=True, autoincrement=False),
    Column("end_offset", BigInteger, nullable=False),  # the offset after the range's last record
)


class Envelope(Protocol):
    """What ``settled_intervals`` reads of a settled message (any object with these attributes, read-only)."""

    @property
    def source(self) -> str: ...
    @property
    def topic(self) -> str | None: ...
    @property
    def partition(self) -> int | None: ...
    @property
    def offset(self) -> int | None: ...
    # optional: read_from (where the consumer's read before this record started), see settled_intervals


E = TypeVar("E", bound=Envelope)


def ensure_schema(engine: Engine) -> None:
    """Create ``kafka_settled`` if it is missing (idempotent; safe from first runs arriving together)."""
    schema.create_all(metadata, engine, "event_streams.kafka_settled")


def _ready(engine: Engine) -> Engine:
    """``engine`` with ``kafka_settled`` created, once per engine in this process."""
    return schema.ready(metadata, engine, "event_streams.kafka_settled")


Partition = tuple[str, int]
Interval = tuple[int, int]  # [start, end): end is the offset after the last settled record

RESET_VALUES = ("earliest", "latest")
LAST_COMMIT = -1  # start_offset of a partition's row that keeps (as end_offset) the offset committed last


# --- pure ----------------------------------------------------------------------------------------------------------
def settled_intervals(envelopes: Iterable[Envelope]) -> dict[Partition, list[Interval]]:
    """Per partition, the merged ``[read_from, offset + 1)`` ranges the run's Kafka envelopes cover.

    A record's range starts where the consumer's read started (``read_from``, set by the streaming trigger): the
    offsets between the previous record and this one hold nothing a consumer receives (transaction markers, aborted
    records under ``read_committed``, compacted holes), so settling the record settles them too. Without
    ``read_from`` (another trigger's payload) the range is the record's own offset.
    """
    spans: dict[Partition, list[Interval]] = {}
    for e in envelopes:
        if e.source == "kafka" and e.topic is not None and e.partition is not None and e.offset is not None:
            start = getattr(e, "read_from", None)
            start = e.offset if start is None or not 0 <= start <= e.offset else start
            spans.setdefault((e.topic, e.partition), []).append((start, e.offset + 1))
    result: dict[Partition, list[Interval]] = {}
    for key, found in spans.items():
        merged: list[Interval] = []
        for start, end in sorted(found):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        result[key] = merged
    return result


def watermark(committed: int, intervals: Iterable[Interval]) -> int:
    """``committed`` advanced through every interval that starts at or before it (in start order); never lower."""
    current = committed
    for start, end in sorted(intervals):
        if start > current:
            break
        current = max(current, end)
    return current


def commit_base(current: int, last: int, ranges: Sequence[Interval], low: int, from_beginning: bool) -> int | None:
    """Where a partition's settled stretch starts: the committed offset ``current`` (at least the log start ``low``),
    else the offset committed last (``last``, kept in ``kafka_settled``), else the log start (``from_beginning``) or
    the lowest stored range (``auto.offset.reset=latest``); ``None`` when none of them is known."""
    if current >= 0:
        return max(current, low)
    if last >= 0:
        return max(last, low)
    if from_beginning:
        return low
    return min((s for s, _ in ranges), default=None)


def in_order(envelopes: Sequence[E], through: Mapping[Partition, int]) -> tuple[list[E], list[E]]:
    """``(ready, held)``: a Kafka record is held when an offset before it in its partition is neither settled
    (below ``through``) nor covered by the records before it in ``envelopes`` (their ``[read_from, offset + 1)``
    ranges, contiguously). A run applies only its ready records, so a later record never overtakes one that a run
    failed on: the held ones are read again after it, in order. Partitions missing from ``through``, and messages
    that are not Kafka records, are ready."""
    ranges = settled_intervals(envelopes)
    reach = {key: watermark(start, ranges.get(key, [])) for key, start in through.items()}
    ready: list[E] = []
    held: list[E] = []
    for e in envelopes:
        key = (e.topic, e.partition) if e.source == "kafka" else None
        limit = reach.get(key) if key is not None else None  # type: ignore[arg-type]
        (held if limit is not None and e.offset is not None and e.offset >= limit else ready).append(e)
    return ready, held


def safe_consumer_config(conn_id: str, extra: Mapping[str, Any], group_id: str | None = None) -> dict[str, Any]:
    """The connection's consumer settings with what at-least-once needs forced: no auto commit, no auto offset
    store, an explicit ``auto.offset.reset`` (the connection's if earliest/latest, else earliest), a ``group.id``
    (``group_id`` when given: the watcher's own group, whatever the connection says)."""
    config = dict(extra)
    if group_id is not None:
        if not group_id.strip():
            raise ValueError(f"empty Kafka consumer group id for connection {conn_id!r}")
        config["group.id"] = group_id
    if not str(config.get("group.id") or "").strip():
        raise ValueError(
            f"Kafka connection {conn_id!r} has no 'group.id' in its extra: the pipelines commit settled offsets "
            "for a consumer group; add one, e.g. {\"group.id\": \"event-pipelines\"}, or give the watcher a group_id"
        )
    for key in ("enable.auto.commit", "enable.auto.offset.store"):
        if key in config and str(config[key]).strip().lower() not in ("false", "0"):
            log.warning("Kafka connection %r sets %s=%r; forced to false (offsets are committed by the run once its "
                        "records are settled)", conn_id, key, config[key])
        config[key] = False
    reset = str(config.get("auto.offset.reset", "")).strip().lower()
    if reset not in RESET_VALUES:
        if "auto.offset.reset" in config:
            log.warning("Kafka connection %r sets auto.offset.reset=%r; using 'earliest' (one of %s expected)",
                        conn_id, config["auto.offset.reset"], RESET_VALUES)
        reset = "earliest"
    config["auto.offset.reset"] = reset
    return config


class SafeKafkaConsumerHook(KafkaConsumerHook):
    """``KafkaConsumerHook`` whose consumer always has the settings of ``safe_consumer_config``, in consumer group
    ``group_id`` when given (else the connection's ``group.id``)."""

    effective_config: dict[str, Any]

    def __init__(self, topics: Sequence[str], kafka_config_id: str = "kafka_default", group_id: str | None = None
                 ) -> None:
        super().__init__(topics=topics, kafka_config_id=kafka_config_id)
        self.group_id = group_id

    def _get_client(self, config: dict[str, Any]) -> Any:
        self.effective_config = safe_consumer_config(self.kafka_config_id, config, self.group_id)
        return super()._get_client(self.effective_config)

    @property
    def from_beginning(self) -> bool:
        return self.effective_config["auto.offset.reset"] == "earliest"


# consumer-only settings an AdminClient would warn about (librdkafka logs each one it ignores)
_CONSUMER_ONLY = ("group.", "auto.offset.reset", "enable.auto.", "auto.commit.", "isolation.level", "session.timeout",
                  "heartbeat.", "max.poll.", "partition.assignment", "fetch.", "queued.", "check.crcs", "consume.",
                  "enable.partition.eof", "offset.store.", "coordinator.")


def group_members(consumer_config: Mapping[str, Any], timeout: float = 10.0) -> list[str]:
    """The live members of the consumer's group (``client_id@host`` each); empty when the group has none.

    The pipelines read with ``assign()`` and never join their group, so a member is another application (or a
    console consumer) using the same group id: while it is there the broker refuses every commit made without a
    generation, i.e. every commit of the pipelines'.
    """
    from confluent_kafka.admin import AdminClient

    group = str(consumer_config["group.id"])
    admin = AdminClient({k: v for k, v in consumer_config.items() if not k.startswith(_CONSUMER_ONLY)})
    [future] = admin.describe_consumer_groups([group], request_timeout=timeout).values()
    description = future.result(timeout)  # the admin client stays referenced until its future is done
    return [f"{m.client_id}@{m.host}" for m in description.members]


# --- committing ----------------------------------------------------------------------------------------------------
def _lock(conn: Any, group_id: str) -> None:
    """Serialize committers of one group. SQLite: the first write of the transaction already holds the lock."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"kafka_settled:{group_id}"})


def _store(conn: Any, group_id: str, intervals: Mapping[Partition, Sequence[Interval]]) -> None:
    t = kafka_settled
    rows = [
        {"group_id": group_id, "topic": topic, "partition": partition, "start_offset": s, "end_offset": e}
        for (topic, partition), spans in intervals.items()
        for s, e in spans
    ]
    schema.insert_ignore(conn, t, rows)
    for r in rows:  # the same start settled again with more records behind it: keep the longer range
        conn.execute(
            update(t)
            .where(t.c.group_id == group_id, t.c.topic == r["topic"], t.c.partition == r["partition"],
                   t.c.start_offset == r["start_offset"], t.c.end_offset < r["end_offset"])
            .values(end_offset=r["end_offset"])
        )


def _stored(conn: Any, group_id: str, partitions: Iterable[Partition]) -> dict[Partition, list[Interval]]:
    t = kafka_settled
    keys = list(partitions)
    rows = conn.execute(
        select(t.c.topic, t.c.partition, t.c.start_offset, t.c.end_offset).where(
            t.c.group_id == group_id, or_(*[and_(t.c.topic == tp, t.c.partition == p) for tp, p in keys])
        )
    )
    found: dict[Partition, list[Interval]] = {k: [] for k in keys}
    for topic, partition, start, end in rows:
        found[(topic, partition)].append((start, end))
    return found


def _committed(consumer: Any, keys: Sequence[Partition]) -> dict[Partition, int]:
    committed: dict[Partition, int] = {}
    for tp in consumer.committed([TopicPartition(t, p) for t, p in keys], timeout=30):
        if tp.error is not None:
            raise KafkaException(tp.error)
        committed[(tp.topic, tp.partition)] = tp.offset
    return committed


def _split(spans: Iterable[Interval]) -> tuple[int, list[Interval]]:
    """A partition's stored rows as (the offset committed last, -1 if none; the settled ranges)."""
    rows = list(spans)
    return max((e for s, e in rows if s == LAST_COMMIT), default=-1), [(s, e) for s, e in rows if s != LAST_COMMIT]


def _stored_split(engine: Engine, group_id: str, keys: Sequence[Partition]
                  ) -> dict[Partition, tuple[int, list[Interval]]]:
    """Per partition: the offset committed last (-1 if none) and the settled ranges stored above it."""
    with engine.connect() as conn:
        return {key: _split(spans) for key, spans in _stored(conn, group_id, keys).items()}


def settled_in_database(engine: Engine, group_id: str, partitions: Iterable[Partition]) -> dict[Partition, int]:
    """Per partition, the offset before which every record is settled as far as ``kafka_settled`` alone knows: the
    offset the runs committed last, advanced through the stored ranges. No broker call; a lower bound of
    ``settled_through`` (the trigger also commits stretches without records, and the start of a new group).
    Partitions the runs never committed are left out."""
    keys = sorted(set(partitions))
    if not keys:
        return {}
    return {key: watermark(last, ranges)
            for key, (last, ranges) in _stored_split(_ready(engine), group_id, keys).items() if last >= 0}


def settled_through(engine: Engine, consumer: Any, group_id: str, partitions: Iterable[Partition], *,
                    from_beginning: bool = True) -> dict[Partition, int]:
    """Per partition, the offset before which every record is settled for ``group_id``: the committed offset (see
    ``commit_base``) advanced through the settled ranges stored so far. Partitions where that is unknown are left
    out. ``consumer`` belongs to ``group_id``; nothing is written."""
    keys = sorted(set(partitions))
    if not keys:
        return {}
    stored = _stored_split(_ready(engine), group_id, keys)
    committed = _committed(consumer, keys)
    through: dict[Partition, int] = {}
    for key in keys:
        last, ranges = stored[key]
        low, _high = consumer.get_watermark_offsets(TopicPartition(*key), timeout=30)
        base = commit_base(committed.get(key, -1), last, ranges, low, from_beginning)
        if base is not None:
            through[key] = watermark(base, ranges)
    return through


def last_commits(engine: Engine, group_id: str, partitions: Iterable[Partition]) -> dict[Partition, int]:
    """The offset ``commit_settled`` committed last per partition of ``group_id`` (partitions it never committed
    are left out); nothing is written. Read by the trigger when the broker has dropped the group's offsets."""
    from sqlalchemy import inspect

    keys = sorted(set(partitions))
    if not keys or not inspect(engine).has_table(kafka_settled.name):
        return {}
    return {key: last for key, (last, _) in _stored_split(engine, group_id, keys).items() if last >= 0}


def settled_state(engine: Engine, group_id: str, partitions: Iterable[Partition]
                  ) -> dict[Partition, tuple[int, list[Interval], int | None]]:
    """What ``kafka_settled`` holds per partition of ``group_id``, for a status page: the offset committed last (-1
    if none), the settled ranges stored above it, and the watermark they reach (``None`` before a first commit).
    Nothing is written; with no table yet (no run has committed) it is empty."""
    from sqlalchemy import inspect

    keys = sorted(set(partitions))
    if not keys or not inspect(engine).has_table(kafka_settled.name):
        return {}
    return {key: (last, ranges, watermark(last, ranges) if last >= 0 else None)
            for key, (last, ranges) in _stored_split(engine, group_id, keys).items()}


def commit_settled(
    engine: Engine, consumer: Any, group_id: str, envelopes: Iterable[Envelope], *, from_beginning: bool = True
) -> dict[Partition, int]:
    """Record this run's settled ranges, then commit (synchronously) each of its partitions' low watermark where it
    moves forward; prune ranges below it. Returns ``{(topic, partition): committed offset}`` of what was committed.

    ``consumer`` belongs to ``group_id``. A committed offset below the partition's low watermark (deleted by
    retention) counts from the low watermark. A partition with no committed offset (the broker dropped it, e.g.
    ``offsets.retention.minutes`` after the last commit) counts from the offset this function committed last, kept
    in ``kafka_settled`` as the row with ``start_offset`` -1, never from an earlier one; without such a row, from the
    low watermark (``from_beginning``) or, for ``auto.offset.reset=latest``, from its lowest stored range.
    """
    intervals = settled_intervals(envelopes)
    if not intervals:
        return {}
    _ready(engine)
    keys = sorted(intervals)
    ahead: dict[Partition, int] = {}
    with engine.begin() as conn:
        _lock(conn, group_id)
        _store(conn, group_id, intervals)
        stored = _stored(conn, group_id, keys)
        committed = _committed(consumer, keys)
        for key in keys:
            current = committed.get(key, -1)
            last, ranges = _split(stored[key])
            low, _high = consumer.get_watermark_offsets(TopicPartition(*key), timeout=30)
            base = commit_base(current, last, ranges, low, from_beginning)
            new = watermark(base, ranges) if base is not None else current
            if new > current:
                ahead[key] = new
        if ahead:
            try:
                consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in ahead.items()],
                                asynchronous=False)
            except KafkaException as exc:
                raise RuntimeError(
                    f"Kafka refused the commit of {ahead} for consumer group {group_id!r}: {exc}. The pipelines "
                    "commit without joining the group (assign()); a live member in it (another application using "
                    "this group.id) makes the broker refuse. Give this watcher a group of its own."
                ) from exc
        t = kafka_settled
        for key in keys:
            floor = max(ahead.get(key, -1), committed.get(key, -1))
            if floor >= 0:
                where = (t.c.group_id == group_id, t.c.topic == key[0], t.c.partition == key[1])
                conn.execute(delete(t).where(*where, or_(t.c.end_offset <= floor, t.c.start_offset == LAST_COMMIT)))
                schema.insert_ignore(conn, t, [{"group_id": group_id, "topic": key[0], "partition": key[1],
                                                "start_offset": LAST_COMMIT, "end_offset": floor}])
    behind = {k: committed.get(k) for k in keys if k not in ahead}
    log.info("committed offsets %s; unchanged (a record before them not settled yet, or already past): %s",
             ahead, behind)
    return ahead
