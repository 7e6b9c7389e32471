"""One envelope for every message a pipeline receives, whatever the broker (docs/delivery-guarantees.md).

``envelopes_from_asset_events`` reads every message of every coalesced asset event once (newest SQS receipt
handle kept); ``decode`` parses a body into a pydantic model or raises ``PoisonMessage`` (the message is
dead-lettered with its reason, the run goes on).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from event_streams import payload
from event_streams.pipelines import config

# SQS's own limit by default; larger Kafka records are refused the same way. A trigger leaves the body of a larger
# message out of its asset event (``body_omitted_bytes``), so it never rides in one; the run dead-letters it. The
# streaming SQS trigger first keeps such a body in the events database (``body_kept_in``: ``kept_bodies``), and
# ``db.record_dead_letters`` and the DLQ copy (``sqs_source.settle_sqs``) take it from there.
MAX_BODY_BYTES = config.MAX_MESSAGE_BYTES

# What a message's content can raise in pure code (parsing, validation, arithmetic on its values, lookups by its
# fields). Caught per message and turned into that message's dead letter; anything else (database, broker, storage
# outages: SQLAlchemyError, ClientError, KafkaException, OSError) is a system fault and fails the task.
CONTENT_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, ArithmeticError, LookupError, RecursionError)

Source = Literal["sqs", "kafka", "manual"]
# Airflow 3.3's KafkaSharedStreamTrigger (the benchmark's "shared" baseline) gives a record's value and nothing else:
# no topic, partition or offset. Such a message's id is this prefix and the SHA-256 of its value.
SHARED_STREAM_ID = "sha256:"
M = TypeVar("M", bound=BaseModel)


class KafkaHeader(BaseModel):
    """One Kafka record header: ``value`` (UTF-8 text) or ``value_b64`` (other bytes); neither for a null value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    value: str | None = None
    value_b64: str | None = None


class SqsAttribute(BaseModel):
    """One SQS message attribute of a string-valued type (``String``, ``Number``, or a custom ``Number.x``...)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    data_type: str
    value: str


class Envelope(BaseModel):
    """A received message: identity, raw body and what is needed to acknowledge it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: Source
    message_id: str
    body: str | None = None
    body_b64: str | None = None  # set instead of ``body`` when the bytes are not valid UTF-8
    receipt_handle: str | None = None  # SQS: needed to delete the message once its effect is durable
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    key: str | None = None
    key_b64: str | None = None  # set instead of ``key`` when the key's bytes are not valid UTF-8
    headers: tuple[KafkaHeader, ...] | None = None  # Kafka: the record's headers, in order
    broker_timestamp_ms: int | None = None
    read_from: int | None = None  # Kafka: the consumer's read started here; earlier offsets hold no record
    group_id: str | None = None  # Kafka, streaming trigger: the consumer group whose offsets the record counts in
    body_omitted_bytes: int | None = None  # the body was over MAX_BODY_BYTES and left out by the trigger
    body_kept_in: str | None = None  # SQS: the events-database table where the trigger kept that body
    sqs_attributes: tuple[SqsAttribute, ...] | None = None  # SQS: the String/Number message attributes, in order

    @classmethod
    def from_sqs(cls, message: Mapping[str, Any]) -> Envelope:
        return cls(
            source="sqs",
            message_id=str(message["MessageId"]),
            body=message.get("Body"),
            receipt_handle=message.get("ReceiptHandle"),
            body_omitted_bytes=message.get(payload.BODY_OMITTED_BYTES),
            body_kept_in=message.get(payload.BODY_KEPT_IN),
            sqs_attributes=tuple(SqsAttribute(name=k, data_type=a["DataType"], value=a["StringValue"])
                                 for k, a in payload.sqs_attributes(message.get(payload.MESSAGE_ATTRIBUTES)).items())
            or None,
        )


class PoisonMessage(ValueError):
    """A message that can never be processed: it goes to the dead letters, with its reason."""

    def __init__(self, message_id: str, reason: str) -> None:
        super().__init__(f"message {message_id}: {reason}")
        self.message_id = message_id
        self.reason = reason


def kafka_message_to_event(message: Any) -> dict[str, Any]:
    """``apply_function`` for the Kafka watcher: the whole record as a JSON-safe event payload.

    It never returns a falsy value: ``AwaitMessageTrigger`` would otherwise commit past the record and sleep
    ``poll_interval``, dropping it silently. Validation happens in the DAG, where a bad record is dead-lettered
    with its reason and is visible in the task log.
    """
    return Envelope.model_validate(payload.kafka_record(message, MAX_BODY_BYTES)).model_dump(exclude_none=True)


def _payload_envelopes(event_payload: Any) -> list[Envelope]:
    if isinstance(event_payload, Mapping) and payload.MESSAGE_BATCH in event_payload:  # both SQS triggers
        return [Envelope.from_sqs(m) for m in event_payload[payload.MESSAGE_BATCH]]
    if isinstance(event_payload, Mapping) and event_payload.get(payload.SOURCE) == "kafka":  # AwaitMessageTrigger
        return [Envelope.model_validate(event_payload)]
    if isinstance(event_payload, Mapping) and event_payload.get(payload.SOURCE) == payload.KAFKA_BATCH:  # streaming
        group = event_payload.get(payload.GROUP_ID)
        return [Envelope.model_validate({**r, payload.GROUP_ID: group} if group and isinstance(r, Mapping) else r)
                for r in event_payload[payload.RECORDS]]
    if isinstance(event_payload, str):  # Airflow 3.3's KafkaSharedStreamTrigger: the record's value, nothing else
        digest = hashlib.sha256(event_payload.encode("utf-8", "surrogatepass")).hexdigest()
        return [Envelope(source="kafka", message_id=f"{SHARED_STREAM_ID}{digest}", body=event_payload)]
    raise ValueError(f"unrecognised trigger payload (neither an SQS batch nor a Kafka record): {event_payload!r:.200}")


def envelopes_from_asset_events(events: Iterable[Any]) -> list[Envelope]:
    """Every message carried by the run's triggering asset events, in arrival order, each message once.

    ``events`` are ``AssetEventDagRunReference`` objects (anything with ``.extra``) or plain ``extra`` dicts.
    A message seen twice (redelivered after its visibility timeout) keeps its first position and its *last*
    receipt handle.
    """
    by_id: dict[str, Envelope] = {}
    for event in events:
        extra = event if isinstance(event, Mapping) else event.extra
        if not extra or "payload" not in extra:
            continue  # an asset event not emitted by a watcher (e.g. a manual asset event) carries no message
        for envelope in _payload_envelopes(extra["payload"]):
            by_id[envelope.message_id] = envelope  # dict keeps the first insertion position
    return list(by_id.values())


def envelopes_from_conf(run_id: str, messages: Sequence[Any]) -> list[Envelope]:
    """Messages given by hand in a manual run's conf (``{"messages": [...]}``), e.g. to replay a dead letter."""
    return [
        Envelope(
            source="manual",
            message_id=f"manual:{run_id}:{i}",
            body=m if isinstance(m, str) else json.dumps(m),
        )
        for i, m in enumerate(messages)
    ]


def raw_bytes(envelope: Envelope) -> bytes:
    """The message body as the broker delivered it."""
    if envelope.body_b64 is not None:
        return base64.b64decode(envelope.body_b64)
    return (envelope.body or "").encode("utf-8")


def raw_key(envelope: Envelope) -> bytes | None:
    """The Kafka record's key as the broker delivered it (``None`` when it had none)."""
    if envelope.key_b64 is not None:
        return base64.b64decode(envelope.key_b64)
    return envelope.key.encode("utf-8") if envelope.key is not None else None


def raw_headers(envelope: Envelope) -> list[tuple[str, bytes | None]]:
    """The Kafka record's headers as the broker delivered them, in order (duplicates kept)."""
    out: list[tuple[str, bytes | None]] = []
    for h in envelope.headers or ():
        value = base64.b64decode(h.value_b64) if h.value_b64 is not None else h.value
        out.append((h.key, value.encode("utf-8") if isinstance(value, str) else value))
    return out


def dead_letter_row(envelope: Envelope, reason: str) -> dict[str, Any]:
    """A ``dead_letters`` row: the source message id, the reason and the original body (base64 if not UTF-8).

    An SQS body left out of the event (``body_omitted_bytes``) is ``None`` here; ``db.record_dead_letters`` fills it
    in from where the trigger kept it (``body_kept_in``), for every pipeline alike."""
    body = envelope.body if envelope.body_b64 is None else envelope.body_b64
    if body is not None and "\x00" in body:  # PostgreSQL text cannot hold NUL: keep such a body as base64
        body = base64.b64encode(body.encode("utf-8", "surrogatepass")).decode("ascii")
    return {"message_id": envelope.message_id, "source": envelope.source, "reason": reason.replace("\x00", "\\x00"),
            "body": body}


def decode(envelope: Envelope, model: type[M]) -> M:
    """Parse and validate a message body, or raise ``PoisonMessage`` with a reason a person can act on."""
    mid = envelope.message_id
    if envelope.body_omitted_bytes is not None:
        raise PoisonMessage(mid, f"body is {envelope.body_omitted_bytes} bytes, over the {MAX_BODY_BYTES}-byte limit")
    if envelope.body_b64 is not None:
        raise PoisonMessage(mid, "body is not valid UTF-8")
    body = envelope.body or ""
    if not body.strip():
        raise PoisonMessage(mid, "empty body")
    size = len(body.encode("utf-8"))
    if size > MAX_BODY_BYTES:
        raise PoisonMessage(mid, f"body is {size} bytes, over the {MAX_BODY_BYTES}-byte limit")
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise PoisonMessage(mid, f"body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise PoisonMessage(mid, "body is JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer literal longer than Python's int-to-str digit limit
        raise PoisonMessage(mid, f"body is not usable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PoisonMessage(mid, f"body is JSON {type(data).__name__}, expected an object")
    try:
        # JSON mode: strict models still accept ISO-8601 strings for datetimes, but not "12" for 12.
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise PoisonMessage(mid, f"does not match {model.__name__}: {validation_summary(exc)}") from None


def validation_summary(exc: ValidationError) -> str:
    """``field: problem; field: problem`` from a pydantic error, short enough for a log line or a header."""
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
