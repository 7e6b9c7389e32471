"""Inference execution: answer every request of a run with one model call, store, then reply.

Order of effects: predictions are committed first (keyed on ``request_id``), then one reply per request is
sent, then (in the DAG) the request messages are deleted. A replay finds the stored prediction and sends the same
reply again (same ``correlation_id``) instead of predicting anew, so a redelivered request never gets two
different answers. A request_id reused with other features is dead-lettered, decided in the transaction that
stores the predictions, so concurrent runs agree; a model value that is not a probability is never stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timezone
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from event_streams.pipelines import db
from event_streams.pipelines.messages import CONTENT_ERRORS, Envelope, PoisonMessage, dead_letter_row, decode
from include.inference_execution import tables
from include.inference_execution.model import Predictor, as_probability, check_answer, label_for
from include.inference_execution.schemas import InferenceReply, InferenceRequest

log = logging.getLogger(__name__)

PIPELINE = "inference_execution"
ReplySender = Callable[[Sequence[InferenceReply]], None]


@dataclass
class InferenceOutcome:
    requests: int = 0
    predicted: int = 0
    reused: int = 0
    replies: int = 0
    already_replied: int = 0  # redelivered requests whose reply had been sent: deleted without a second one
    dead_letters: list[dict[str, object]] = field(default_factory=list)
    message_ids: list[str] = field(default_factory=list)  # the messages answered (not dead-lettered)

    def as_dict(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "predicted": self.predicted,
            "reused": self.reused,
            "replies": self.replies,
            "already_replied": self.already_replied,
            "dead_lettered": [d["message_id"] for d in self.dead_letters],
        }


@dataclass
class _Request:
    """The messages of the batch that carry one request_id with the same features (one answer for all of them)."""

    request: InferenceRequest
    fingerprint: str
    envelopes: list[Envelope]


def _stored(conn: Connection, request_ids: list[str]) -> dict[str, dict[str, Any]]:
    t = tables.predictions
    found: dict[str, dict[str, Any]] = {}
    for chunk in db.chunked(request_ids):
        for row in conn.execute(select(t).where(t.c.request_id.in_(chunk))).mappings():
            found[row["request_id"]] = dict(row)
    return found


def _decode(env: Envelope) -> tuple[InferenceRequest, str]:
    """The request (``submitted_at`` in UTC) and its features' fingerprint, or ``PoisonMessage``."""
    req = decode(env, InferenceRequest)
    try:
        submitted_at = req.submitted_at.astimezone(timezone.utc)
    except OverflowError:
        raise PoisonMessage(
            env.message_id,
            f"submitted_at {req.submitted_at.isoformat()} is outside the range of representable UTC times",
        ) from None
    return req.model_copy(update={"submitted_at": submitted_at}), req.features.fingerprint()


def _dead_letter(outcome: InferenceOutcome, envelopes: Sequence[Envelope], reason: str) -> None:
    for env in envelopes:
        log.error("Dead-lettering message %s: %s", env.message_id, reason)
        outcome.dead_letters.append(dead_letter_row(env, reason))


def _mark_replied(engine: Engine, request_ids: list[str]) -> None:
    if request_ids:
        t = tables.predictions
        with engine.begin() as conn:
            conn.execute(update(t).where(t.c.request_id.in_(request_ids)).values(replied_at=db.utcnow()))


def answer_requests(
    envelopes: Sequence[Envelope],
    engine: Engine,
    predictor: Predictor,
    send_replies: ReplySender,
    *,
    after_effect: Callable[[str], None] | None = None,
) -> InferenceOutcome:
    """Predict (once per request_id), store, then reply. ``after_effect("inference.after_store")`` is called once the
    predictions are committed, before any reply is sent (the fault suite's hook)."""
    outcome = InferenceOutcome()
    # request_id -> its variants in arrival order, by features fingerprint; the first one is predicted if need be
    variants: dict[str, dict[str, _Request]] = {}
    for env in envelopes:
        try:
            req, fingerprint = _decode(env)
        except CONTENT_ERRORS as exc:
            if isinstance(exc, PoisonMessage):
                _dead_letter(outcome, [env], exc.reason)
            else:
                _dead_letter(outcome, [env], f"request {env.message_id}: {type(exc).__name__}: {exc}")
            continue
        same = variants.setdefault(req.request_id, {}).setdefault(fingerprint, _Request(req, fingerprint, []))
        same.envelopes.append(env)

    # Requests stored before are not predicted again (stored rows never change); which variant a stored row answers
    # is decided below, in the transaction that stores the new predictions.
    with engine.connect() as conn:
        known = set(_stored(conn, sorted(variants)))
    todo = [(rid, next(iter(vs.values()))) for rid, vs in variants.items() if rid not in known]
    answer = check_answer(predictor.predict_proba([r.request.features for _, r in todo]) if todo else [], len(todo))
    now = db.utcnow()
    new_rows = []
    for (rid, r), value in zip(todo, answer, strict=True):
        p = as_probability(value)
        if p is None:
            reason = f"model answered {value!r:.100} for request {rid}: not a probability in [0, 1]"
            _dead_letter(outcome, r.envelopes, reason)
            continue
        new_rows.append(
            {
                "request_id": rid,
                "message_id": r.envelopes[0].message_id,
                "label": label_for(p),
                "probability": p,
                "model_version": predictor.version,
                "predicted_at": now,
                "submitted_at": r.request.submitted_at,
                "features_sha256": r.fingerprint,
            }
        )

    answered: dict[str, _Request] = {}  # request_id -> the variant its stored prediction answers
    with engine.begin() as conn:
        inserted = db.insert_ignore(conn, tables.predictions, new_rows)
        # What is stored now, whoever stored it (this run or a concurrent one that won the insert race).
        answers = _stored(conn, sorted(variants))
        for rid, vs in variants.items():
            row = answers.get(rid)
            first = next(iter(vs.values()))
            if row is None:  # the first variant's model value was invalid (dead-lettered above)
                winner = first.fingerprint
            else:  # a row stored before fingerprints were kept answers the first variant
                winner = row["features_sha256"] or first.fingerprint
            for fingerprint, r in vs.items():
                if fingerprint != winner:
                    reason = f"duplicate request_id {rid}: already used with different features"
                    _dead_letter(outcome, r.envelopes, reason)
                elif row is not None:
                    answered[rid] = r
        db.record_dead_letters(conn, PIPELINE, outcome.dead_letters)
    if after_effect is not None:
        after_effect("inference.after_store")

    replies = [
        InferenceReply(
            correlation_id=rid,
            label=answers[rid]["label"],
            probability=answers[rid]["probability"],
            model_version=answers[rid]["model_version"],
            predicted_at=db.as_utc(answers[rid]["predicted_at"]),
        )
        for rid in answered
        if answers[rid].get("replied_at") is None  # a redelivery of a request already replied to: no second reply
    ]
    if replies:
        try:
            send_replies(replies)
        except Exception as exc:  # the replies sent before it failed (``exc.sent``) are not sent again by the retry
            _mark_replied(engine, list(getattr(exc, "sent", [])))
            raise
        _mark_replied(engine, [r.correlation_id for r in replies])
    outcome.requests = len(answered)
    outcome.predicted = min(inserted, len(answered))
    outcome.reused = len(answered) - outcome.predicted
    outcome.replies = len(replies)
    outcome.already_replied = len(answered) - len(replies)
    outcome.message_ids = [env.message_id for r in answered.values() for env in r.envelopes]
    log.info("%d requests: %d predicted, %d answered from stored predictions (%d of them already replied to),"
             " %d dead-lettered", outcome.requests, outcome.predicted, outcome.reused, outcome.already_replied,
             len(outcome.dead_letters))
    return outcome
