"""Fault suite (`make test-faults`): at-least-once delivery with idempotent effects, proven on the real stack.

Each test publishes to the real brokers, breaks something real (a `kill -9` of the triggerer's whole process
group, a stopped Kafka broker, a task attempt that dies halfway, a cleared run, a paused DAG), and then checks
the sinks hold exactly what they should. "Within 60 s of the last publish" is measured from the publisher's own
timestamps, with no trailing message sent.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import bindparam, create_engine, func, select, text

from devstack import publish
from devstack.summary import message_runs
from devstack.testing import Stack, in_background, result, wait_for
from event_streams.pipelines import db
from include.data_delivery_etl import tables as etl_tables
from include.data_delivery_etl.pipeline import render_csv
from include.inference_execution import tables as inference_tables
from include.iot_alerting import tables as iot_tables
from include.iot_alerting.samples import expected_alerts

# Shorter redelivery than the shipped defaults (MAX_FAILED_RUNS=3, KAFKA_REDELIVERY_SECONDS=120,
# SQS_REDELIVERY_DELAY_SECONDS=30), so that runs failing for good go through their cycle in minutes.
STACK_ENV = {"MAX_FAILED_RUNS": "2", "KAFKA_REDELIVERY_SECONDS": "30", "SQS_REDELIVERY_DELAY_SECONDS": "15"}


def _last_publish(records: list[dict[str, Any]]) -> float:
    return max(datetime.fromisoformat(r["published_at"]).timestamp() for r in records)


def _figures(report_line, name: str, stack: Stack, dag_id: str, records, report, extra: str = "") -> dict[str, int]:
    ids = {r["message_id"] for r in records}
    deliveries = stack.deliveries(dag_id, ids)
    figures = {
        "sent": len(records),
        "received": sum(deliveries.values()),
        "distinct_received": len(deliveries),
        "duplicates_absorbed": sum(deliveries.values()) - len(deliveries),
        "in_sink": report.rows,
        "dead_lettered": report.outputs.get("dead_lettered", 0),
    }
    report_line(f"faults {name:<34} " + " ".join(f"{k}={v}" for k, v in figures.items()) + (f" {extra}" if extra else ""))
    return figures


def _kill_triggerer_three_times(stack: Stack, every: float) -> list[int]:
    killed = []
    for _ in range(3):
        time.sleep(every)
        killed.append(int(stack.cli("crash", "triggerer", capture=True)))
        stack.cli("start", "triggerer")  # as a supervisor would
    return killed


@pytest.mark.parametrize("broker", ["sqs", "kafka"])
def test_triggerer_killed_three_times_while_1000_messages_stream_in(stack: Stack, broker: str, report_line) -> None:
    if broker == "sqs":
        thread, box = in_background(publish.publish, "inference", 1000, run_id=f"kill{broker}", rate=50,
                                    target=stack.target)
        dag_id = "inference_execution"
    else:
        thread, box = in_background(publish.publish, "iot", 1000, devices=20, run_id=f"kill{broker}", rate=50,
                                    bootstrap=stack.bootstrap)
        dag_id = "iot_alerting"
    _kill_triggerer_three_times(stack, every=5)
    records = result(thread, box)
    budget = _last_publish(records) + 60 - time.time()
    complete = stack.collect(records, timeout=max(budget, 1), until_finished=False)
    done_after = time.time() - _last_publish(records)
    assert not complete.missing and done_after <= 60, f"{done_after:.0f}s after the last publish: {complete.missing}"
    report = stack.collect(records, timeout=180)  # runs that only carry redelivered duplicates finish too
    assert report.ok, report.missing
    figures = _figures(report_line, f"kill -9 triggerer x3 ({broker})", stack, dag_id, records, report,
                       f"done {done_after:.0f}s after last publish")
    assert figures["in_sink"] == figures["distinct_received"] == 1000
    if broker == "sqs":
        assert report.outputs["replies"] == 1000
    else:
        expected = expected_alerts(records)
        assert (report.outputs["alerts_raised"], report.outputs["alerts_cleared"]) == expected
        offsets = wait_for(lambda: _settled_to_the_end(stack, "iot-readings"), timeout=60)
        assert offsets, f"committed offsets short of the end of iot-readings: {stack.kafka_offsets('iot-readings')}"


def _settled_to_the_end(stack: Stack, topic: str) -> dict[int, tuple[int, int]] | None:
    offsets = stack.kafka_offsets(topic)
    settled = all(committed == end or (end == 0 and committed < 0) for committed, end in offsets.values())
    return offsets if settled else None  # an empty partition has nothing to commit


def test_a_backlog_of_5000_published_while_paused_drains_after_unpause(stack: Stack, report_line) -> None:
    stack.airflow("dags", "pause", "iot_alerting")
    time.sleep(15)  # the watcher goes away with the pause
    records = publish.publish("iot", 5000, devices=50, run_id="backlog", bootstrap=stack.bootstrap)
    time.sleep(5)
    assert sum(stack.deliveries("iot_alerting", {r["message_id"] for r in records}).values()) == 0, "paused DAG consumed"
    log = Path(stack.info["DEVSTACK_RUN"]) / "airflow-triggerer.log"
    failures_before = log.read_text().count("failed; retrying")
    started = time.time()
    stack.airflow("dags", "unpause", "iot_alerting")
    report = stack.collect(records, timeout=300)
    assert report.ok, report.missing
    restarts = log.read_text().count("failed; retrying") - failures_before
    figures = _figures(report_line, "backlog 5000 paused -> unpaused (kafka)", stack, "iot_alerting", records, report,
                       f"drained in {time.time() - started:.0f}s, {report.runs.total()} runs, trigger restarts={restarts}")
    assert figures["in_sink"] == 5000 and restarts == 0


def test_kafka_broker_stopped_for_20s_mid_stream_loses_nothing(stack: Stack, report_line) -> None:
    thread, box = in_background(publish.publish, "iot", 400, devices=10, run_id="outage", rate=20,
                                bootstrap=stack.bootstrap)
    time.sleep(5)
    stack.cli("stop", "kafka")
    time.sleep(20)
    stack.cli("start", "kafka")
    records = result(thread, box)
    report = stack.collect(records, timeout=180)
    assert report.ok, report.missing
    figures = _figures(report_line, "kafka broker down 20s mid-stream", stack, "iot_alerting", records, report)
    assert figures["in_sink"] == 400
    assert (report.outputs["alerts_raised"], report.outputs["alerts_cleared"]) == expected_alerts(records)


@pytest.mark.parametrize("point", ["iot.after_commit", "iot.after_publish", "inference.after_store", "etl.after_load"])
def test_a_task_that_dies_halfway_then_succeeds_on_retry(stack: Stack, point: str, report_line) -> None:
    (Path(stack.info["EVENTS_FAULTS_DIR"]) / point).touch()
    run_id = "retry" + point.replace(".", "").replace("_", "")
    if point.startswith("iot"):
        records, dag_id = publish.publish("iot", 20, devices=2, run_id=run_id, bootstrap=stack.bootstrap), "iot_alerting"
    elif point.startswith("inference"):
        records, dag_id = publish.publish("inference", 20, run_id=run_id, target=stack.target), "inference_execution"
    else:
        records = publish.publish("etl", 3, rows=4, run_id=run_id, target=stack.target,
                                  landing_dir=Path(stack.info["LANDING_DIR"]))
        dag_id = "data_delivery_etl"
    report = stack.collect(records, timeout=180)
    assert report.ok, report.missing
    assert not (Path(stack.info["EVENTS_FAULTS_DIR"]) / point).exists(), "the fault was never hit"
    assert report.tasks.get("success") and not report.tasks.get("failed")
    _figures(report_line, f"task dies at {point}, retried", stack, dag_id, records, report)
    events = create_engine(stack.events_url)
    with events.connect() as conn:
        if point.startswith("iot"):
            alerts = conn.execute(select(func.count()).select_from(iot_tables.iot_alerts).where(
                iot_tables.iot_alerts.c.device_id.like(f"dev-{run_id}-%"))).scalar_one()
            assert alerts == sum(expected_alerts(records))
            # after_commit: the attempt stored state and alerts (the outbox) and died before publishing; the retry
            # published them: no duplicate. after_publish: it had published (and flushed) them too; the retry
            # published them again with the same dedup keys: exactly those are the duplicates, which consumers drop.
            retried = _messages_of_retried_runs(stack, dag_id, "evaluate_and_alert")
            republished = sum(1 for r in records if r["message_id"] in retried and r["expect"].get("transition"))
            assert report.outputs["alert_duplicates"] == (republished if point == "iot.after_publish" else 0)
        elif point.startswith("inference"):
            assert report.rows == 20 and report.outputs["reply_duplicates"] == 0
        else:
            ledger = conn.execute(select(func.count()).select_from(etl_tables.etl_deliveries).where(
                etl_tables.etl_deliveries.c.delivery_id.like(f"d-{run_id}-%"))).scalar_one()
            assert ledger == 3 and report.rows == 12


def test_a_task_orphaned_by_a_killed_scheduler_is_retried_within_the_heartbeat_timeout(stack: Stack, report_line) -> None:
    """LocalExecutor: the workers that supervise task processes are the scheduler's children and die with it (the task
    process itself lives on, without heartbeats). The restarted scheduler resets the dead one's running task at its
    next orphan check (the Dockerfile's 30 s; default 300 s) and the retry finishes it: iot_alerting (one run at a
    time) is blocked for about a minute, not five. The orphaned process wakes up later and is refused."""
    marker = Path(stack.info["EVENTS_FAULTS_DIR"]) / "iot.before_commit"
    marker.write_text("hang:120")
    records = publish.publish("iot", 20, devices=2, run_id="orphan", bootstrap=stack.bootstrap)
    assert wait_for(lambda: not marker.exists(), timeout=120), "no task reached the fault point"
    stack.cli("crash", "scheduler")
    killed_at = time.time()
    time.sleep(5)
    stack.cli("start", "scheduler")  # as a supervisor would
    report = stack.collect(records, timeout=300)
    assert report.ok, report.missing
    airflow = create_engine(stack.info["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    runs = sorted({run_id for m, (run_id, _, _) in message_runs(airflow, "iot_alerting").items()
                   if m in {r["message_id"] for r in records}})
    sql = text("SELECT MAX(end_date), MAX(try_number) FROM task_instance WHERE dag_id = 'iot_alerting'"
               " AND run_id IN :r").bindparams(bindparam("r", expanding=True))
    with airflow.connect() as conn:
        end, tries = conn.execute(sql, {"r": runs}).one()
    recovered_s = db.as_utc(end if isinstance(end, datetime) else datetime.fromisoformat(str(end))).timestamp() - killed_at
    events = create_engine(stack.events_url)
    with events.connect() as conn:
        alerts = conn.execute(select(func.count()).select_from(iot_tables.iot_alerts).where(
            iot_tables.iot_alerts.c.device_id.like("dev-orphan-%"))).scalar_one()
    assert alerts == sum(expected_alerts(records)) and report.rows == 20
    assert tries >= 2, "the orphaned attempt was not retried"
    report_line(f"faults {'scheduler killed mid-task (Local)':<34} orphaned task retried and done {recovered_s:.0f}s after"
                f" the kill (orphan check every 30 s, health threshold 30 s); readings={report.rows} alerts={alerts}")
    assert recovered_s <= 30 + 30 + 30


def test_a_cleared_and_rerun_run_writes_nothing_twice(stack: Stack, report_line) -> None:
    records = publish.publish("inference", 10, run_id="clear", target=stack.target)
    report = stack.collect(records, timeout=120)
    assert report.ok
    events = create_engine(stack.events_url)
    ids = [r["expect"]["request_id"] for r in records]

    def snapshot() -> list[tuple]:
        with events.connect() as conn:
            t = inference_tables.predictions
            return sorted(conn.execute(select(t).where(t.c.request_id.in_(ids))).all())

    before = snapshot()
    airflow = create_engine(stack.info["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    consumed = message_runs(airflow, "inference_execution")
    run_ids = sorted({consumed[r["message_id"]][0] for r in records})
    for run_id in run_ids:  # what "Clear" on the run does in the UI
        stack.api("POST", "/api/v2/dags/inference_execution/clearTaskInstances",
                  {"dag_run_id": run_id, "dry_run": False, "only_failed": False, "reset_dag_runs": True})
    cleared = wait_for(lambda: _tries(airflow, run_ids) >= 2, timeout=120)
    assert cleared, "the cleared run did not run again"
    wait_for(lambda: _states(airflow, run_ids) == {"success"}, timeout=120)
    assert snapshot() == before, "a re-run changed stored predictions"
    report_line(f"faults {'cleared run re-run (inference)':<34} runs={len(run_ids)} predictions={len(before)} unchanged")


def _messages_of_retried_runs(stack: Stack, dag_id: str, task_id: str) -> set[str]:
    airflow = create_engine(stack.info["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    with airflow.connect() as conn:
        runs = set(conn.execute(text("SELECT run_id FROM task_instance WHERE dag_id = :d AND task_id = :t"
                                     " AND try_number > 1"), {"d": dag_id, "t": task_id}).scalars())
    assert runs, "no task was retried"
    return {m for m, (run_id, _, _) in message_runs(airflow, dag_id).items() if run_id in runs}


def _tries(airflow, run_ids: list[str]) -> int:
    sql = text("SELECT MIN(try_number) FROM task_instance WHERE dag_id = 'inference_execution'"
               " AND task_id = 'answer_first_batch' AND run_id IN :r").bindparams(bindparam("r", expanding=True))
    with airflow.connect() as conn:
        return conn.execute(sql, {"r": run_ids}).scalar_one() or 0


def _states(airflow, run_ids: list[str]) -> set[str]:
    sql = text("SELECT state FROM dag_run WHERE dag_id = 'inference_execution' AND run_id IN :r").bindparams(
        bindparam("r", expanding=True))
    with airflow.connect() as conn:
        return {s for (s,) in conn.execute(sql, {"r": run_ids})}


def _send_sqs(stack: Stack, queue: str, body: str, rid: str, expect: dict[str, str], pipeline: str) -> dict[str, Any]:
    response = stack.sqs().send_message(QueueUrl=stack.target.queue_url(queue), MessageBody=body)
    return {"pipeline": pipeline, "id": rid, "message_id": response["MessageId"],
            "published_at": datetime.now(timezone.utc).isoformat(), "expect": expect}


def test_a_duplicate_id_with_different_content_is_dead_lettered(stack: Stack, report_line) -> None:
    """The same id with the same content is a redelivery (absorbed); with other content it is a producer bug."""
    first_req = publish.publish("inference", 1, run_id="dupid", target=stack.target)
    first_etl = publish.publish("etl", 1, rows=2, run_id="dupid", target=stack.target,
                                landing_dir=Path(stack.info["LANDING_DIR"]))
    assert stack.collect(first_req).ok and stack.collect(first_etl).ok

    rid = first_req[0]["expect"]["request_id"]
    body = {"request_id": rid, "submitted_at": datetime.now(timezone.utc).isoformat(),
            "features": {"temperature_c": 20.0, "vibration_mm_s": 1.0, "pressure_kpa": 100.0, "rpm": 1000.0}}
    conflict_req = _send_sqs(stack, "inference-requests", json.dumps(body), rid,
                             {"dead_letter_reason_contains": f"duplicate request_id {rid}"}, "inference")
    landing = Path(stack.info["LANDING_DIR"])
    data = render_csv([{"order_id": "o-dupid-x", "customer_id": "c", "amount": "1.00", "currency": "EUR",
                        "ordered_at": "2026-11-24T08:00:00Z"}])
    (landing / "dupid-other.csv").write_bytes(data)
    delivery_id = first_etl[0]["id"]
    notice = {"delivery_id": delivery_id, "uri": (landing / "dupid-other.csv").as_uri(),
              "sha256": hashlib.sha256(data).hexdigest(), "row_count": 1, "producer": "test",
              "delivered_at": datetime.now(timezone.utc).isoformat()}
    conflict_etl = _send_sqs(stack, "data-deliveries", json.dumps(notice), delivery_id,
                             {"dead_letter_reason_contains": f"duplicate delivery_id {delivery_id}"}, "etl")
    for record in (conflict_req, conflict_etl):
        report = stack.collect([record], timeout=120)
        assert report.ok and report.outputs["in_dlq"] == 1, report.missing
    report_line(f"faults {'duplicate ids, other content':<34} dead_lettered=2 (inference request_id, etl delivery_id)")


def _events(stack: Stack):
    events = db.configure_sqlite(create_engine(stack.events_url))
    db.ensure_schema(events)  # the pipelines create their tables on their first run; the test may look before that
    return events


def _failed_runs_of(stack: Stack, dag_id: str, message_ids: set[str]) -> dict[str, int]:
    """message id -> in how many runs that failed for good it was (the pipelines' own record)."""
    events = _events(stack)
    t = db.message_failures
    with events.connect() as conn:
        rows = conn.execute(select(t.c.message_id, func.count()).where(
            t.c.dag_id == dag_id, t.c.message_id.in_(sorted(message_ids))).group_by(t.c.message_id)).all()
    return dict(rows)


def _settled(stack: Stack, dag_id: str, message_ids: set[str]) -> set[str]:
    """Which of these messages are dead-lettered, or (IoT) processed: stored in the same transaction as the run's
    state, after its alerts were published. (A stored prediction is not yet a reply: inference counts dead letters.)"""
    events = _events(stack)
    ids = sorted(message_ids)
    with events.connect() as conn:
        done = set()
        if dag_id == "iot_alerting":
            done = set(conn.execute(select(iot_tables.iot_readings.c.message_id).where(
                iot_tables.iot_readings.c.message_id.in_(ids))).scalars())
        done |= set(conn.execute(select(db.dead_letters.c.message_id).where(
            db.dead_letters.c.pipeline == dag_id, db.dead_letters.c.message_id.in_(ids))).scalars())
    return done


def _with_every_attempt_failing(stack: Stack, points: list[str], batches: dict[str, list[dict[str, Any]]],
                                failed_runs: int) -> float:
    """Make every attempt fail at ``points`` until each message of ``batches`` has been in ``failed_runs`` failed
    runs (or was dead-lettered for it); meanwhile assert that the Kafka group's committed offset never passes a
    reading that is neither processed nor dead-lettered. Returns how long that took."""
    faults = Path(stack.info["EVENTS_FAULTS_DIR"])
    for point in points:
        (faults / point).write_text("always")
    started = time.time()

    def reached() -> bool:
        done = True
        for dag_id, recs in batches.items():
            ids = {r["message_id"] for r in recs}
            settled = _settled(stack, dag_id, ids)
            if dag_id == "iot_alerting":
                committed = {p: c for p, (c, _) in stack.kafka_offsets("iot-readings").items()}
                for m in ids - settled:
                    _, partition, offset = m.rsplit("/", 2)
                    assert committed[int(partition)] <= int(offset), f"committed offset passed unsettled {m}"
            counts = _failed_runs_of(stack, dag_id, ids)
            done &= all(counts.get(m, 0) >= failed_runs or m in settled for m in ids)
        return done

    try:
        assert wait_for(reached, timeout=420, interval=1), {d: _failed_runs_of(stack, d, {r["message_id"] for r in recs})
                                                             for d, recs in batches.items()}
    finally:
        for point in points:
            (faults / point).unlink(missing_ok=True)
    return time.time() - started


def test_runs_that_fail_for_good_are_redelivered_then_dead_lettered_with_the_reason(stack: Stack, report_line) -> None:
    """Per broker: a batch whose run fails on every attempt, then good traffic. A message that was in fewer than
    MAX_FAILED_RUNS (2 here) failed runs is processed once redelivered; one that reached it is dead-lettered with
    the task's error. None is missing, and the Kafka group never commits past an unsettled reading."""
    points = ["iot.before_commit", "inference.after_store"]
    # 1. One failed run, then the fault clears: the same messages are processed after redelivery.
    iot1 = publish.publish("iot", 10, devices=2, run_id="ffg1", bootstrap=stack.bootstrap)
    inf1 = publish.publish("inference", 10, run_id="ffg1", target=stack.target)
    took1 = _with_every_attempt_failing(stack, points, {"iot_alerting": iot1, "inference_execution": inf1}, 1)
    iot2 = publish.publish("iot", 10, devices=2, run_id="ffg2", bootstrap=stack.bootstrap)
    inf2 = publish.publish("inference", 10, run_id="ffg2", target=stack.target)
    started = time.time()
    report = stack.collect(iot1 + iot2, timeout=300, until_finished=False)
    assert not report.missing, report.missing
    inf_report = stack.collect(inf1 + inf2, timeout=300, until_finished=False)
    assert not inf_report.missing, inf_report.missing
    assert report.rows == 20 and inf_report.rows == 20 and inf_report.outputs["replies"] == 20
    assert inf_report.outputs["reply_duplicates"] == 0
    redelivered_after = time.time() - started
    report_line(f"faults {'run failed for good x1, then healed':<34} iot 20/20 stored, inference 20/20 replied; "
                f"failing phase {took1:.0f}s, processed {redelivered_after:.0f}s after the fault cleared")

    # 2. The fault outlasts MAX_FAILED_RUNS failed runs: the next delivery dead-letters them with the reason.
    iot3 = publish.publish("iot", 10, devices=2, run_id="ffg3", bootstrap=stack.bootstrap)
    inf3 = publish.publish("inference", 10, run_id="ffg3", target=stack.target)
    took3 = _with_every_attempt_failing(stack, points, {"iot_alerting": iot3, "inference_execution": inf3}, 2)
    iot4 = publish.publish("iot", 10, devices=2, run_id="ffg4", bootstrap=stack.bootstrap)
    inf4 = publish.publish("inference", 10, run_id="ffg4", target=stack.target)
    for recs, point in ((iot3, "iot.before_commit"), (inf3, "inference.after_store")):
        for r in recs:
            r["expect"] = {"dead_letter_reason_contains": f"InjectedFault: injected fault at {point}"}
    started = time.time()
    iot_report = stack.collect(iot3 + iot4, timeout=300, until_finished=False)
    inf_report = stack.collect(inf3 + inf4, timeout=300, until_finished=False)
    assert not iot_report.missing and not inf_report.missing, iot_report.missing + inf_report.missing
    assert iot_report.outputs["dead_lettered"] == iot_report.outputs["in_dlq"] == 10 and iot_report.rows == 10
    assert inf_report.outputs["dead_lettered"] == inf_report.outputs["in_dlq"] == 10 and inf_report.outputs["replies"] == 10
    events = create_engine(stack.events_url)
    with events.connect() as conn:
        reasons = set(conn.execute(select(db.dead_letters.c.reason).where(
            db.dead_letters.c.message_id.in_([r["message_id"] for r in iot3 + inf3]))).scalars())
    assert all(r.startswith("failed for good in 2 runs (limit 2); last error: task ") for r in reasons), reasons
    assert wait_for(lambda: _settled_to_the_end(stack, "iot-readings"), timeout=120), stack.kafka_offsets("iot-readings")
    # Copies given back by the last failed run may still be on their way through one more run, which dead-letters
    # (again, idempotently) and deletes them: the queue ends empty.
    assert wait_for(lambda: stack.queue_depth("inference-requests") == 0, timeout=180, interval=2), \
        f"{stack.queue_depth('inference-requests')} request(s) left on the queue"
    report_line(f"faults {'run failed for good x2 (limit 2)':<34} iot 10 + inference 10 dead-lettered with the task "
                f"error, 10 + 10 good after them processed; failing phase {took3:.0f}s, dead-lettered "
                f"{time.time() - started:.0f}s after the fault cleared; committed offsets at the end of the topic")

