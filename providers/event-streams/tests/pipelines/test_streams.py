"""The streams page's figures and actions (``event_streams.pipelines.streams``) on a real SQLite events database:
dead letters newest first with what was done to each, replay and discard once only, message age and rate from the
runs' figures, the drift verdicts, and a broker that does not answer reported as unreachable (a closed local port)."""

from __future__ import annotations

import socket
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, func, select

from event_streams.pipelines import db, streams

T0 = datetime(2026, 12, 6, 8, 0, tzinfo=timezone.utc)


def _letters(engine: Engine, pipeline: str, n: int, reason: str = "bad reading", offset_s: float = 0.0) -> None:
    with engine.begin() as conn:
        db.insert_ignore(conn, db.dead_letters, [
            {"pipeline": pipeline, "message_id": f"{pipeline}-{i}", "source": "sqs", "reason": f"{reason} {i}",
             "body": f'{{"n": {i}}}' + "x" * 300, "recorded_at": T0 + timedelta(seconds=i + offset_s)} for i in range(n)])


def test_dead_letters_newest_first_filtered_and_paged(engine: Engine) -> None:
    _letters(engine, "iot_alerting", 5)
    _letters(engine, "data_delivery_etl", 3, reason="checksum mismatch", offset_s=0.5)
    rows = streams.dead_letters(engine, limit=4)
    assert [r["message_id"] for r in rows] == ["iot_alerting-4", "iot_alerting-3", "data_delivery_etl-2",
                                               "iot_alerting-2"]
    assert rows[0]["preview"] == '{"n": 4}' + "x" * (streams.PREVIEW_CHARS - 8) and rows[0]["body_chars"] == 308
    etl = streams.dead_letters(engine, pipeline="data_delivery_etl")
    assert [r["message_id"] for r in etl] == ["data_delivery_etl-2", "data_delivery_etl-1", "data_delivery_etl-0"]
    assert [r["message_id"] for r in streams.dead_letters(engine, reason="checksum mismatch 1")] == [
        "data_delivery_etl-1"]
    assert streams.dead_letters(engine, reason="%") == []  # a LIKE wildcard in the filter is taken literally
    older = streams.dead_letters(engine, before=datetime.fromisoformat(rows[-1]["recorded_at"]))
    assert [r["message_id"] for r in older] == ["data_delivery_etl-1", "iot_alerting-1", "data_delivery_etl-0",
                                                "iot_alerting-0"]


def test_replay_and_discard_happen_once_and_are_recorded(engine: Engine) -> None:
    _letters(engine, "inference_execution", 4)
    started: list[tuple[str, list[str]]] = []

    def replay(pipeline: str, bodies: list[str]) -> str:
        started.append((pipeline, bodies))
        return f"manual__{len(started)}"

    def body(i: int) -> str:
        return f'{{"n": {i}}}' + "x" * 300

    [first] = streams.act(engine, "inference_execution", ["inference_execution-0"], "replayed", "admin", replay)
    [again] = streams.act(engine, "inference_execution", ["inference_execution-0"], "replayed", "admin", replay)
    [discard] = streams.act(engine, "inference_execution", ["inference_execution-0"], "discarded", "ops", replay)
    assert first.new and first.run_id == "manual__1" and first.actor == "admin"
    assert not again.new and again.run_id == "manual__1"
    assert not discard.new and discard.action == "replayed"  # the first action stands
    assert started == [("inference_execution", [body(0)])]  # one run, with the original body
    # several at once: one run with the bodies of those not acted on yet; unknown ids are left out
    many = streams.act(engine, "inference_execution", ["inference_execution-0", "inference_execution-1",
                                                       "inference_execution-2", "nope"], "replayed", "ops", replay)
    assert [(a.message_id, a.new, a.run_id) for a in many] == [("inference_execution-0", False, "manual__1"),
                                                              ("inference_execution-1", True, "manual__2"),
                                                              ("inference_execution-2", True, "manual__2")]
    assert started[1] == ("inference_execution", [body(1), body(2)])
    assert streams.act(engine, "inference_execution", ["nope"], "discarded", "ops") == []
    [gone] = streams.act(engine, "inference_execution", ["inference_execution-3"], "discarded", "ops", replay)
    assert gone.new and gone.run_id is None and len(started) == 2
    listed = {r["message_id"]: (r["action"], r["actor"]) for r in streams.dead_letters(engine)}
    assert listed == {"inference_execution-0": ("replayed", "admin"), "inference_execution-1": ("replayed", "ops"),
                      "inference_execution-2": ("replayed", "ops"), "inference_execution-3": ("discarded", "ops")}
    with pytest.raises(ValueError):
        streams.act(engine, "inference_execution", ["inference_execution-1"], "deleted", "ops")


def test_a_replay_that_cannot_start_records_nothing(engine: Engine) -> None:
    _letters(engine, "iot_alerting", 1)

    def failing(pipeline: str, bodies: list[str]) -> str:
        raise RuntimeError("DAG is not parsed yet")

    with pytest.raises(RuntimeError):
        streams.act(engine, "iot_alerting", ["iot_alerting-0"], "replayed", "admin", failing)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(db.dead_letter_actions)) == 0


def test_message_age_and_rate_come_from_the_recent_runs(engine: Engine) -> None:
    now = T0 + timedelta(hours=1)
    rows = [{"dag_id": "iot_alerting", "run_id": f"r{i}", "messages": 60, "wait_p50_s": float(i), "wait_max_s": 10.0 * i,
             "recorded_at": now - timedelta(seconds=30 * i)} for i in range(1, 21)]
    with engine.begin() as conn:
        db.insert_ignore(conn, db.run_stats, rows + [{**rows[0], "dag_id": "other", "messages": 10_000}])
    figures = streams.run_figures(engine, "iot_alerting", now=now)
    # runs 1..10 were recorded within the last 300 s: 600 messages / 300 s
    assert figures == {"runs": 20, "age_p50_s": 10.5, "age_p95_s": 190.0, "messages_per_s": 2.0}
    assert streams.run_figures(engine, "nobody", now=now) == {"runs": 0, "age_p50_s": None, "age_p95_s": None,
                                                              "messages_per_s": 0.0}


def _partition(committed: int | None, settled: int | None, end: int = 100) -> dict:
    return {"topic": "iot-readings", "partition": 0, "end": end, "committed": committed,
            "lag": None if committed is None else end - committed, "settled_through": settled,
            "settled_not_committed": []}


def test_kafka_drift_verdicts() -> None:
    assert streams.kafka_drift([_partition(40, 40)], "g")["state"] == "in step"
    behind = streams.kafka_drift([_partition(0, 40)], "g")  # offsets reset behind Airflow's back
    assert behind["state"] == "drift" and "behind what the runs settled" in behind["verdict"]
    assert behind["details"] == ["iot-readings[0]: committed 0, settled through 40"]
    ahead = streams.kafka_drift([_partition(90, 40)], "airflow.iot_alerting")
    assert "will not read those records" in ahead["verdict"] and "airflow.iot_alerting" in ahead["action"]
    assert "no committed offset" in streams.kafka_drift([_partition(None, 40)], "g")["verdict"]
    assert streams.kafka_drift([_partition(7, None)], "g")["state"] == "in step"  # nothing settled yet: no claim
    flowing = streams.kafka_drift([_partition(40, 40)], "g", in_airflow=12)  # records on their way: not drift
    assert flowing["state"] == "in step" and flowing["details"][0].startswith("Airflow holds 12 record(s) past")


def test_sqs_drift_verdicts() -> None:
    assert streams.sqs_drift(3, held=2, waiting=1)["state"] == "in step"
    assert streams.sqs_drift(5, held=0, waiting=1)["verdict"].startswith("4 message(s) in flight that no")
    assert streams.sqs_drift(0, held=2, waiting=0)["verdict"].startswith("Airflow holds 2 message(s) more")
    assert streams.sqs_drift(None, held=0, waiting=0)["state"] == "unknown"


def test_a_queue_that_does_not_answer_is_reported_unreachable() -> None:
    import boto3
    from botocore.config import Config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    client = boto3.client("sqs", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                          aws_access_key_id="x", aws_secret_access_key="x",
                          config=Config(connect_timeout=1, read_timeout=1, retries={"max_attempts": 1}))
    watcher = streams.Watcher("w", 1, "a", ("d",), "event_streams.triggers.StreamingSqsTrigger",
                              {"sqs_queue": f"http://127.0.0.1:{port}/000000000000/requests"})
    figures = streams.sqs_figures(watcher, client)
    assert figures["queue"] == "requests" and figures["error"].startswith("unreachable: EndpointConnectionError")


def test_the_redrive_target_is_the_queue_the_policy_names() -> None:
    policy = '{"deadLetterTargetArn": "arn:aws:sqs:us-east-1:000000000000:requests-dlq", "maxReceiveCount": 5}'
    assert streams._redrive_target(policy, "http://h:9324/000000000000/requests") == (
        "http://h:9324/000000000000/requests-dlq")
    assert streams._redrive_target(None, "http://h/1/q") is None
