"""The trigger -> DAG contract: the keys of the asset-event payloads and the JSON-safe form of a Kafka record.

SQS: ``{"status": "success", "message_batch": [{"MessageId", "ReceiptHandle", "Body"}, ...]}`` (the shape of
``SqsSensorTrigger``); a body over the limit is replaced by ``BodyOmittedBytes``. Kafka:
``{"source": "kafka_batch", "records": [kafka_record(...), ...]}``.
"""

from __future__ import annotations

import base64
from typing import Any

MESSAGE_BATCH = "message_batch"  # SQS payload: the list of messages
SOURCE = "source"  # Kafka payload: what kind of payload it is ...
KAFKA_BATCH = "kafka_batch"  # ... for a batch of records
RECORDS = "records"  # Kafka payload: the list of records (each a ``kafka_record`` dict)
BODY_OMITTED_BYTES = "BodyOmittedBytes"  # SQS message: the size of a body left out of the event

DEFAULT_MAX_BODY_BYTES = 256 * 1024  # SQS's own message size limit


def kafka_record(message: Any, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> dict[str, Any]:
    """One consumed ``confluent_kafka.Message`` as a JSON-safe dict; ``None`` values are left out.

    Keys: ``source`` ("kafka"), ``message_id`` (``topic/partition/offset``), ``body`` (UTF-8 text) or ``body_b64``
    (other bytes) or ``body_omitted_bytes`` (over ``max_body_bytes``), ``topic``, ``partition``, ``offset``,
    ``key``, ``broker_timestamp_ms``.
    """
    value: bytes | None = message.value()
    body: str | None = None
    body_b64: str | None = None
    omitted = len(value) if value is not None and len(value) > max_body_bytes else None
    if value is not None and omitted is None:
        try:
            body = value.decode("utf-8")
        except UnicodeDecodeError:
            body_b64 = base64.b64encode(value).decode("ascii")
    raw_key = message.key()
    key = raw_key.decode("utf-8", "replace") if isinstance(raw_key, bytes) else raw_key
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
        "broker_timestamp_ms": timestamp_ms if timestamp_ms and timestamp_ms > 0 else None,
        "body_omitted_bytes": omitted,
    }
    return {k: v for k, v in record.items() if v is not None}
