"""Inference execution's samples module (``include/inference_execution/samples.py``): its requests are valid and mix
machines about to fail with healthy ones, its poison is dead-lettered as recorded, and its sink check says which
predictions are stored and which replies came back (taken off the reply queue through the lab's reader)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import Engine

from event_streams.pipelines.messages import Envelope, PoisonMessage, decode
from event_streams.pipelines.samples_api import Sample
from include.inference_execution.pipeline import answer_requests
from include.inference_execution.samples import SAMPLES, check, messages, poison
from include.inference_execution.schemas import InferenceReply, InferenceRequest


def sqs_envelope(n: int, msg: Sample) -> Envelope:
    return Envelope.from_sqs({"MessageId": f"m-{n}", "Body": msg.body.decode("utf-8"), "ReceiptHandle": f"rh-{n}"})


class HotIsFailing:
    """A model that says "failure" for a machine hotter than 80 °C."""

    version = "test"

    def predict_proba(self, rows: list[Any]) -> list[float]:
        return [0.9 if r.temperature_c > 80 else 0.1 for r in rows]


class ReplyQueue:
    """A ``SinkReader`` over a reply queue holding these replies; taken replies are counted, as the lab does."""

    def __init__(self, replies: list[InferenceReply]) -> None:
        self.queued = [json.loads(r.model_dump_json()) for r in replies]
        self.taken: Counter[str] = Counter()
        self.asked: list[tuple[str, str]] = []

    def topic(self, topic: str) -> list[bytes]:
        raise AssertionError("the inference check read a topic")

    def take(self, queue: str, field: str, wanted: set[str]) -> Counter[str]:
        self.asked.append((queue, field))
        self.taken.update(r[field] for r in self.queued if r[field] in wanted)
        self.queued = [r for r in self.queued if r[field] not in wanted]
        return self.taken


def records_of(msgs: list[Sample]) -> list[dict[str, Any]]:
    return [{"pipeline": "inference", "id": m.id, "message_id": f"m-{i}", "expect": m.expect}
            for i, m in enumerate(msgs)]


def test_the_samples_describe_the_pipeline() -> None:
    assert (SAMPLES.name, SAMPLES.dag_id, SAMPLES.broker) == ("inference", "inference_execution", "sqs")
    assert (SAMPLES.source, SAMPLES.dlq) == ("inference-requests", "inference-requests-dlq")
    assert SAMPLES.options == () and [d.label for d in SAMPLES.demo] == [None, "burst"]


def test_requests_are_valid_and_mix_hot_and_cool_machines() -> None:
    msgs = list(messages("r8", 20, seed=4))
    reqs = [decode(sqs_envelope(i, m), InferenceRequest) for i, m in enumerate(msgs)]
    assert [r.request_id for r in reqs] == [m.expect["request_id"] for m in msgs] == [f"req-r8-{i}" for i in range(20)]
    hot = [r for r in reqs if r.features.temperature_c > 80]
    assert 0 < len(hot) < len(reqs)


def test_the_seed_makes_values_repeatable() -> None:
    a = [json.loads(m.body)["features"] for m in messages("s", 6, seed=5)]
    b = [json.loads(m.body)["features"] for m in messages("s", 6, seed=5)]
    assert a == b


def test_the_sink_check_counts_predictions_and_replies(engine: Engine) -> None:
    msgs = list(messages("r12", 6, seed=1))
    records = records_of(msgs)
    sent: list[InferenceReply] = []
    answer_requests([sqs_envelope(i, m) for i, m in enumerate(msgs)], engine, HotIsFailing(), sent.extend)
    queue = ReplyQueue(sent + sent[:1])  # one reply sent twice (a run that died between sending and marking)
    result = check(engine, records, queue)
    assert queue.asked == [("inference-replies", "correlation_id")]
    assert result.rows == 6 and result.missing == []
    assert result.outputs == {"replies": 6, "reply_duplicates": 1}


def test_the_sink_check_names_a_missing_prediction_and_a_missing_reply(engine: Engine) -> None:
    msgs = list(messages("r13", 4, seed=1))
    sent: list[InferenceReply] = []
    answer_requests([sqs_envelope(i, m) for i, m in enumerate(msgs[:3])], engine, HotIsFailing(), sent.extend)
    result = check(engine, records_of(msgs), ReplyQueue(sent[1:]))
    assert result.rows == 3 and result.outputs == {"replies": 2, "reply_duplicates": 0}
    assert result.missing == ["1 of 4 predictions not stored", "2 of 4 replies not received"]


def test_poison_kinds_and_every_body_is_dead_lettered_with_the_recorded_reason() -> None:
    msgs = poison("pz")
    assert {m.id.removeprefix("poison-pz-") for m in msgs} == {
        "not_json", "not_object", "wrong_schema", "empty", "wrong_type", "out_of_range"}
    for i, m in enumerate(msgs):
        assert m.body and len(m.body) <= 256 * 1024 and m.key is None  # SQS refuses empty and oversize bodies
        with pytest.raises(PoisonMessage) as caught:
            decode(sqs_envelope(i, m), InferenceRequest)
        assert m.expect["dead_letter_reason_contains"] in caught.value.reason, (m.id, caught.value.reason)
