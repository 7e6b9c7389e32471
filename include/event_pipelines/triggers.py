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

These triggers never exit. Each ``TriggerEvent`` carries up to ``max_messages_per_event`` messages, in the same
payload shapes the pipelines already read (``message_batch`` for SQS, ``records`` for Kafka): after a quiet spell
the first message goes out at once; in a stream, at most one event per ``linger_seconds`` (``_pack_until``).
Nothing is acknowledged here:

* **SQS**: messages are received with a short ``visibility_timeout`` (20 s here). If the triggerer dies before the
  event is stored, the messages reappear within it and are received again. Once the event has been stored (half
  that timeout later), the trigger extends them to the run's budget (300 s), and so does the run's first task; the
  run deletes each message once its effect is committed.
* **Kafka**: the consumer uses ``assign()`` (no group membership) and starts from the group's committed offsets.
  Offsets are committed by the run's last task, after its effects are durable (``commit_offsets``), never moving
  backwards. After a triggerer restart, everything not yet committed is read again. Duplicates are absorbed by the
  idempotent sinks.

Transient broker errors are logged and retried with back-off inside the trigger instead of failing it, so an
outage does not crash-loop the triggerer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent
from asgiref.sync import sync_to_async

from include.event_pipelines.messages import kafka_message_to_event

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


class StreamingSqsTrigger(BaseEventTrigger):
    """Long-poll an SQS queue forever; one event per gathered batch; never deletes.

    Messages are received with a short ``visibility_timeout``: if the triggerer dies before their event is stored,
    they come back soon. ``handover_after_seconds`` after an event was handed to the triggerer (which stores it
    within about a second), the trigger extends its messages' visibility to ``handover_visibility_timeout``, the
    run's budget: a message whose run is slow to start is not received again (which would be a duplicate, and
    would count towards the queue's redrive ``maxReceiveCount``). A message already deleted by its run is skipped.
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
        self._last_event_at = 0.0
        self._handed: deque[tuple[float, list[str]]] = deque()  # (yielded at, receipt handles), oldest first

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
            },
        )

    async def _receive(self, client: Any, wait: int) -> list[dict[str, Any]]:
        response = await client.receive_message(
            QueueUrl=self.sqs_queue,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=wait,
            VisibilityTimeout=self.visibility_timeout,
        )
        return [
            {"MessageId": m["MessageId"], "ReceiptHandle": m["ReceiptHandle"], "Body": m.get("Body", "")}
            for m in response.get("Messages", [])
        ]

    async def gather(self, client: Any) -> list[dict[str, Any]]:
        """Block (long poll) for the first messages, then pack what follows them (see ``_pack_until``)."""
        batch = await self._receive(client, self._long_poll_seconds())
        if batch:
            deadline = _pack_until(self._last_event_at, self.linger_seconds)
            while len(batch) < self.max_messages_per_event:
                more = await self._receive(client, 0)
                batch += more
                now = time.monotonic()
                if not more:
                    if now >= deadline:
                        break
                    await asyncio.sleep(min(0.05, deadline - now))
            self._last_event_at = time.monotonic()
        return batch

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
    """Read assigned partitions forever from the committed offsets; one event per gathered batch; never commits."""

    def __init__(
        self,
        *,
        topics: Sequence[str],
        kafka_config_id: str = "kafka_default",
        max_messages_per_event: int = 500,
        linger_seconds: float = 0.25,
        poll_timeout: float = 1.0,
        partition_refresh_seconds: float = 60.0,
    ) -> None:
        super().__init__()
        self.topics = list(topics)
        self.kafka_config_id = kafka_config_id
        self.max_messages_per_event = max_messages_per_event
        self.linger_seconds = linger_seconds
        self.poll_timeout = poll_timeout
        self.partition_refresh_seconds = partition_refresh_seconds
        self._consumer: Any = None
        self._from_beginning = True
        self._last_event_at = 0.0

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
            },
        )

    def _open(self) -> Any:
        from airflow.providers.apache.kafka.hooks.consume import KafkaConsumerHook

        hook = KafkaConsumerHook(topics=self.topics, kafka_config_id=self.kafka_config_id)
        reset = str(hook.get_connection(self.kafka_config_id).extra_dejson.get("auto.offset.reset", "latest"))
        self._from_beginning = reset.lower() in ("earliest", "smallest", "beginning")
        return hook.get_conn

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
        return wanted

    def gather(self) -> list[dict[str, Any]]:
        """Block up to ``poll_timeout`` for the first record, then pack what follows it (see ``_pack_until``)."""
        records = self._take(1, self.poll_timeout)  # returns on the first record
        if records:
            deadline = _pack_until(self._last_event_at, self.linger_seconds)
            while len(records) < self.max_messages_per_event:
                remaining = deadline - time.monotonic()
                # until the batch is full or the deadline passes; after it, only what is already fetched
                more = self._take(self.max_messages_per_event - len(records), max(0.0, remaining))
                records += more
                if remaining <= 0 or not more:
                    break
            self._last_event_at = time.monotonic()
        return records

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

    async def run(self) -> AsyncIterator[TriggerEvent]:
        failures = 0
        while True:
            try:
                self._consumer = await sync_to_async(self._open)()
                assigned = await sync_to_async(self._assign)(self._consumer, set())
                refreshed = time.monotonic()
                while True:
                    records = await sync_to_async(self.gather)()
                    failures = 0
                    if records:
                        yield TriggerEvent({"source": "kafka_batch", "records": records})
                    if time.monotonic() - refreshed > self.partition_refresh_seconds:
                        assigned = await sync_to_async(self._assign)(self._consumer, assigned)
                        refreshed = time.monotonic()
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
        if consumer is not None:
            try:
                await sync_to_async(consumer.close)()
            except Exception:
                log.warning("closing the Kafka consumer failed", exc_info=True)
