"""Runs that fail for good: the failure is recorded per message; after MAX_FAILED_RUNS the next delivery
dead-letters the message with the last error instead of processing it (event_streams.pipelines.redelivery)."""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine, select

from event_streams.pipelines import airflow_io, db, redelivery
from event_streams.pipelines.messages import Envelope

ASSET = "sqs_inference_requests"


def _event(*ids: str) -> SimpleNamespace:
    return SimpleNamespace(extra={"payload": {"message_batch": [
        {"MessageId": i, "ReceiptHandle": f"rh-{i}", "Body": "{}"} for i in ids]}})


def _context(run_id: str, *ids: str, exception: Exception | None = None) -> dict[str, Any]:
    return {
        "dag_run": SimpleNamespace(dag_id="inference_execution", run_id=run_id, conf={},
                                   start_date=datetime(2026, 11, 26, tzinfo=timezone.utc)),
        "ti": SimpleNamespace(task_id="answer_batch", start_date=None),
        "triggering_asset_events": {ASSET: [_event(*ids)]},
        "exception": exception,
    }


class RecordingSource:
    def __init__(self) -> None:
        self.taken: list[str] = []
        self.settled: list[tuple[list[str], list[dict[str, Any]]]] = []
        self.given_back: list[str] = []

    def take(self, envelopes: list[Envelope], dag_id: str) -> list[Envelope]:
        self.taken += [e.message_id for e in envelopes]
        return list(envelopes)

    def settle(self, envelopes: list[Envelope], dead_letters: list[dict[str, Any]]) -> None:
        self.settled.append(([e.message_id for e in envelopes], list(dead_letters)))

    def held(self) -> list[Envelope] | None:
        return None  # held nothing in this process: the callback gives back all of the run's messages

    def give_back(self, envelopes: list[Envelope]) -> None:
        self.given_back += [e.message_id for e in envelopes]


@pytest.fixture
def wired(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> RecordingSource:
    monkeypatch.setattr(db, "engine", lambda: engine)
    monkeypatch.setattr(airflow_io.config, "MAX_FAILED_RUNS", 2)
    return RecordingSource()


def test_a_failure_counts_once_per_run_however_many_tasks_failed(engine: Engine) -> None:
    assert redelivery.record_failure(engine, "d", "run-1", "t1", ["a", "b", "a"], "boom") == 2
    assert redelivery.record_failure(engine, "d", "run-1", "t2", ["a", "b"], "boom again") == 0
    redelivery.record_failure(engine, "d", "run-2", "t1", ["a"], "later error")
    assert redelivery.failures(engine, "d", ["a", "b", "c"]) == {"a": (2, "later error"), "b": (1, "boom")}
    assert redelivery.failures(engine, "other-dag", ["a"]) == {}


def test_messages_at_the_limit_are_split_off_with_the_last_error(engine: Engine) -> None:
    envs = [Envelope(source="sqs", message_id=m, body="{}") for m in ("a", "b", "c")]
    for run in ("r1", "r2"):
        redelivery.record_failure(engine, "d", run, "t", ["a"], f"RuntimeError: broker down in {run}")
    redelivery.record_failure(engine, "d", "r1", "t", ["b"], "once")
    counts = redelivery.failures(engine, "d", [e.message_id for e in envs])
    keep, exhausted = redelivery.split_exhausted(envs, counts, max_failed_runs=2)
    assert [e.message_id for e in keep] == ["b", "c"]
    [x] = exhausted
    assert (x.envelope.message_id, x.failed_runs) == ("a", 2)
    assert x.reason == "failed for good in 2 runs (limit 2); last error: RuntimeError: broker down in r2"


def test_the_failure_callback_records_the_error_and_gives_the_messages_back(wired: RecordingSource, engine: Engine) -> None:
    callback = airflow_io.on_failure(ASSET, wired)
    callback(_context("run-1", "m1", "m2", exception=RuntimeError("reply queue gone")))
    assert wired.given_back == ["m1", "m2"]
    assert redelivery.failures(engine, "inference_execution", ["m1", "m2"]) == {
        "m1": (1, "task answer_batch failed: RuntimeError: reply queue gone"),
        "m2": (1, "task answer_batch failed: RuntimeError: reply queue gone"),
    }


def test_the_failure_callback_never_raises(wired: RecordingSource, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> Engine:
        raise RuntimeError("database down")

    monkeypatch.setattr(db, "engine", broken)
    airflow_io.on_failure(ASSET, wired)(_context("run-1", "m1"))  # logged, not raised
    assert wired.given_back == []


def test_after_max_failed_runs_the_next_delivery_dead_letters_instead_of_processing(
    wired: RecordingSource, engine: Engine
) -> None:
    callback = airflow_io.on_failure(ASSET, wired)
    for run in ("run-1", "run-2"):
        callback(_context(run, "m1", exception=RuntimeError(f"failed in {run}")))
    messages = airflow_io.run_messages(_context("run-3", "m1", "m2"), ASSET, wired)
    assert [m["message_id"] for m in messages] == ["m2"]  # only the healthy one is processed
    assert wired.taken == ["m1", "m2"]
    [(settled, letters)] = wired.settled
    assert settled == ["m1"]
    assert letters[0]["message_id"] == "m1"
    assert letters[0]["reason"] == ("failed for good in 2 runs (limit 2); last error: "
                                    "task answer_batch failed: RuntimeError: failed in run-2")
    with engine.connect() as conn:
        stored = conn.execute(select(db.dead_letters.c.message_id, db.dead_letters.c.reason)).all()
    assert stored == [("m1", letters[0]["reason"])]


def test_below_the_limit_a_failed_message_is_processed_again(wired: RecordingSource) -> None:
    airflow_io.on_failure(ASSET, wired)(_context("run-1", "m1", exception=RuntimeError("x")))
    messages = airflow_io.run_messages(_context("run-2", "m1"), ASSET, wired)
    assert [m["message_id"] for m in messages] == ["m1"] and wired.settled == []
