"""A task's hold on its SQS messages (``event_streams.pipelines.heartbeat`` through ``sqs_source.SqsSource``):
extended while the task works, never after it is settled, and a failure gives back only what the task held."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest
from sqlalchemy import Engine

from event_streams.pipelines import db, kafka_source, sqs_source
from event_streams.pipelines.heartbeat import Holding
from event_streams.pipelines.messages import Envelope


def _msgs(*ids: str) -> list[Envelope]:
    return [Envelope(source="sqs", message_id=i, body="{}", receipt_handle=f"rh-{i}") for i in ids]


class Calls:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, envelopes: Sequence[Envelope]) -> None:
        self.calls.append([e.message_id for e in envelopes])


def test_the_lease_is_extended_at_once_and_on_every_beat_until_the_block_ends() -> None:
    extend, holding = Calls(), Holding()
    with holding.hold(_msgs("a", "b"), extend, every=0.05):
        time.sleep(0.33)
    beats = len(extend.calls)
    assert extend.calls[0] == ["a", "b"] and beats >= 4, extend.calls  # now, then every 50 ms
    time.sleep(0.2)
    assert len(extend.calls) == beats, "a beat after the task ended"


def test_settled_messages_are_no_longer_extended_nor_given_back() -> None:
    extend, holding = Calls(), Holding()
    assert holding.held() is None  # held nothing: the failure callback falls back to the run's messages
    with pytest.raises(RuntimeError), holding.hold(_msgs("a", "b", "c"), extend, every=0.05):
        holding.release(_msgs("b"))
        time.sleep(0.2)
        raise RuntimeError("the task failed after settling b")
    assert all(c == ["a", "c"] for c in extend.calls[1:]) and len(extend.calls) >= 3, extend.calls
    assert [e.message_id for e in holding.held() or []] == ["a", "c"]


def test_a_failing_heartbeat_is_tried_again_and_never_raised_into_the_task() -> None:
    calls: list[int] = []

    def flaky(envelopes: Sequence[Envelope]) -> None:
        calls.append(len(envelopes))
        if len(calls) == 2:
            raise ConnectionError("SQS unreachable for a moment")

    with Holding().hold(_msgs("a"), flaky, every=0.05):
        time.sleep(0.3)
    assert len(calls) >= 3  # the beat after the failure went on


def test_a_mapped_task_that_fails_gives_back_only_its_own_unsettled_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two tasks of one run in their own processes: each holds its batch; the failing one's callback sees only its
    own messages, not the sibling's, and not the one it had already settled."""
    extended: list[tuple[list[str], int]] = []
    monkeypatch.setattr(sqs_source, "extend_sqs_visibility",
                        lambda url, envs, seconds: extended.append(([e.message_id for e in envs], seconds)))
    monkeypatch.setattr(sqs_source, "settle_sqs", lambda *args: None)
    failing, sibling = sqs_source.SqsSource("q", "dlq"), sqs_source.SqsSource("q", "dlq")  # one per task process
    with sibling.holding(_msgs("s1", "s2")):
        sibling.settle(_msgs("s1", "s2"), [])
    with pytest.raises(RuntimeError), failing.holding(_msgs("m1", "m2", "m3")):
        failing.settle(_msgs("m1"), [])
        raise RuntimeError("model endpoint down")
    assert [e.message_id for e in failing.held() or []] == ["m2", "m3"]
    assert sibling.held() == []
    assert (["m1", "m2", "m3"], sqs_source.config.SQS_VISIBILITY_TIMEOUT) in extended  # held at once, for the budget
    assert kafka_source.KafkaSource("dlq").held() is None


def test_taking_a_runs_messages_marks_them_taken_for_the_trigger(engine: Engine, monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    """The run's first task takes its messages: the streaming trigger, which kept them invisible while the run was
    queued, stops extending them (``event_streams.taken_messages``); the task's own hold does from now on."""
    from event_streams import taken_messages

    monkeypatch.setattr(db, "engine", lambda: engine)
    envelopes = [Envelope(source="sqs", message_id=f"m{i}", body="{}", receipt_handle=f"rh-{i}") for i in range(3)]
    assert sqs_source.SqsSource("q", "dlq").take(envelopes, "inference_execution") == envelopes
    assert taken_messages.taken(engine, "q", ["m0", "m1", "m2", "m3"]) == {"m0", "m1", "m2"}
    assert taken_messages.taken(engine, "other-queue", ["m0"]) == set()
