"""Acknowledging SQS messages from a run: delete by receipt handle, change visibility, send with attributes.

Every call goes in batches of 10 (SQS's limit) through ``SqsHook``. ``handles`` are ``(message_id, receipt_handle)``
pairs: the id is only for the log.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

BATCH = 10


_clients: dict[tuple[int, str | None, str | None], Any] = {}


def client(aws_conn_id: str | None = "aws_default", region_name: str | None = None) -> Any:
    """The connection's SQS client, made once per process (a boto3 client takes 0.05-0.2 s of CPU to make, and a task
    used to make three). Keyed by PID too: a forked child makes its own rather than share its parent's sockets."""
    key = (os.getpid(), aws_conn_id, region_name)
    if key not in _clients:
        from airflow.providers.amazon.aws.hooks.sqs import SqsHook

        _clients[key] = SqsHook(aws_conn_id=aws_conn_id, region_name=region_name).get_conn()
    return _clients[key]


def _batches(items: Sequence[Any]) -> list[Sequence[Any]]:
    return [items[i : i + BATCH] for i in range(0, len(items), BATCH)]


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


def send_messages(queue_url: str, messages: Sequence[tuple[str, str, Mapping[str, str]]], *,
                  aws_conn_id: str | None = "aws_default", region_name: str | None = None) -> None:
    """Send ``(id, body, string attributes)`` triples; raise if SQS refused any."""
    if not messages:
        return
    sqs = client(aws_conn_id, region_name)
    for batch in _batches(messages):
        entries = [
            {
                "Id": str(i),
                "MessageBody": body,
                "MessageAttributes": {k: {"DataType": "String", "StringValue": v} for k, v in attrs.items()},
            }
            for i, (_, body, attrs) in enumerate(batch)
        ]
        response = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        if response.get("Failed"):
            raise RuntimeError(f"SQS refused {len(response['Failed'])} message(s) to {queue_url}: {response['Failed']}")
