"""Streaming watcher triggers: many messages per asset event, acknowledged only after the run's effect is durable.

They never exit. Each event carries up to ``max_messages_per_event`` messages and ``max_event_bytes`` of bodies:
after a quiet spell the first message goes out at once; in a stream, at most one event per ``linger_seconds``.
Nothing is acknowledged here: SQS messages are received with a short visibility timeout and extended to the run's
budget once their event is stored (the run deletes them); a body too large for an event is first kept in the
events database (``kept_conn_id``, ``event_streams.kept_bodies``), its message held back while it cannot be. Kafka
partitions are read with ``assign()`` from the group's committed offsets, which only the run moves
(``event_streams.kafka_offsets``). Broker errors are retried with back-off inside the trigger. Defaults of the
tuning arguments come from the environment (README.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent
from asgiref.sync import sync_to_async

from event_streams import gauges, payload, schema

log = logging.getLogger(__name__)

RETRY_DELAYS = (1, 2, 5, 10)


def _env_int(name: str, default: int) -> int:
    return int(os.getenv(name, str(default)))


def _env_float(name: str, default: float) -> float:
    return float(os.getenv(name, str(default)))


def _pick(value: Any, read: Callable[[str, Any], Any], name: str, default: Any) -> Any:
    """``value`` if given, else the environment variable ``name``, else ``default``."""
    return read(name, default) if value is None else value


def _pack_until(last_event_at: float, linger_seconds: float) -> float:
    """Until when to keep packing messages into the event being gathered (a monotonic time).

    After a quiet spell (no event for ``linger_seconds``) the first message goes out at once, with only what is
    already waiting behind it: a lone message is not held back. Within ``linger_seconds`` of the last event (a
    stream), the trigger keeps gathering until ``linger_seconds`` after that event: at most one event per
    ``linger_seconds`` per watcher, each carrying up to ``max_messages_per_event`` messages. That keeps the
    triggerer, which stores each event in its own database transaction, far from its events-per-second ceiling.
    """
    return max(time.monotonic(), last_event_at + linger_seconds)


class BatchEvent(TriggerEvent):
    """A ``TriggerEvent`` whose text names its batch (``payload.describe``) instead of printing it.

    Airflow's triggerer logs every event it fires with the event's text (``Trigger fired event ... result=...``).
    With the whole payload that was each message's content in the log, and 500 records a line: the trigger runner
    sends its logs to the triggerer's supervisor in 4 KiB reads, and each read is one pass of the supervisor's loop,
    with its database queries. Under a sustained Kafka stream that was 56 passes a second here
    (docs/performance.md). The payload itself, stored with the asset event, is unchanged.
    """

    def __init__(self, event_payload: Any, **kwargs: Any) -> None:
        super().__init__(event_payload, **kwargs)

    def __repr__(self) -> str:
        return f"TriggerEvent<{payload.describe(self.payload)}>"

    __str__ = __repr__


@contextmanager
def _connection_engine(conn_id: str) -> Iterator[Any]:
    """A SQLAlchemy engine for an Airflow SQL connection (the events database), disposed on leaving: a trigger
    needs one seldom (kept bodies, the offsets committed last), so it keeps no pool between uses."""
    from airflow.sdk import BaseHook

    engine = BaseHook.get_connection(conn_id).get_hook().get_sqlalchemy_engine()
    try:
        yield engine
    finally:
        engine.dispose()


def sqs_body_bytes(message: Mapping[str, Any]) -> int:
    """The bytes the message takes in the event: its body and its carried attributes (names, types, values)."""
    return len(message.get("Body", "").encode("utf-8")) + payload.sqs_attribute_bytes(
        message.get(payload.MESSAGE_ATTRIBUTES))


def kafka_body_bytes(record: Any) -> int:
    """The bytes the record takes in the event: body, key and headers (base64 text for bytes that are not UTF-8);
    for what an ``apply_function`` returned in another shape, the size of its JSON."""
    if isinstance(record, Mapping) and record.keys() & {"body", "body_b64", "body_omitted_bytes"}:
        body = record["body"].encode("utf-8") if record.get("body") is not None else (record.get("body_b64") or "")
        key = record["key"].encode("utf-8") if record.get("key") is not None else (record.get("key_b64") or "")
        return len(body) + len(key) + payload.header_bytes(record.get("headers"))
    return len(json.dumps(record, default=str).encode("utf-8"))


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

    Received with a short ``visibility_timeout``; ``handover_after_seconds`` (default: half of it) after their event
    went out, extended to ``handover_visibility_timeout`` (the run's budget). Messages that did not fit an event
    open the next one. Each message carries its String and Number attributes (``MessageAttributes``; they count
    toward ``max_event_bytes``). Arguments left ``None`` take their environment default (README.md).

    A body over ``max_message_bytes`` never rides in an event (``BodyOmittedBytes`` instead). With ``kept_conn_id``
    (an SQL connection: the events database) it is first written, exactly as received, to the table
    ``kept_bodies`` there (``event_streams.kept_bodies``; idempotent on message id and queue) and the message says
    so (``BodyKeptIn``): the run can then delete the source message and still dead-letter its content. While that
    write fails, the message is not handed on: it stays invisible until ``visibility_timeout`` ends and comes back.
    Without ``kept_conn_id`` the body is dropped from the event and kept nowhere.

    With ``kept_conn_id``, handed-over messages also stay invisible until their run takes them (a run queued behind
    ``max_active_runs`` can wait longer than the budget): every ``handover_heartbeat_seconds`` the trigger extends,
    to the budget again, those of its messages that no run has marked taken (``event_streams.taken_messages``),
    for at most ``handover_max_seconds``; deleted ones drop out. From the take on, the task that holds them extends
    their visibility itself.
    """

    def __init__(
        self,
        *,
        sqs_queue: str,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        kept_conn_id: str | None = None,
        max_messages_per_event: int | None = None,  # SQS_MESSAGES_PER_EVENT, 100
        linger_seconds: float | None = None,  # EVENT_LINGER_SECONDS, 0.25
        wait_time_seconds: int | None = None,  # SQS_WAIT_TIME_SECONDS, 20
        visibility_timeout: int | None = None,  # SQS_RECEIVE_VISIBILITY_TIMEOUT, 20
        handover_after_seconds: float | None = None,  # visibility_timeout / 2
        handover_visibility_timeout: int | None = None,  # SQS_VISIBILITY_TIMEOUT, 300
        max_event_bytes: int | None = None,  # MAX_EVENT_BYTES, 1 MiB
        max_message_bytes: int | None = None,  # MAX_MESSAGE_BYTES, 256 KiB
        handover_heartbeat_seconds: float | None = None,  # SQS_HEARTBEAT_SECONDS, handover_visibility_timeout / 3
        handover_max_seconds: float | None = None,  # SQS_HANDOVER_MAX_SECONDS, 3600
        gauge_seconds: float | None = None,  # STREAM_GAUGE_SECONDS, 30 (event_streams.gauges; 0: none)
    ) -> None:
        super().__init__()
        self.sqs_queue = sqs_queue
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.kept_conn_id = kept_conn_id
        self.max_messages_per_event = _pick(max_messages_per_event, _env_int, "SQS_MESSAGES_PER_EVENT", 100)
        self.linger_seconds = _pick(linger_seconds, _env_float, "EVENT_LINGER_SECONDS", 0.25)
        self.wait_time_seconds = _pick(wait_time_seconds, _env_int, "SQS_WAIT_TIME_SECONDS", 20)
        self.visibility_timeout = _pick(visibility_timeout, _env_int, "SQS_RECEIVE_VISIBILITY_TIMEOUT", 20)
        self.handover_after_seconds = (
            self.visibility_timeout / 2 if handover_after_seconds is None else handover_after_seconds
        )
        self.handover_visibility_timeout = _pick(
            handover_visibility_timeout, _env_int, "SQS_VISIBILITY_TIMEOUT", 300
        )
        self.max_event_bytes = _pick(max_event_bytes, _env_int, "MAX_EVENT_BYTES", 1024 * 1024)
        self.max_message_bytes = _pick(
            max_message_bytes, _env_int, "MAX_MESSAGE_BYTES", payload.DEFAULT_MAX_BODY_BYTES
        )
        self.handover_heartbeat_seconds = _pick(
            handover_heartbeat_seconds, _env_float, "SQS_HEARTBEAT_SECONDS", self.handover_visibility_timeout / 3
        )
        self.handover_max_seconds = _pick(handover_max_seconds, _env_float, "SQS_HANDOVER_MAX_SECONDS", 3600.0)
        self.gauge_seconds = _pick(gauge_seconds, _env_float, "STREAM_GAUGE_SECONDS", 30.0)
        self._gauged_at: float | None = None
        self._last_event_at = 0.0
        # (yielded at, [(message id, receipt handle)]), oldest first: not extended to the run's budget yet
        self._handed: deque[tuple[float, list[tuple[str, str]]]] = deque()
        # message id -> (receipt handle, yielded at): handed over, not yet taken by a run (kept_conn_id only)
        self._untaken: dict[str, tuple[str, float]] = {}
        self._next_beat = 0.0
        self._carry: deque[dict[str, Any]] = deque()  # received, did not fit the last event: first in the next

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "sqs_queue": self.sqs_queue,
                "aws_conn_id": self.aws_conn_id,
                "region_name": self.region_name,
                "kept_conn_id": self.kept_conn_id,
                "max_messages_per_event": self.max_messages_per_event,
                "linger_seconds": self.linger_seconds,
                "wait_time_seconds": self.wait_time_seconds,
                "visibility_timeout": self.visibility_timeout,
                "handover_after_seconds": self.handover_after_seconds,
                "handover_visibility_timeout": self.handover_visibility_timeout,
                "max_event_bytes": self.max_event_bytes,
                "max_message_bytes": self.max_message_bytes,
                "handover_heartbeat_seconds": self.handover_heartbeat_seconds,
                "handover_max_seconds": self.handover_max_seconds,
                "gauge_seconds": self.gauge_seconds,
            },
        )

    async def _receive(self, client: Any, wait: int, count: int = 10) -> list[dict[str, Any]]:
        """Up to ``count`` messages in their event form; those with a body too large for an event have it kept
        first (``kept_conn_id``), and are left out (to come back) when that fails."""
        response = await client.receive_message(
            QueueUrl=self.sqs_queue,
            MaxNumberOfMessages=max(1, min(10, count)),
            WaitTimeSeconds=wait,
            VisibilityTimeout=self.visibility_timeout,
            MessageAttributeNames=["All"],
        )
        messages = []
        oversize: list[tuple[str, str]] = []  # (message id, body) to keep before the event names them
        for m in response.get("Messages", []):
            message: dict[str, Any] = {"MessageId": m["MessageId"], "ReceiptHandle": m["ReceiptHandle"],
                                       "Body": m.get("Body", "")}
            attributes = payload.sqs_attributes(m.get(payload.MESSAGE_ATTRIBUTES))
            if attributes:
                message[payload.MESSAGE_ATTRIBUTES] = attributes
            size = len(message["Body"].encode("utf-8"))
            if size > self.max_message_bytes:  # never rides in an event; the run dead-letters it
                oversize.append((message["MessageId"], message.pop("Body")))
                message[payload.BODY_OMITTED_BYTES] = size
            messages.append(message)
        if oversize and self.kept_conn_id:
            held = await self._keep_bodies(oversize)
            for message in messages:
                if message["MessageId"] not in held and message.get(payload.BODY_OMITTED_BYTES) is not None:
                    message[payload.BODY_KEPT_IN] = payload.KEPT_BODIES_TABLE
            messages = [m for m in messages if m["MessageId"] not in held]
        return messages

    async def _keep_bodies(self, oversize: list[tuple[str, str]]) -> set[str]:
        """Write the bodies to ``kept_bodies`` (in a thread: the triggerer's loop must not block); returns the ids of
        the messages to hold back: all of them when the write failed (they come back after the visibility
        timeout), none when it succeeded."""
        try:
            await asyncio.to_thread(self._keep, oversize)
        except Exception:
            ids = sorted(mid for mid, _ in oversize)
            self.log.warning("SQS %s: the bodies of %s (over %s bytes) could not be kept in %r; not handing them on: "
                             "they come back in %s s", self.sqs_queue, ids, self.max_message_bytes, self.kept_conn_id,
                             self.visibility_timeout, exc_info=True)
            return set(ids)
        return set()

    def _keep(self, oversize: list[tuple[str, str]]) -> int:
        """``kept_bodies.keep`` in the database of ``kept_conn_id`` (committed on return; raises on failure)."""
        from event_streams.kept_bodies import keep

        assert self.kept_conn_id is not None
        with _connection_engine(self.kept_conn_id) as engine:
            return keep(engine, self.sqs_queue, oversize)

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
        """The long poll, cut short when a handover or a heartbeat falls due before it would end."""
        due = [self._handed[0][0] + self.handover_after_seconds] if self._handed else []
        due += [self._next_beat] if self._untaken else []
        if not due:
            return self.wait_time_seconds
        return max(0, min(self.wait_time_seconds, int(min(due) - time.monotonic()) + 1))

    def handed(self, batch: list[dict[str, Any]]) -> None:
        """Record that ``batch`` went out in an event (called right after the ``yield``)."""
        self._handed.append((time.monotonic(), [(m["MessageId"], m["ReceiptHandle"]) for m in batch]))

    async def _extend(self, client: Any, messages: list[tuple[str, str]]) -> set[str]:
        """Extend the visibility of ``(message id, receipt handle)`` pairs to the run's budget; returns the ids
        extended (a message already deleted by its run fails, and is not among them)."""
        extended: set[str] = set()
        for pairs in schema.chunked(messages, 10):
            chunk = dict(pairs)
            entries = [{"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": self.handover_visibility_timeout}
                       for i, h in enumerate(chunk.values())]
            response = await client.change_message_visibility_batch(QueueUrl=self.sqs_queue, Entries=entries)
            ids = list(chunk)
            extended.update(ids[int(ok["Id"])] for ok in response.get("Successful", []))
        return extended

    async def hand_over(self, client: Any) -> int:
        """Extend, to the run's budget, the visibility of the messages of every event handed out long enough ago;
        with ``kept_conn_id`` they are then watched until taken (``keep_untaken``). Returns how many were
        extended (those already deleted by their run fail and are skipped)."""
        extended = 0
        while self._handed and time.monotonic() - self._handed[0][0] >= self.handover_after_seconds:
            at, messages = self._handed.popleft()
            done = await self._extend(client, messages)
            extended += len(done)
            if self.kept_conn_id:
                if not self._untaken:
                    self._next_beat = time.monotonic() + self.handover_heartbeat_seconds
                self._untaken.update((mid, (h, at)) for mid, h in messages if mid in done)
        return extended

    async def keep_untaken(self, client: Any) -> int:
        """Every ``handover_heartbeat_seconds``: forget the handed-over messages that a run has taken (its task
        extends them now) or that were handed out more than ``handover_max_seconds`` ago; extend the others to the
        run's budget again. Returns how many were extended. The database is asked in a thread."""
        if not self._untaken or time.monotonic() < self._next_beat:
            return 0
        now = time.monotonic()
        self._next_beat = now + self.handover_heartbeat_seconds
        ids = list(self._untaken)
        try:
            taken = await asyncio.to_thread(self._taken, ids)
        except Exception:  # the database is away: extend them all this time (never lose a message to a run)
            self.log.warning("SQS %s: could not ask %r which messages were taken", self.sqs_queue,
                             self.kept_conn_id, exc_info=True)
            taken = set()
        expired = [mid for mid, (_, at) in self._untaken.items() if now - at > self.handover_max_seconds]
        if expired:
            self.log.warning("SQS %s: %d message(s) handed out %ss ago were never taken by a run; no longer kept "
                             "invisible: %s", self.sqs_queue, len(expired), self.handover_max_seconds, expired[:5])
        for mid in taken | set(expired):
            self._untaken.pop(mid, None)
        pending = [(mid, handle) for mid, (handle, _) in self._untaken.items()]
        done = await self._extend(client, pending)
        for mid, _ in pending:
            if mid not in done:  # deleted (settled before its run marked it, e.g. dead-lettered), or handle stale
                self._untaken.pop(mid, None)
        return len(done)

    def _taken(self, ids: list[str]) -> set[str]:
        """Which of ``ids`` a run has taken; forgets those rows (and stale ones) in the events database."""
        from datetime import timedelta

        from event_streams import taken_messages

        assert self.kept_conn_id is not None
        with _connection_engine(self.kept_conn_id) as engine:
            taken = taken_messages.taken(engine, self.sqs_queue, ids)
            taken_messages.forget(engine, self.sqs_queue, taken, older_than=timedelta(
                seconds=2 * self.handover_max_seconds))
        return taken

    async def gauge(self, client: Any) -> dict[str, int] | None:
        """Every ``gauge_seconds``: the queue's visible / in flight / delayed counts as gauges
        (``event_streams.gauges``). A failure to ask skips this round; it never disturbs the stream."""
        now = time.monotonic()
        if self.gauge_seconds <= 0 or (self._gauged_at is not None and now - self._gauged_at < self.gauge_seconds):
            return None
        self._gauged_at = now
        try:
            answer = await client.get_queue_attributes(QueueUrl=self.sqs_queue,
                                                       AttributeNames=list(gauges.SQS_ATTRIBUTES.values()))
            return gauges.sqs(self.sqs_queue, answer.get("Attributes", {}))
        except Exception:
            self.log.debug("queue figures of %s not sent", self.sqs_queue, exc_info=True)
            return None

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
                            yield BatchEvent({"status": "success", payload.MESSAGE_BATCH: batch})
                            self.handed(batch)
                        await self.hand_over(client)
                        await self.keep_untaken(client)
                        await self.gauge(client)
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except Exception:
                delay = RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)]
                failures += 1
                self.log.warning("SQS receive from %s failed; retrying in %ss", self.sqs_queue, delay, exc_info=True)
                await asyncio.sleep(delay)


class StreamingKafkaTrigger(BaseEventTrigger):
    """Read assigned partitions forever from the committed offsets; one event per gathered batch; never commits.

    A partition without a committed offset starts where the pipeline committed last when ``settled_conn_id`` (the
    events database's connection, holding ``kafka_settled``) knows it: the broker drops the offsets of a group
    ``offsets.retention.minutes`` after their last commit, e.g. while the triggerer was down for longer; else at the
    connection's ``auto.offset.reset``.

    The offsets are those of consumer group ``group_id`` (give each watcher its own: two watchers in one group would
    move each other's committed offsets), else of the connection's ``group.id``; each event names its group
    (``payload.GROUP_ID``) for the run that commits. The group never has members (``assign()``): while another
    application is a member, the broker refuses the commits, so the trigger reads nothing and logs an error naming
    the group and its members until it is free (checked every ``partition_refresh_seconds``).

    Re-reads a partition from its committed offset when that offset has stood still behind the read position for
    ``redelivery_seconds`` (its records were never settled). Records that did not fit an event open the next one.
    Each record becomes ``apply_function(message, *apply_function_args, **apply_function_kwargs)`` (a dotted path;
    it must return a JSON-safe value for every record: none is filtered out), by default ``payload.kafka_record``.
    Arguments left ``None`` take their environment default (README.md).
    """

    def __init__(
        self,
        *,
        topics: Sequence[str],
        kafka_config_id: str = "kafka_default",
        group_id: str | None = None,
        settled_conn_id: str | None = None,
        apply_function: str | None = None,
        apply_function_args: Sequence[Any] | None = None,
        apply_function_kwargs: dict[str, Any] | None = None,
        poll_timeout: float = 1.0,
        max_messages_per_event: int | None = None,  # KAFKA_MESSAGES_PER_EVENT, 500
        linger_seconds: float | None = None,  # EVENT_LINGER_SECONDS, 0.25
        partition_refresh_seconds: float = 60.0,
        redelivery_seconds: float | None = None,  # KAFKA_REDELIVERY_SECONDS, 120
        offsets_keepalive_seconds: float | None = None,  # KAFKA_OFFSETS_KEEPALIVE_SECONDS, 86400
        max_event_bytes: int | None = None,  # MAX_EVENT_BYTES, 1 MiB
        max_message_bytes: int | None = None,  # MAX_MESSAGE_BYTES, 256 KiB (built-in record form only)
        gauge_seconds: float | None = None,  # STREAM_GAUGE_SECONDS, 30 (event_streams.gauges; 0: none)
    ) -> None:
        super().__init__()
        self.topics = list(topics)
        self.kafka_config_id = kafka_config_id
        self.group_id = group_id
        self.settled_conn_id = settled_conn_id
        self.apply_function = apply_function
        self.apply_function_args = list(apply_function_args or ())
        self.apply_function_kwargs = dict(apply_function_kwargs or {})
        self.poll_timeout = poll_timeout
        self.max_messages_per_event = _pick(max_messages_per_event, _env_int, "KAFKA_MESSAGES_PER_EVENT", 500)
        self.linger_seconds = _pick(linger_seconds, _env_float, "EVENT_LINGER_SECONDS", 0.25)
        self.partition_refresh_seconds = partition_refresh_seconds
        self.redelivery_seconds = _pick(redelivery_seconds, _env_float, "KAFKA_REDELIVERY_SECONDS", 120.0)
        self.offsets_keepalive_seconds = _pick(
            offsets_keepalive_seconds, _env_float, "KAFKA_OFFSETS_KEEPALIVE_SECONDS", 86400.0
        )
        self.max_event_bytes = _pick(max_event_bytes, _env_int, "MAX_EVENT_BYTES", 1024 * 1024)
        self.max_message_bytes = _pick(
            max_message_bytes, _env_int, "MAX_MESSAGE_BYTES", payload.DEFAULT_MAX_BODY_BYTES
        )
        self.gauge_seconds = _pick(gauge_seconds, _env_float, "STREAM_GAUGE_SECONDS", 30.0)
        self._gauged_at: float | None = None
        self._convert: Callable[..., Any] | None = None
        self._consumer: Any = None
        self._config: dict[str, Any] = {}  # the consumer's effective settings (group.id included)
        self._from_beginning = True
        self._last_event_at = 0.0
        self._assigned: set[tuple[str, int]] = set()
        self._carry: deque[Any] = deque()  # consumed, did not fit the last event: first in the next
        self._unsettled: dict[tuple[str, int], tuple[int, float]] = {}  # behind: committed offset, unchanged since
        # per partition: the offset the consumer reads next (known after assign or seek), and the offset after the
        # last record taken (or the start when none was): offsets in between hold nothing a consumer receives
        self._next: dict[tuple[str, int], int] = {}
        self._records_end: dict[tuple[str, int], int] = {}
        self._known_committed: dict[tuple[str, int], int] = {}  # the last committed offset seen per partition
        self._kept_alive_at: float | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "topics": self.topics,
                "kafka_config_id": self.kafka_config_id,
                "group_id": self.group_id,
                "settled_conn_id": self.settled_conn_id,
                "apply_function": self.apply_function,
                "apply_function_args": self.apply_function_args,
                "apply_function_kwargs": self.apply_function_kwargs,
                "poll_timeout": self.poll_timeout,
                "max_messages_per_event": self.max_messages_per_event,
                "linger_seconds": self.linger_seconds,
                "partition_refresh_seconds": self.partition_refresh_seconds,
                "redelivery_seconds": self.redelivery_seconds,
                "offsets_keepalive_seconds": self.offsets_keepalive_seconds,
                "max_event_bytes": self.max_event_bytes,
                "max_message_bytes": self.max_message_bytes,
                "gauge_seconds": self.gauge_seconds,
            },
        )

    def _open(self) -> Any:
        from event_streams.kafka_offsets import SafeKafkaConsumerHook

        hook = SafeKafkaConsumerHook(topics=self.topics, kafka_config_id=self.kafka_config_id, group_id=self.group_id)
        consumer = hook.get_conn  # no auto commit / offset store, explicit auto.offset.reset, a group.id
        self._config = hook.effective_config
        self._from_beginning = hook.from_beginning
        return consumer

    @property
    def group(self) -> str:
        """The consumer group whose committed offsets this trigger reads (known once the consumer is open)."""
        return str(self._config["group.id"])

    def group_in_use(self) -> list[str]:
        """The live members of the group (another application), logged as an error naming the group; ``[]`` when
        it is free, or when the broker could not say (the next check asks again)."""
        from event_streams.kafka_offsets import group_members

        try:
            members = group_members(self._config)
        except Exception as exc:
            self.log.warning("Kafka: members of consumer group %r not read (%s); checking again later", self.group, exc)
            return []
        if members:
            self.log.error(
                "Kafka consumer group %r of the watcher on %s has live members %s: another application uses this group "
                "id, and the broker refuses the pipeline's commits while it does. Reading nothing until the group is "
                "free; give the watcher a group of its own (group_id).", self.group, self.topics, members)
        return members

    async def _until_group_free(self) -> None:
        """Read nothing while another application is a member of the group (``group_in_use`` logs it)."""
        while await sync_to_async(self.group_in_use)():
            await asyncio.sleep(self.partition_refresh_seconds)

    def _assign(self, consumer: Any, assigned: set[tuple[str, int]]) -> set[tuple[str, int]]:
        """Assign every partition of the topics (new ones included) at the group's committed offsets.

        The committed offsets are fetched here, explicitly: on a fresh broker the group coordinator is not ready at
        first (``NOT_COORDINATOR``), and an ``assign()`` left to fetch them itself then never starts reading. An error
        raises, and ``run`` retries with back-off. A partition with no committed offset starts where the
        connection's ``auto.offset.reset`` says, and that offset is committed at once: what the runs settle counts
        from there, so with ``latest`` a first run that fails for good holds the offset back like any other.
        """
        from confluent_kafka import KafkaException, TopicPartition

        wanted: set[tuple[str, int]] = set()
        for topic in self.topics:
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            if meta.error is not None:
                raise RuntimeError(f"topic {topic}: {meta.error}")
            wanted |= {(topic, p) for p in meta.partitions}
        new = sorted(wanted - assigned)
        if new:
            positions = consumer.committed([TopicPartition(t, p) for t, p in new], timeout=30)
            started = []
            for tp in positions:
                if tp.error is not None:
                    raise KafkaException(tp.error)
            missing = [(tp.topic, tp.partition) for tp in positions if tp.offset < 0]
            last = self._last_commits(missing) if missing else {}
            for tp in positions:
                if tp.offset < 0:
                    low, high = consumer.get_watermark_offsets(tp, timeout=10)
                    key = (tp.topic, tp.partition)
                    if key in last:
                        tp.offset = max(last[key], low)
                        self.log.warning("Kafka: no committed offset for %s/%s in group %r (dropped by the broker); "
                                         "resuming at %s, the offset the pipeline committed last", *key, self.group,
                                         tp.offset)
                    else:
                        tp.offset = low if self._from_beginning else high
                    started.append(TopicPartition(tp.topic, tp.partition, tp.offset))
                self._next[(tp.topic, tp.partition)] = self._records_end[(tp.topic, tp.partition)] = tp.offset
            if started:
                consumer.commit(offsets=started, asynchronous=False)
            consumer.incremental_assign(positions)
            self.log.info("Reading %s", [f"{tp.topic}/{tp.partition}@{tp.offset}" for tp in positions])
        self._assigned = wanted
        return wanted

    def _last_commits(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The offsets the runs committed last (``kafka_settled``, in the database of ``settled_conn_id``), for
        partitions the broker has no committed offset for; ``{}`` without a ``settled_conn_id``."""
        if not self.settled_conn_id:
            return {}
        from event_streams.kafka_offsets import last_commits

        with _connection_engine(self.settled_conn_id) as engine:
            return last_commits(engine, self.group, partitions)

    def gather(self) -> list[Any]:
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

    def _record(self, message: Any) -> Any:
        """The event's form of one consumed message: the apply function's result, or ``payload.kafka_record``;
        a mapping with an ``offset`` gets ``read_from`` when the read started at an earlier offset."""
        key = (message.topic(), message.partition())
        offset = message.offset()
        read_from = self._next.get(key)
        read_from = read_from if read_from is not None and read_from < offset else None
        self._next[key] = self._records_end[key] = offset + 1
        if self._convert is None:
            if self.apply_function:
                from airflow.providers.common.compat.module_loading import import_string

                self._convert = import_string(self.apply_function)
            else:
                self._convert = lambda m, start: payload.kafka_record(m, self.max_message_bytes, start)
        if not self.apply_function:
            return self._convert(message, read_from)
        record = self._convert(message, *self.apply_function_args, **self.apply_function_kwargs)
        if read_from is not None and isinstance(record, dict) and record.get("offset") == offset:
            record["read_from"] = read_from
        return record

    def _take(self, count: int, timeout: float) -> list[Any]:
        """Up to ``count`` records: ``consume`` returns when it has them all or ``timeout`` has passed."""
        from confluent_kafka import KafkaError

        records = []
        for m in self._consumer.consume(num_messages=count, timeout=timeout):
            err = m.error()
            if err is None:
                records.append(self._record(m))
            elif err.code() != KafkaError._PARTITION_EOF:
                if err.fatal():
                    raise RuntimeError(f"fatal Kafka error: {err}")
                self.log.warning("Kafka: %s (retrying)", err)
        return records

    @staticmethod
    def _of(key: tuple[str, int]) -> Callable[[Any], bool]:
        """Whether a carried record (in the built-in form) belongs to partition ``key``; other shapes never do."""
        return lambda r: isinstance(r, Mapping) and (r.get("topic"), r.get("partition")) == key

    def commit_gap(self, key: tuple[str, int], committed: int, position: int) -> bool:
        """Commit ``position`` when everything before it that a consumer receives is settled: the committed offset
        has reached the end of the last record taken, and the consumer has read on to ``position`` over offsets
        that hold no record (a transaction's closing marker, aborted records, compacted holes). Only such a
        stretch: a run can never commit past it (its records all end at or before ``committed``)."""
        from confluent_kafka import TopicPartition

        if committed < 0 or position <= committed:
            return False
        if committed < self._records_end.get(key, position) or any(map(self._of(key), self._carry)):
            return False
        self._consumer.commit(offsets=[TopicPartition(key[0], key[1], position)], asynchronous=False)
        self.log.info("committed %s/%s at %s: offsets %s-%s hold no record a consumer receives", *key, position,
                      committed, position - 1)
        return True

    def keep_offsets(self, committed: dict[tuple[str, int], int], position: dict[tuple[str, int], int],
                     now: float) -> dict[tuple[str, int], int]:
        """Keep the group's committed offsets on the broker; returns ``committed`` as it now stands.

        The group never has members (partitions are assigned), so the broker drops its committed offsets
        ``offsets.retention.minutes`` (7 days by default) after their last commit: an idle partition would then be
        read again from ``auto.offset.reset``. Every ``offsets_keepalive_seconds`` the offsets of the partitions with
        nothing in flight (position = committed offset) are committed again, unchanged, which renews them; an offset
        that has gone all the same (deleted by hand, or retention while the triggerer was down) is committed back
        at the last value this trigger saw, at once.
        """
        from confluent_kafka import TopicPartition

        restore = {k: self._known_committed[k] for k, o in committed.items() if o < 0 and k in self._known_committed}
        renew: dict[tuple[str, int], int] = {}
        if self._kept_alive_at is None:
            self._kept_alive_at = now
        elif self.offsets_keepalive_seconds > 0 and now - self._kept_alive_at >= self.offsets_keepalive_seconds:
            renew = {k: o for k, o in committed.items() if o >= 0 and position.get(k) == o}
            self._kept_alive_at = now
        if restore or renew:
            offsets = {**renew, **restore}
            self._consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                                  asynchronous=False)
            if restore:
                self.log.warning("Kafka: the committed offsets of %s were gone from the broker; committed back: %s",
                                 sorted(restore), restore)
            committed = {**committed, **restore}
        self._known_committed.update({k: o for k, o in committed.items() if o >= 0})
        return committed

    def redeliver(self, now: float) -> list[tuple[str, int, int]]:
        """Seek back to the committed offset of every partition where it has stood still behind the position for
        ``redelivery_seconds`` (never when that is 0); returns ``(topic, partition, offset sought)``. Keeps the
        offsets alive and commits trailing stretches without records (``keep_offsets``, ``commit_gap``) in any case.
        ``now``: ``time.monotonic()``."""
        from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaException, TopicPartition

        keys = sorted(self._assigned)
        if not keys:
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
        try:
            committed = self.keep_offsets(committed, position, now)
        except KafkaException as exc:
            self.log.warning("Kafka: committed offsets of %s not kept (%s); retrying later", self.topics, exc)
        sought = []
        for key in keys:
            if key not in committed:
                continue
            done, read = committed[key], position.get(key, -1)
            if read < 0 or read <= done:
                self._unsettled.pop(key, None)  # everything read is settled
                continue
            try:
                if self.commit_gap(key, done, read):
                    self._unsettled.pop(key, None)
                    continue
            except KafkaException as exc:
                self.log.warning("Kafka: commit of %s/%s at %s failed (%s); retrying later", *key, read, exc)
            if self.redelivery_seconds <= 0:  # re-reading is off; the offsets are still kept and gaps committed
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
            # carried records of this partition are read again (other shapes stay: duplicates, absorbed by the run)
            self._carry = deque(r for r in self._carry if not self._of(key)(r))
            self._unsettled[key] = (done, now)
            if target >= 0:
                self._next[key] = target
            else:
                self._next.pop(key, None)
            self.log.warning("re-reading %s/%s from %s: not settled for %.0f s", key[0], key[1],
                             done if done >= 0 else ("the beginning" if self._from_beginning else "the end"), stalled)
            sought.append((key[0], key[1], target))
        return sought

    def gauge(self) -> dict[str, dict[str, int]] | None:
        """The assigned partitions' lag (end - committed) and unread records (end - read position) as gauges
        (``event_streams.gauges``). A failure to ask skips this round; it never disturbs the stream."""
        from confluent_kafka import TopicPartition

        consumer, keys = self._consumer, sorted(self._assigned)
        if consumer is None or not keys:
            return None
        try:
            tps = [TopicPartition(t, p) for t, p in keys]
            committed = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(tps, timeout=5)}
            positions = {(tp.topic, tp.partition): tp.offset for tp in consumer.position(tps) if tp.error is None}
            ends = {key: consumer.get_watermark_offsets(TopicPartition(*key), timeout=5)[1] for key in keys}
            return gauges.kafka(self.group, ends, committed, positions)
        except Exception:
            self.log.debug("lag figures of %s not sent", self.topics, exc_info=True)
            return None

    async def run(self) -> AsyncIterator[TriggerEvent]:
        failures = 0
        check_every = max(0.01, min(5.0, self.redelivery_seconds / 4)) if self.redelivery_seconds > 0 else 5.0
        while True:
            try:
                self._consumer = await sync_to_async(self._open)()
                await self._until_group_free()
                assigned = await sync_to_async(self._assign)(self._consumer, set())
                refreshed = checked = time.monotonic()
                while True:
                    records = await sync_to_async(self.gather)()
                    failures = 0
                    if records:
                        yield BatchEvent({payload.SOURCE: payload.KAFKA_BATCH, payload.GROUP_ID: self.group,
                                            payload.RECORDS: records})
                    if time.monotonic() - refreshed > self.partition_refresh_seconds:
                        await self._until_group_free()
                        assigned = await sync_to_async(self._assign)(self._consumer, assigned)
                        refreshed = time.monotonic()
                    if time.monotonic() - checked >= check_every:
                        await sync_to_async(self.redeliver)(time.monotonic())
                        checked = time.monotonic()
                    if self.gauge_seconds > 0 and (self._gauged_at is None
                                                   or time.monotonic() - self._gauged_at >= self.gauge_seconds):
                        self._gauged_at = time.monotonic()
                        await sync_to_async(self.gauge)()
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
        self._next.clear()
        self._records_end.clear()
        self._known_committed.clear()
        self._kept_alive_at = None
        self._assigned = set()
        if consumer is not None:
            try:
                await sync_to_async(consumer.close)()
            except Exception:
                log.warning("closing the Kafka consumer failed", exc_info=True)
