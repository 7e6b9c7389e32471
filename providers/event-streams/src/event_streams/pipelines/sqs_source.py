"""How a DAG fed by an SQS queue takes, holds, settles and gives back its messages (``SqsSource``).

A task holds its messages invisible while it works (``heartbeat.Holding``); after its effects are committed, bad
messages go to the dead-letter queue with their original body and attributes (a stand-in when SQS refuses the copy),
then every message is deleted. The calls themselves are the provider's (``event_streams.sqs``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from event_streams.pipelines import config, db, metrics
from event_streams.pipelines.heartbeat import Holding
from event_streams.pipelines.messages import Envelope

log = logging.getLogger(__name__)


class SqsSource:
    """How a DAG fed by an SQS queue takes, settles and gives back its messages."""

    def __init__(self, queue_url: str, dlq_url: str) -> None:
        self.queue_url, self.dlq_url = queue_url, dlq_url
        self._holding = Holding()

    def take(self, envelopes: Sequence[Envelope], dag_id: str) -> list[Envelope]:
        """Every message is the run's. Marks them taken (``event_streams.taken_messages``): the streaming trigger
        kept them invisible until now (the run may have been queued), the task ``holding`` them does from now on."""
        if config.streaming():
            from event_streams import taken_messages

            taken_messages.mark(db.engine(), self.queue_url, [e.message_id for e in envelopes if e.source == "sqs"])
        return list(envelopes)

    def holding(self, envelopes: Sequence[Envelope]) -> AbstractContextManager[None]:
        """While the block runs (a task works on ``envelopes``), keep them invisible: extended to
        ``SQS_VISIBILITY_TIMEOUT`` now and every ``SQS_HEARTBEAT_SECONDS``, until settled or the block ends."""
        return self._holding.hold(envelopes, self._extend, config.SQS_HEARTBEAT_SECONDS)

    def held(self) -> list[Envelope] | None:
        """What this task process holds and has not settled (None: it held nothing)."""
        return self._holding.held()

    def _extend(self, envelopes: Sequence[Envelope]) -> None:
        extend_sqs_visibility(self.queue_url, envelopes, config.SQS_VISIBILITY_TIMEOUT)

    def settle(self, envelopes: Sequence[Envelope], dead_letters: Sequence[Mapping[str, Any]]) -> None:
        settle_sqs(self.queue_url, self.dlq_url, envelopes, dead_letters)
        self._holding.release(envelopes)
        metrics.settled_batch(envelopes, dead_letters)

    def give_back(self, envelopes: Sequence[Envelope]) -> None:
        """After a task failed for good: the messages it held (undeleted) come back after
        SQS_REDELIVERY_DELAY_SECONDS."""
        extend_sqs_visibility(self.queue_url, envelopes, config.SQS_REDELIVERY_DELAY_SECONDS)


def _handles(envelopes: Sequence[Envelope]) -> list[tuple[str, str]]:
    return [(e.message_id, e.receipt_handle) for e in envelopes if e.source == "sqs" and e.receipt_handle]


def extend_sqs_visibility(queue_url: str, envelopes: Sequence[Envelope], seconds: int) -> int:
    """Keep the run's messages invisible for ``seconds`` more (a message already deleted or re-received is skipped)."""
    from event_streams import sqs

    return sqs.change_visibility(queue_url, _handles(envelopes), seconds, aws_conn_id=config.AWS_CONN_ID)


def settle_sqs(
    queue_url: str, dlq_url: str, envelopes: Sequence[Envelope], dead_letters: Sequence[Mapping[str, Any]]
) -> None:
    """After the run's effects are committed: dead letters to the DLQ (body, original attributes, then reason and
    source id; see ``_dlq_copy``), then delete all.

    A body the trigger left out of the event and kept (``Envelope.body_kept_in``) is read back from the events
    database (one bounded query for the run's such dead letters) and sent like any other. No message's content can
    fail this: reasons are made acceptable to SQS (``sqs.safe_text``, 1,000 characters), batches are bounded by
    bytes, and a copy SQS cannot take (too large with its attributes, no body, or refused all the same) goes as a
    stand-in naming the message, its body kept in the ``dead_letters`` table (``body_kept_in``).
    """
    from event_streams import sqs

    if dead_letters:
        by_id = {e.message_id: e for e in envelopes}
        by_id |= _with_kept_bodies([by_id[d["message_id"]] for d in dead_letters if d["message_id"] in by_id])
        reasons = {d["message_id"]: str(d["reason"]) for d in dead_letters if d["message_id"] in by_id}
        copies = {m: _dlq_copy(queue_url, by_id[m], reason) for m, reason in reasons.items()}
        refused = dict(sqs.send_messages(dlq_url, list(copies.values()), aws_conn_id=config.AWS_CONN_ID))
        if refused:
            stand_ins = [_stand_in(queue_url, by_id[m], reasons[m]) for m in refused]
            still = sqs.send_messages(dlq_url, stand_ins, aws_conn_id=config.AWS_CONN_ID)
            log.error("SQS refused the dead-letter copies of %s (%s); sent stand-ins naming them instead (their "
                      "bodies are in dead_letters)%s", sorted(refused), sorted(set(refused.values()))[:3],
                      f"; refused again: {still}" if still else "")
    sqs.delete_messages(queue_url, _handles(envelopes), aws_conn_id=config.AWS_CONN_ID)


MAX_SQS_ATTRIBUTES = 10  # SQS: message attributes per message
Attributes = dict[str, str | tuple[str, str]]  # SQS attributes to send: a String value, or (data type, value)
DlqCopy = tuple[str, str, Attributes]  # (source message id, body, attributes), as sent


def _with_kept_bodies(envelopes: Sequence[Envelope]) -> dict[str, Envelope]:
    """The envelopes whose body the trigger kept (``body_kept_in``), with that body back in place (from the events
    database, by message id, in bounded queries); those whose body was not found are left out."""
    ids = [e.message_id for e in envelopes if e.body is None and e.body_kept_in]
    if not ids:
        return {}
    from event_streams import kept_bodies

    kept = kept_bodies.bodies(db.engine(), ids)
    return {e.message_id: e.model_copy(update={"body": kept[e.message_id]})
            for e in envelopes if e.message_id in kept and e.body is None}


def _ours(queue_url: str, envelope: Envelope, reason: str) -> Attributes:
    from event_streams import sqs

    return {"reason": sqs.safe_text(reason, 1000), "source_message_id": sqs.safe_text(envelope.message_id, 256),
            "source_queue": queue_url}


def _with_originals(envelope: Envelope, body: str, ours: Attributes) -> Attributes:
    """``ours``, then the message's original attributes in their order, each one while the copy keeps at most
    ``MAX_SQS_ATTRIBUTES`` attributes and SQS can take it (``sqs.MAX_BATCH_BYTES``); an original named like one of
    ours is dropped (ours win)."""
    from event_streams import sqs

    attributes: Attributes = dict(ours)
    for a in envelope.sqs_attributes or ():
        if len(attributes) >= MAX_SQS_ATTRIBUTES:
            break
        if a.name in attributes:
            continue
        candidate = {**attributes, a.name: (a.data_type, a.value)}
        if sqs.message_bytes(body, candidate) <= sqs.MAX_BATCH_BYTES:
            attributes = candidate
    return attributes


def _dlq_copy(queue_url: str, envelope: Envelope, reason: str) -> DlqCopy:
    """The copy of a dead letter for the DLQ: the original body when SQS can take it with our attributes, else a
    stand-in (``_stand_in``).

    Attributes: ours (``reason``, ``source_message_id``, ``source_queue``; and ``body_kept_in`` on a stand-in) win
    on a name clash; then the message's original String/Number attributes (``Envelope.sqs_attributes``), in their
    order, as many as fit: never more than 10 attributes in all (SQS's limit) and never over SQS's message size
    (``sqs.MAX_BATCH_BYTES``, body included): the body goes first, and an original that does not fit after it is
    left out.
    """
    from event_streams import sqs

    ours = _ours(queue_url, envelope, reason)
    body = envelope.body or ""
    if not body or sqs.message_bytes(body, ours) > sqs.MAX_BATCH_BYTES:
        return _stand_in(queue_url, envelope, reason)
    return envelope.message_id, body, _with_originals(envelope, body, ours)


def _stand_in(queue_url: str, envelope: Envelope, reason: str) -> DlqCopy:
    """A dead letter's copy without its body: the message id and where the body is kept (attributes as in
    ``_dlq_copy``, with ``body_kept_in``)."""
    size = envelope.body_omitted_bytes or len((envelope.body or "").encode("utf-8"))
    body = json.dumps({"dead_letter": envelope.message_id, "body_bytes": size, "body_kept_in": "dead_letters"})
    ours = {**_ours(queue_url, envelope, reason), "body_kept_in": "dead_letters"}
    return envelope.message_id, body, _with_originals(envelope, body, ours)


def send_sqs_messages(queue_url: str, messages: Sequence[tuple[str, str, Mapping[str, str]]]) -> None:
    """Send ``(id, body, string attributes)`` triples in batches of 10 and 256 KiB; raise ``sqs.SendFailed`` (naming
    the ids that were sent) if SQS refused or failed any."""
    from event_streams import sqs

    refused = sqs.send_messages(queue_url, messages, aws_conn_id=config.AWS_CONN_ID)
    if refused:
        ids = {m for m, _ in refused}
        raise sqs.SendFailed(f"SQS refused {len(refused)} message(s) to {queue_url}: {refused[:3]}",
                             [m[0] for m in messages if m[0] not in ids])
