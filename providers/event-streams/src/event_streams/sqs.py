"""Acknowledging SQS messages from a run: delete by receipt handle, change visibility, send with attributes.

Every call goes in batches of 10 (SQS's limit) through ``SqsHook``; sends also in batches of at most 256 KiB.
``handles`` are ``(message_id, receipt_handle)`` pairs: the id is only for the log. A message sent is ``(id, body,
attributes)``: each attribute a String value, or a ``(data type, value)`` pair (``Number``, ``String.custom``...).
``safe_text`` makes any text (a dead letter's reason, say) acceptable as an SQS message body or attribute value. A
FIFO queue (``.fifo``) gets each message in a group of its own, deduplicated by its id (``fifo_fields``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from event_streams import schema

log = logging.getLogger(__name__)

BATCH = 10
MAX_BATCH_BYTES = 256 * 1024  # SQS: a message, and a whole SendMessageBatch request, at most this many bytes
# The characters SQS accepts in a body or a string attribute (XML 1.0's): anything else is refused with
# InvalidMessageContents / InvalidParameterValue.
_REFUSED = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def safe_text(value: str, limit: int) -> str:
    """``value`` with each character SQS refuses written as an escape (``\\x07``, ``\\udc80``), cut to ``limit``
    characters (the last one then ``…``)."""
    escaped = _REFUSED.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                           else f"\\u{ord(m.group()):04x}", value)
    return escaped if len(escaped) <= limit else escaped[: max(0, limit - 1)] + "…"


AttributeValue = str | tuple[str, str]  # a String attribute's value, or (data type, value) of any string-valued type


def typed(value: AttributeValue) -> tuple[str, str]:
    """``(data type, value)`` of an attribute: a plain string is a ``String``."""
    return ("String", value) if isinstance(value, str) else value


def _attribute(value: AttributeValue) -> dict[str, str]:
    data_type, text = typed(value)
    return {"DataType": data_type, "StringValue": text}


def message_bytes(body: str, attributes: Mapping[str, AttributeValue]) -> int:
    """What SQS counts of a message: the body and each attribute's name, type and value, in UTF-8 bytes."""
    return len(body.encode("utf-8", "surrogatepass")) + sum(
        len(k.encode("utf-8", "surrogatepass")) + sum(len(p.encode("utf-8", "surrogatepass")) for p in typed(v))
        for k, v in attributes.items())


_clients: dict[tuple[int, str | None, str | None], Any] = {}


def client(aws_conn_id: str | None = "aws_default", region_name: str | None = None) -> Any:
    """The connection's SQS client, made once per process (a task used to make three). Keyed by PID too: a forked
    child makes its own rather than share its parent's sockets.

    Made from ``SqsHook``'s session, endpoint and botocore config (its credentials, role and region handling), not by
    ``SqsHook.get_conn()``: that one also names its caller in the User-Agent by walking the call stack with
    ``inspect.stack()``, which reads the source file of every frame (0.12 s of the 0.23 s it takes in a task, the
    largest part of a lone request's time in its task)."""
    key = (os.getpid(), aws_conn_id, region_name)
    if key not in _clients:
        from airflow.providers.amazon.aws.hooks.sqs import SqsHook

        hook = SqsHook(aws_conn_id=aws_conn_id, region_name=region_name)
        _clients[key] = hook.get_session(region_name=region_name).client(
            "sqs", endpoint_url=hook.conn_config.get_service_endpoint_url(service_name="sqs"), config=hook.config,
            verify=hook.verify)
    return _clients[key]


def _batches(items: Sequence[Any]) -> list[list[Any]]:
    return schema.chunked(items, BATCH)


def delete_messages(queue_url: str, handles: Sequence[tuple[str, str]], *, aws_conn_id: str | None = "aws_default",
                    region_name: str | None = None) -> int:
    """Delete messages by receipt handle; returns how many were deleted. A handle no longer valid (the message was
    received anew) is logged, not raised: the message comes back and the idempotent sinks absorb it."""
    if not handles:
        return 0
    sqs = client(aws_conn_id, region_name)
    deleted = 0
    for batch in _batches(handles):
        entries = [{"Id": str(i), "ReceiptHandle": rh} for i, (_, rh) in enumerate(batch)]
        response = sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries)
        deleted += len(response.get("Successful", []))
        for failure in response.get("Failed", []):
            log.warning("message %s: not deleted (%s: %s); it will be redelivered and deduplicated",
                        batch[int(failure["Id"])][0], failure.get("Code"), failure.get("Message"))
    return deleted


def change_visibility(queue_url: str, handles: Sequence[tuple[str, str]], seconds: int, *,
                      aws_conn_id: str | None = "aws_default", region_name: str | None = None) -> int:
    """Keep messages invisible for ``seconds`` more; returns how many changed (deleted or re-received: skipped)."""
    if not handles:
        return 0
    sqs = client(aws_conn_id, region_name)
    changed = 0
    for batch in _batches(handles):
        entries = [{"Id": str(i), "ReceiptHandle": rh, "VisibilityTimeout": seconds} for i, (_, rh) in enumerate(batch)]
        response = sqs.change_message_visibility_batch(QueueUrl=queue_url, Entries=entries)
        changed += len(response.get("Successful", []))
        for failure in response.get("Failed", []):
            log.warning("message %s: visibility not changed (%s)", batch[int(failure["Id"])][0], failure.get("Code"))
    return changed


Message = tuple[str, str, Mapping[str, AttributeValue]]  # (id, body, attributes)


def send_batches(messages: Sequence[Message]) -> list[list[Message]]:
    """Batches of at most 10 messages and ``MAX_BATCH_BYTES``, in order (a message over it goes alone)."""
    batches: list[list[Message]] = []
    size = 0
    for m in messages:
        n = message_bytes(m[1], m[2])
        if not batches or len(batches[-1]) >= BATCH or size + n > MAX_BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(m)
        size += n
    return batches


def fifo_fields(queue_url: str, message_id: str) -> dict[str, str]:
    """What a send to a FIFO queue must carry: ``MessageGroupId`` (each message its own group: no order between
    them, none held behind another) and ``MessageDeduplicationId`` (from the id: a re-send within SQS's 5-minute
    window is dropped); nothing for a standard queue."""
    if not queue_url.endswith(".fifo"):
        return {}
    digest = hashlib.sha256(message_id.encode("utf-8", "surrogatepass")).hexdigest()
    return {"MessageGroupId": digest[:128], "MessageDeduplicationId": digest}


class SendFailed(RuntimeError):
    """SQS did not take every message of a send; ``sent`` are the ids of those it did take before it failed, so that
    a caller marks them done and a retry sends only the rest."""

    def __init__(self, message: str, sent: Sequence[str]) -> None:
        super().__init__(message)
        self.sent = list(sent)


def send_messages(queue_url: str, messages: Sequence[Message], *, aws_conn_id: str | None = "aws_default",
                  region_name: str | None = None) -> list[tuple[str, str]]:
    """Send ``(id, body, attributes)`` triples; returns ``(id, SQS's reason)`` of each one SQS refused for
    its content (a sender fault: the others are sent all the same). A failure on SQS's side, or of the call, raises
    ``SendFailed`` naming the messages sent before it."""
    if not messages:
        return []
    sqs = client(aws_conn_id, region_name)
    refused: list[tuple[str, str]] = []
    sent: list[str] = []
    for batch in send_batches(messages):
        entries = [
            {
                "Id": str(i),
                "MessageBody": body,
                "MessageAttributes": {k: _attribute(v) for k, v in attrs.items()},
                **fifo_fields(queue_url, message_id),
            }
            for i, (message_id, body, attrs) in enumerate(batch)
        ]
        try:
            response = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        except Exception as exc:
            raise SendFailed(f"sending to {queue_url} failed after {len(sent)} message(s): {exc}", sent) from exc
        sent += [batch[int(s["Id"])][0] for s in response.get("Successful", [])]
        failed = response.get("Failed", [])
        if any(not f.get("SenderFault", True) for f in failed):
            raise SendFailed(f"SQS failed to take {len(failed)} message(s) to {queue_url}: {failed}", sent)
        refused += [(batch[int(f["Id"])][0], f"{f.get('Code')}: {f.get('Message')}") for f in failed]
    return refused
