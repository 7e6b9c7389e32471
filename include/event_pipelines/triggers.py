"""Streaming watcher triggers: many messages per asset event, acknowledged only after the run's effect is durable.

Why not the stock triggers behind ``MessageQueueTrigger`` (measured on this machine, see README "Delivery
guarantees" and "Performance"):

* ``SqsSensorTrigger`` yields one receive (at most 10 messages) and exits; the triggerer restarts it about 2 s
  later, so a backlog drains at ~5 msg/s. With ``delete_message_on_reception=True`` (its default) a message is gone
  before any run exists.
* ``AwaitMessageTrigger`` commits the offset *before* the event is stored (a crash in between loses the record),
  yields one record and exits: the consumer rejoins the group for every record (~0.5 msg/s here).
* ``KafkaSharedStreamTrigger`` commits after the event is stored, but one record per event caps it at what the
  triggerer can persist (~55-60 events/s on SQLite), and it cannot batch: a record counts as resolved as soon as
  its filter pulls the next one.

These triggers never exit. Each ``TriggerEvent`` carries up to ``max_messages_per_event`` messages and
``max_event_bytes`` of message bodies (at least one message; what does not fit opens the next event), in the same
payload shapes the pipelines already read (``message_batch`` for SQS, ``records`` for Kafka): after a quiet spell
the first message goes out at once; in a stream, at most one event per ``linger_seconds`` (``_pack_until``).
A body over the per-message limit is left out of the event (``BodyOmittedBytes`` / ``body_omitted_bytes``).
Nothing is acknowledged here:

* **SQS**: messages are received with a short ``visibility_timeout`` (20 s here). If the triggerer dies before the
  event is stored, the messages reappear within it and are received again. Once the event has been stored (half
  that timeout later), the trigger extends them to the run's budget (300 s), and so does the run's first task; the
  run deletes each message once its effect is committed.
* **Kafka**: the consumer uses ``assign()`` (no group membership) and starts from the group's committed offsets.
  The run's last task commits the contiguous low watermark of settled offsets (``kafka_offsets``), never past a
  record no run settled. When a partition's committed offset stands still behind the trigger's position for
  ``redelivery_seconds`` (a run failed for good), the trigger seeks back to it and reads those records again.
  After a triggerer restart, everything not yet committed is read again. Duplicates are absorbed by the
  idempotent sinks.

Transient broker errors are logged and retried with back-off inside the trigger instead of failing it, so an
outage does not crash-loop the triggerer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent
from asgiref.sync import sync_to_async

from include.event_pipelines.messages import MAX_BODY_BYTES, kafka_message_to_event

log = logging.getLogger(__name__)

RETRY_DELAYS = (1, 2, 5, 10)


def _pack_until(last_event_at: float, linger_seconds: float) -> float:
    """Until when to keep packing messages into the event being gathered (a monotonic time).

    After a quiet spell (no event for ``linger_seconds``) the first message goes out at once, with only what is
    already waiting behind it: a lone message is not held back. Within ``linger_seconds`` of the last event (a
    stream), the trigger keeps gathering until ``linger_seconds`` after that event: at most one event per
    ``linger_seconds`` per watcher, each carrying up to ``max_messages_per_event`` messages. That keeps the
    triggerer, which stores each event in its own database transaction, far from its events-per-second ceiling.
    """
    return max(time.monotonic(), last_event_at + linger_seconds)


def sqs_body_bytes(message: Mapping[str, Any]) -> int:
    return len(message.get("Body", "").encode("utf-8"))


def kafka_body_bytes(record: Mapping[str, Any]) -> int:
    """The bytes the record's body takes in the event (base64 text for a body that is not UTF-8)."""
    if record.get("body") is not None:
        return len(record["body"].encode("utf-8"))
    return len(record.get("body_b64") or "")


class _Batch:
    """The event being gathered: at most ``max_messages`` and ``max_bytes`` of bodies, at least one message.

    It starts with the messages carried over from the previous event, in order. A message offered that does not fit
    goes to the end of ``carry`` and closes the batch (``full``): the next event starts with it.
    """

    def __init__(self, carry: deque[dict[str, Any]], max_messages: int, max_bytes: int,
                 size: Callable[[Mapping[str, Any]], int]) -> None:
        self.items: list[dict[str, Any]] = []
        self.bytes = 0
        self.full = False
        self._carry, self._max_messages, self._max_bytes, self._size = carry, max_messages, max_bytes, size
        while carry and not self.full:
            if self._fits(carry[0]):
                self._add(carry.popleft())
            else:
                self.full = True

    def room(self) -> int:
        return self._max_messages - len(self.items)

    def offer(self, messages: Sequence[dict[str, Any]]) -> None:
        for m in messages:
            if not self.full and self._fits(m):
                self._add(m)
            else:
                self.full = True
                self._carry.append(m)

    def _fits(self, message: Mapping[str, Any]) -> bool:
        return not self.items or self.bytes + self._size(message) <= self._max_bytes

    def _add(self, message: dict[str, Any]) -> None:
        self.items.append(message)
        self.bytes += self._size(message)
        self.full = len(self.items) >= self._max_messages or self.bytes >= self._max_bytes


class StreamingSqsTrigger(BaseEventTrigger):
    """Long-poll an SQS queue forever; one event per gathered batch; never deletes.

    Received with a short ``visibility_timeout``; ``handover_after_seconds`` after their event went out, extended
    to ``handover_visibility_timeout`` (the run's budget). Messages that did not fit an event open the next one.
    """

    def __init__(
        self,
        *,
        sqs_queue: str,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        max_messages_per_event: int = 100,
        linger_seconds: float = 0.25,
        wait_time_seconds: int = 20,
        visibility_timeout: int = 30,
        handover_after_seconds: float = 10.0,
        handover_visibility_timeout: int = 300,
        max_event_bytes: int = 1024 * 1024,
        max_message_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        super().__init__()
        self.sqs_queue = sqs_queue
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.max_messages_per_event = max_messages_per_event
        self.linger_seconds = linger_seconds
        self.wait_time_seconds = wait_time_seconds
        self.visibility_timeout = visibility_timeout
        self.handover_after_seconds = handover_after_seconds
        self.handover_visibility_timeout = handover_visibility_timeout
        self.max_event_bytes = max_event_bytes
        self.max_message_bytes = max_message_bytes
        self._last_event_at = 0.0
        self._handed: deque[tuple[float, list[str]]] = deque()  # (yielded at, receipt handles), oldest first
        self._carry: deque[dict[str, Any]] = deque()  # received, did not fit the last event: first in the next

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "sqs_queue": self.sqs_queue,
                "aws_conn_id": self.aws_conn_id,
                "region_name": self.region_name,
                "max_messages_per_event": self.max_messages_per_event,
                "linger_seconds": self.linger_seconds,
                "wait_time_seconds": self.wait_time_seconds,
                "visibility_timeout": self.visibility_timeout,
                "handover_after_seconds": self.handover_after_seconds,
                "handover_visibility_timeout": self.handover_visibility_timeout,
                "max_event_bytes": self.max_event_bytes,
                "max_message_bytes": self.max_message_bytes,
            },
        )

    async def _receive(self, client: Any, wait: int, count: int = 10) -> list[dict[str, Any]]:
        response = await client.receive_message(
            QueueUrl=self.sqs_queue,
            MaxNumberOfMessages=max(1, min(10, count)),
            WaitTimeSeconds=wait,
            VisibilityTimeout=self.visibility_timeout,
        )
        messages = []
        for m in response.get("Messages", []):
            message = {"MessageId": m["MessageId"], "ReceiptHandle": m["ReceiptHandle"], "Body": m.get("Body", "")}
            size = sqs_body_bytes(message)
            if size > self.max_message_bytes:  # never rides in an event; the run dead-letters it
                del message["Body"]
                message["BodyOmittedBytes"] = size
            messages.append(message)
        return messages

    async def gather(self, client: Any) -> list[dict[str, Any]]:
        """Carried-over messages, or block (long poll) for the first ones; then pack what follows them (see
        ``_pack_until``) up to the count and byte bounds."""
        batch = _Batch(self._carry, self.max_messages_per_event, self.max_event_bytes, sqs_body_bytes)
        if not batch.items:
            batch.offer(await self._receive(client, self._long_poll_seconds(), batch.room()))
        if batch.items:
            deadline = _pack_until(self._last_event_at, self.linger_seconds)
            while not batch.full:
                more = await self._receive(client, 0, batch.room())
                batch.offer(more)
                now = time.monotonic()
                if not more:
                    if now >= deadline:
                        break
                    await asyncio.sleep(min(0.05, deadline - now))
            self._last_event_at = time.monotonic()
        return batch.items

    def _long_poll_seconds(self) -> int:
        """The long poll, cut short when a handover falls due before it would end."""
        if not self._handed:
            return self.wait_time_seconds
        due = self._handed[0][0] + self.handover_after_seconds - time.monotonic()
        return max(0, min(self.wait_time_seconds, int(due) + 1))

    def handed(self, batch: list[dict[str, Any]]) -> None:
        """Record that ``batch`` went out in an event (called right after the ``yield``)."""
        self._handed.append((time.monotonic(), [m["ReceiptHandle"] for m in batch]))

    async def hand_over(self, client: Any) -> int:
        """Extend, to the run's budget, the visibility of the messages of every event handed out long enough ago;
        returns how many were extended (those already deleted by their run fail and are skipped)."""
        extended = 0
        while self._handed and time.monotonic() - self._handed[0][0] >= self.handover_after_seconds:
            _, handles = self._handed.popleft()
            for start in range(0, len(handles), 10):
                entries = [{"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": self.handover_visibility_timeout}
                           for i, h in enumerate(handles[start : start + 10])]
                response = await client.change_message_visibility_batch(QueueUrl=self.sqs_queue, Entries=entries)
                extended += len(response.get("Successful", []))
        return extended

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow.providers.amazon.aws.hooks.sqs import SqsHook

        failures = 0
        while True:
            try:
                hook = SqsHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name)
                async with await hook.get_async_conn() as client:
                    while True:
                        batch = await self.gather(client)
                        failures = 0
                        if batch:
                            yield TriggerEvent({"status": "success", "message_batch": batch})
                            self.handed(batch)
                        await self.hand_over(client)
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except Exception:
                delay = RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)]
                failures += 1
                self.log.warning("SQS receive from %s failed; retrying in %ss", self.sqs_queue, delay, exc_info=True)
                await asyncio.sleep(delay)


class StreamingKafkaTrigger(BaseEventTrigger):
    """Read assigned partitions forever from the committed offsets; one event per gathered batch; never commits.

    Re-reads a partition from its committed offset when that offset has stood still behind the read position for
    ``redelivery_seconds`` (its records were never settled). Records that did not fit an event open the next one.
    """

    def __init__(
        self,
        *,
        topics: Sequence[str],
        kafka_config_id: str = "kafka_default",
        max_messages_per_event: int = 500,
        linger_seconds: float = 0.25,
        poll_timeout: float = 1.0,
        partition_refresh_seconds: float = 60.0,
        redelivery_seconds: float = 120.0,
        max_event_bytes: int = 1024 * 1024,
    ) -> None:
        super().__init__()
        self.topics = list(topics)
        self.kafka_config_id = kafka_config_id
        self.max_messages_per_event = max_messages_per_event
        self.linger_seconds = linger_seconds
        self.poll_timeout = poll_timeout
        self.partition_refresh_seconds = partition_refresh_seconds
        self.redelivery_seconds = redelivery_seconds
        self.max_event_bytes = max_event_bytes
        self._consumer: Any = None
        self._from_beginning = True
        self._last_event_at = 0.0
        self._assigned: set[tuple[str, int]] = set()
        self._carry: deque[dict[str, Any]] = deque()  # consumed, did not fit the last event: first in the next
        self._unsettled: dict[tuple[str, int], tuple[int, float]] = {}  # behind: committed offset, unchanged since

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "topics": self.topics,
                "kafka_config_id": self.kafka_config_id,
                "max_messages_per_event": self.max_messages_per_event,
                "linger_seconds": self.linger_seconds,
                "poll_timeout": self.poll_timeout,
                "partition_refresh_seconds": self.partition_refresh_seconds,
                "redelivery_seconds": self.redelivery_seconds,
                "max_event_bytes": self.max_event_bytes,
            },
        )

    def _open(self) -> Any:
        from include.event_pipelines.kafka_offsets import SafeKafkaConsumerHook

        hook = SafeKafkaConsumerHook(topics=self.topics, kafka_config_id=self.kafka_config_id)
        consumer = hook.get_conn  # no auto commit / offset store, explicit auto.offset.reset, a group.id
        self._from_beginning = hook.from_beginning
        return consumer

    def _assign(self, consumer: Any, assigned: set[tuple[str, int]]) -> set[tuple[str, int]]:
        """Assign every partition of the topics (new ones included) at the group's committed offsets.

        The committed offsets are fetched here, explicitly: on a fresh broker the group coordinator is not ready at
        first (``NOT_COORDINATOR``), and an ``assign()`` left to fetch them itself then never starts reading. An error
        raises, and ``run`` retries with back-off. A partition with no committed offset starts where the
        connection's ``auto.offset.reset`` says.
        """
        from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaException, TopicPartition

        wanted: set[tuple[str, int]] = set()
        for topic in self.topics:
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            if meta.error is not None:
                raise RuntimeError(f"topic {topic}: {meta.error}")
            wanted |= {(topic, p) for p in meta.partitions}
        new = sorted(wanted - assigned)
        if new:
            positions = consumer.committed([TopicPartition(t, p) for t, p in new], timeout=30)
            for tp in positions:
                if tp.error is not None:
                    raise KafkaException(tp.error)
                if tp.offset < 0:
                    tp.offset = OFFSET_BEGINNING if self._from_beginning else OFFSET_END
            consumer.incremental_assign(positions)
            self.log.info("Reading %s", [f"{tp.topic}/{tp.partition}@{tp.offset}" for tp in positions])
        self._assigned = wanted
        return wanted

    def gather(self) -> list[dict[str, Any]]:
        """Carried-over records, or block up to ``poll_timeout`` for the first one; then pack what follows (see
        ``_pack_until``) up to the count and byte bounds."""
        batch = _Batch(self._carry, self.max_messages_per_event, self.max_event_bytes, kafka_body_bytes)
        if not batch.items:
            batch.offer(self._take(1, self.poll_timeout))  # returns on the first record
        if batch.items:
            deadline = _pack_until(self._last_event_at, self.linger_seconds)
            while not batch.full:
                remaining = deadline - time.monotonic()
                # until the batch is full or the deadline passes; after it, only what is already fetched
                more = self._take(batch.room(), max(0.0, remaining))
                batch.offer(more)
                if remaining <= 0 or not more:
                    break
            self._last_event_at = time.monotonic()
        return batch.items

    def _take(self, count: int, timeout: float) -> list[dict[str, Any]]:
        """Up to ``count`` records: ``consume`` returns when it has them all or ``timeout`` has passed."""
        from confluent_kafka import KafkaError

        records = []
        for m in self._consumer.consume(num_messages=count, timeout=timeout):
            err = m.error()
            if err is None:
                records.append(kafka_message_to_event(m))
            elif err.code() != KafkaError._PARTITION_EOF:
                if err.fatal():
                    raise RuntimeError(f"fatal Kafka error: {err}")
                self.log.warning("Kafka: %s (retrying)", err)
        return records

    def redeliver(self, now: float) -> list[tuple[str, int, int]]:
        """Seek back to the committed offset of every partition where it has stood still behind the position for
        ``redelivery_seconds``; returns ``(topic, partition, offset sought)``. ``now``: ``time.monotonic()``."""
        from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaException, TopicPartition

        keys = sorted(self._assigned)
        if not keys or self.redelivery_seconds <= 0:
            return []
        tps = [TopicPartition(t, p) for t, p in keys]
        try:
            committed = {(tp.topic, tp.partition): tp.offset
                         for tp in self._consumer.committed(tps, timeout=10) if tp.error is None}
            position = {(tp.topic, tp.partition): tp.offset
                        for tp in self._consumer.position(tps) if tp.error is None}
        except KafkaException as exc:
            self.log.warning("Kafka: committed offsets of %s not read (%s); retrying later", self.topics, exc)
            return []
        sought = []
        for key in keys:
            if key not in committed:
                continue
            done, read = committed[key], position.get(key, -1)
            if read < 0 or read <= done:
                self._unsettled.pop(key, None)  # everything read is settled
                continue
            seen = self._unsettled.get(key)
            if seen is None or seen[0] != done:
                self._unsettled[key] = (done, now)  # fell behind, or the committed offset moved: the clock starts
                continue
            stalled = now - seen[1]
            if stalled < self.redelivery_seconds:
                continue
            target = done if done >= 0 else (OFFSET_BEGINNING if self._from_beginning else OFFSET_END)
            try:
                self._consumer.seek(TopicPartition(key[0], key[1], target))
            except KafkaException as exc:
                self.log.warning("Kafka: seek of %s/%s to %s failed (%s); retrying later", *key, target, exc)
                continue
            self._carry = deque(r for r in self._carry if (r.get("topic"), r.get("partition")) != key)
            self._unsettled[key] = (done, now)
            self.log.warning("re-reading %s/%s from %s: not settled for %.0f s", key[0], key[1],
                             done if done >= 0 else ("the beginning" if self._from_beginning else "the end"), stalled)
            sought.append((key[0], key[1], target))
        return sought

    async def run(self) -> AsyncIterator[TriggerEvent]:
        failures = 0
        check_every = max(0.01, min(5.0, self.redelivery_seconds / 4))
        while True:
            try:
                self._consumer = await sync_to_async(self._open)()
                assigned = await sync_to_async(self._assign)(self._consumer, set())
                refreshed = checked = time.monotonic()
                while True:
                    records = await sync_to_async(self.gather)()
                    failures = 0
                    if records:
                        yield TriggerEvent({"source": "kafka_batch", "records": records})
                    if time.monotonic() - refreshed > self.partition_refresh_seconds:
                        assigned = await sync_to_async(self._assign)(self._consumer, assigned)
                        refreshed = time.monotonic()
                    if time.monotonic() - checked >= check_every:
                        await sync_to_async(self.redeliver)(time.monotonic())
                        checked = time.monotonic()
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except Exception:
                delay = RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)]
                failures += 1
                self.log.warning("Kafka read of %s failed; retrying in %ss", self.topics, delay, exc_info=True)
                await self.cleanup()
                await asyncio.sleep(delay)

    async def cleanup(self) -> None:
        consumer, self._consumer = self._consumer, None
        self._carry.clear()  # read again from the committed offsets by the next consumer
        self._unsettled.clear()
        self._assigned = set()
        if consumer is not None:
            try:
                await sync_to_async(consumer.close)()
            except Exception:
                log.warning("closing the Kafka consumer failed", exc_info=True)
