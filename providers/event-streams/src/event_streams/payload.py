"""The trigger -> DAG contract: the keys of the asset-event payloads and the JSON-safe form of a Kafka record.

SQS: ``{"status": "success", "message_batch": [{"MessageId", "ReceiptHandle", "Body", "MessageAttributes"}, ...]}``
(the shape of ``SqsSensorTrigger``; only String and Number attributes, and only when the message has any); a body
over the limit is replaced by ``BodyOmittedBytes``, plus ``BodyKeptIn`` when the trigger kept it in the events
database (``event_streams.kept_bodies``). Kafka:
``{"source": "kafka_batch", "group_id": "<consumer group>", "records": [kafka_record(...), ...]}``.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

MESSAGE_BATCH = "message_batch"  # SQS payload: the list of messages
SOURCE = "source"  # Kafka payload: what kind of payload it is ...
KAFKA_BATCH = "kafka_batch"  # ... for a batch of records
GROUP_ID = "group_id"  # Kafka payload: the consumer group whose committed offsets the trigger read from
RECORDS = "records"  # Kafka payload: the list of records (each a ``kafka_record`` dict)
BODY_OMITTED_BYTES = "BodyOmittedBytes"  # SQS message: the size of a body left out of the event
BODY_KEPT_IN = "BodyKeptIn"  # SQS message: the table of the events database holding the body left out ...
KEPT_BODIES_TABLE = "kept_bodies"  # ... its value (``event_streams.kept_bodies``)
MESSAGE_ATTRIBUTES = "MessageAttributes"  # SQS message: {name: {"DataType", "StringValue"}}, String/Number only
CARRIED_ATTRIBUTE_TYPES = ("String", "Number")  # SQS attribute types carried in events (Binary ones are not)

DEFAULT_MAX_BODY_BYTES = 256 * 1024  # SQS's own message size limit
MAX_TIMESTAMP_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: a broker timestamp past it is left out


def sqs_attributes(raw: Any) -> dict[str, dict[str, str]]:
    """The String and Number attributes (custom types such as ``Number.int`` included) of an SQS message's
    ``MessageAttributes``, as ``{name: {"DataType", "StringValue"}}``; Binary ones and anything malformed are left
    out."""
    if not isinstance(raw, Mapping):
        return {}
    out: dict[str, dict[str, str]] = {}
    for name, attr in raw.items():
        if not isinstance(attr, Mapping):
            continue
        data_type, value = attr.get("DataType"), attr.get("StringValue")
        if (isinstance(name, str) and isinstance(data_type, str) and isinstance(value, str)
                and data_type.split(".", 1)[0] in CARRIED_ATTRIBUTE_TYPES):
            out[name] = {"DataType": data_type, "StringValue": value}
    return out


def sqs_attribute_bytes(attributes: Any) -> int:
    """What SQS counts of ``sqs_attributes``' answer: each name, data type and value, in UTF-8 bytes."""
    return sum(len(name.encode("utf-8", "surrogatepass")) + len(a["DataType"].encode("utf-8", "surrogatepass"))
               + len(a["StringValue"].encode("utf-8", "surrogatepass"))
               for name, a in sqs_attributes(attributes).items())


def _text_or_b64(value: bytes | None) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    try:
        return value.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, base64.b64encode(value).decode("ascii")


def _header(key: str, value: bytes | None) -> dict[str, str]:
    text, b64 = _text_or_b64(value) if isinstance(value, bytes) else (value, None)
    header = {"key": key, "value": text, "value_b64": b64}
    return {k: v for k, v in header.items() if v is not None}


def header_bytes(headers: Any) -> int:
    """The bytes ``kafka_record``'s ``headers`` take in an event (keys and values, base64 text as it rides)."""
    return sum(len(str(h.get("key", "")).encode("utf-8")) + len(str(h.get("value") or h.get("value_b64") or "")
                                                                 .encode("utf-8"))
               for h in headers or () if isinstance(h, dict))


def kafka_record(message: Any, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, read_from: int | None = None
                 ) -> dict[str, Any]:
    """One consumed ``confluent_kafka.Message`` as a JSON-safe dict; ``None`` values are left out.

    Keys: ``source`` ("kafka"), ``message_id`` (``topic/partition/offset``), ``body`` (UTF-8 text) or ``body_b64``
    (other bytes) or ``body_omitted_bytes`` (over ``max_body_bytes``), ``topic``, ``partition``, ``offset``,
    ``key`` (UTF-8 text) or ``key_b64`` (other bytes), ``headers`` (in order, duplicates kept: ``{"key", "value"}``
    with UTF-8 text, ``{"key", "value_b64"}`` with other bytes, ``{"key"}`` for a null value),
    ``broker_timestamp_ms`` (left out unless in year 1970-9999),
    ``read_from`` (given by the trigger when the consumer's read started before ``offset``: the offsets in between
    hold nothing a consumer receives).
    """
    value: bytes | None = message.value()
    body: str | None = None
    body_b64: str | None = None
    omitted = len(value) if value is not None and len(value) > max_body_bytes else None
    if value is not None and omitted is None:
        body, body_b64 = _text_or_b64(value)
    raw_key = message.key()
    key, key_b64 = _text_or_b64(raw_key) if isinstance(raw_key, bytes) else (raw_key, None)
    headers = [_header(k, v) for k, v in (message.headers() or ())]
    _, timestamp_ms = message.timestamp()
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    record = {
        "source": "kafka",
        "message_id": f"{topic}/{partition}/{offset}",
        "body": body,
        "body_b64": body_b64,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": key,
        "key_b64": key_b64,
        "headers": headers or None,
        "broker_timestamp_ms": timestamp_ms if timestamp_ms and 0 < timestamp_ms <= MAX_TIMESTAMP_MS else None,
        "body_omitted_bytes": omitted,
        "read_from": read_from if read_from is not None and 0 <= read_from < offset else None,
    }
    return {k: v for k, v in record.items() if v is not None}


def describe(event_payload: Any) -> str:
    """One short line naming what an event carries, never its content: a Kafka batch by its partitions' offset ranges,
    an SQS batch by its count and first and last message ids; anything else by its type."""
    if isinstance(event_payload, Mapping) and event_payload.get(SOURCE) == KAFKA_BATCH:
        records = event_payload.get(RECORDS) or []
        ranges: dict[str, list[int]] = {}
        for r in records:
            if isinstance(r, Mapping) and isinstance(r.get("offset"), int):
                span = ranges.setdefault(f"{r.get('topic')}/{r.get('partition')}", [r["offset"], r["offset"]])
                span[0], span[1] = min(span[0], r["offset"]), max(span[1], r["offset"])
        shown = ", ".join(f"{k}@{a}..{b}" for k, (a, b) in sorted(ranges.items())[:8])
        more = f" and {len(ranges) - 8} more partitions" if len(ranges) > 8 else ""
        return f"{len(records)} Kafka records (group {event_payload.get(GROUP_ID)}): {shown}{more}"
    if isinstance(event_payload, Mapping) and MESSAGE_BATCH in event_payload:
        batch = event_payload.get(MESSAGE_BATCH) or []
        ids = [str(m.get("MessageId"))[:80] for m in batch if isinstance(m, Mapping)]
        named = f": {ids[0]} .. {ids[-1]}" if len(ids) > 1 else (f": {ids[0]}" if ids else "")
        return f"{len(batch)} SQS messages{named}"
    return f"a payload of type {type(event_payload).__name__}"
