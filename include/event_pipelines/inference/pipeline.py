"""Inference execution: answer every request of a run with one model call, store, then reply.

Order of effects: predictions are committed first (keyed on ``request_id``), then one reply per request is
sent, then (in the DAG) the request messages are deleted. A replay finds the stored prediction and sends the same
reply again (same ``correlation_id``) instead of predicting anew, so a redelivered request never gets two
different answers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Engine, select

from include.event_pipelines import db
from include.event_pipelines.faults import maybe_fail
from include.event_pipelines.inference.model import Predictor, label_for
from include.event_pipelines.inference.schemas import InferenceReply, InferenceRequest
from include.event_pipelines.messages import Envelope, PoisonMessage, dead_letter_row, decode

log = logging.getLogger(__name__)

PIPELINE = "inference_execution"
ReplySender = Callable[[Sequence[InferenceReply]], None]


@dataclass
class InferenceOutcome:
    requests: int = 0
    predicted: int = 0
    reused: int = 0
    replies: int = 0
    dead_letters: list[dict[str, object]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "predicted": self.predicted,
            "reused": self.reused,
            "replies": self.replies,
            "dead_lettered": [d["message_id"] for d in self.dead_letters],
        }


def _stored(engine: Engine, request_ids: list[str]) -> dict[str, dict[str, object]]:
    t = db.predictions
    found: dict[str, dict[str, object]] = {}
    with engine.connect() as conn:
        for start in range(0, len(request_ids), 500):
            chunk = request_ids[start : start + 500]
            for row in conn.execute(select(t).where(t.c.request_id.in_(chunk))).mappings():
                found[row["request_id"]] = dict(row)
    return found


def answer_requests(
    envelopes: Sequence[Envelope], engine: Engine, predictor: Predictor, send_replies: ReplySender
) -> InferenceOutcome:
    outcome = InferenceOutcome()
    requests: dict[str, tuple[str, InferenceRequest]] = {}  # request_id -> (message_id, request): one answer each
    decoded: list[tuple[Envelope, InferenceRequest]] = []
    for env in envelopes:
        try:
            decoded.append((env, decode(env, InferenceRequest)))
        except PoisonMessage as exc:
            log.error("Dead-lettering %s", exc)
            outcome.dead_letters.append(dead_letter_row(env, exc.reason))

    stored = _stored(engine, sorted({req.request_id for _, req in decoded}))
    for env, req in decoded:
        rid, fingerprint = req.request_id, req.features.fingerprint()
        first = requests.get(rid)
        known = stored[rid]["features_sha256"] if rid in stored else (first[1].features.fingerprint() if first else None)
        if known is not None and known != fingerprint:
            reason = f"duplicate request_id {rid}: already used with different features"
            log.error("Dead-lettering message %s: %s", env.message_id, reason)
            outcome.dead_letters.append(dead_letter_row(env, reason))
            continue
        requests.setdefault(rid, (env.message_id, req))  # the same request again: answered once

    todo = [(rid, mid, req) for rid, (mid, req) in requests.items() if rid not in stored]
    probabilities = predictor.predict_proba([req.features for _, _, req in todo])
    now = db.utcnow()
    new_rows = [
        {
            "request_id": rid,
            "message_id": mid,
            "label": label_for(p),
            "probability": p,
            "model_version": predictor.version,
            "predicted_at": now,
            "submitted_at": req.submitted_at,
            "features_sha256": req.features.fingerprint(),
        }
        for (rid, mid, req), p in zip(todo, probabilities, strict=True)
    ]
    with engine.begin() as conn:
        db.insert_ignore(conn, db.predictions, new_rows)
        db.record_dead_letters(conn, PIPELINE, outcome.dead_letters)
    maybe_fail("inference.after_store")
    # Re-read so that a concurrent run that won the insert race and this one reply with the same answer.
    answers = _stored(engine, list(requests)) if requests else {}

    replies = [
        InferenceReply(
            correlation_id=rid,
            label=row["label"],
            probability=row["probability"],
            model_version=row["model_version"],
            predicted_at=db.as_utc(row["predicted_at"]),
        )
        for rid, row in answers.items()
    ]
    if replies:
        send_replies(replies)
    outcome.requests = len(requests)
    outcome.predicted = len(new_rows)
    outcome.reused = len(requests) - len(new_rows)
    outcome.replies = len(replies)
    log.info("%d requests: %d predicted, %d answered from stored predictions, %d dead-lettered",
             outcome.requests, outcome.predicted, outcome.reused, len(outcome.dead_letters))
    return outcome

