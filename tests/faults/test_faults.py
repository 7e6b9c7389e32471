"""Fault suite (`make test-faults`): at-least-once delivery with idempotent effects, proven on the real stack.

Each test publishes to the real brokers, breaks something real (a `kill -9` of the triggerer's whole process
group, a stopped Kafka broker, a task attempt that dies halfway, a cleared run, a paused DAG), and then checks
the sinks hold exactly what they should. "Within 60 s of the last publish" is measured from the publisher's own
timestamps, with no trailing message sent.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import bindparam, create_engine, func, select, text

from devstack import publish
from devstack.summary import message_runs
from devstack.testing import Stack, wait_for
from include.event_pipelines import db
from include.event_pipelines.etl.pipeline import render_csv


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


def _publish_in_background(fn, *args, **kwargs) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["records"] = fn(*args, **kwargs)
        except BaseException as exc:  # re-raised by the test
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def _records(thread: threading.Thread, box: dict[str, Any]) -> list[dict[str, Any]]:
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["records"]


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
        thread, box = _publish_in_background(publish.publish_inference, 1000, run_id=f"kill{broker}", rate=50,
                                             target=stack.target)
        dag_id = "inference_execution"
    else:
        thread, box = _publish_in_background(publish.publish_iot, 1000, devices=20, run_id=f"kill{broker}", rate=50,
                                             bootstrap=stack.bootstrap)
        dag_id = "iot_alerting"
    _kill_triggerer_three_times(stack, every=5)
    records = _records(thread, box)
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
        expected = publish.expected_alerts(records)
        assert (report.outputs["alerts_raised"], report.outputs["alerts_cleared"]) == expected


def test_a_backlog_of_5000_published_while_paused_drains_after_unpause(stack: Stack, report_line) -> None:
    stack.airflow("dags", "pause", "iot_alerting")
    time.sleep(15)  # the watcher goes away with the pause
    records = publish.publish_iot(5000, devices=50, run_id="backlog", bootstrap=stack.bootstrap)
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
    thread, box = _publish_in_background(publish.publish_iot, 400, devices=10, run_id="outage", rate=20,
                                         bootstrap=stack.bootstrap)
    time.sleep(5)
    stack.cli("stop", "kafka")
    time.sleep(20)
    stack.cli("start", "kafka")
    records = _records(thread, box)
    report = stack.collect(records, timeout=180)
    assert report.ok, report.missing
    figures = _figures(report_line, "kafka broker down 20s mid-stream", stack, "iot_alerting", records, report)
    assert figures["in_sink"] == 400
    assert (report.outputs["alerts_raised"], report.outputs["alerts_cleared"]) == publish.expected_alerts(records)


@pytest.mark.parametrize("point", ["iot.after_publish", "inference.after_store", "etl.after_load"])
def test_a_task_that_dies_halfway_then_succeeds_on_retry(stack: Stack, point: str, report_line) -> None:
    (Path(stack.info["EVENTS_FAULTS_DIR"]) / point).touch()
    run_id = "retry" + point.split(".")[0]
    if point.startswith("iot"):
        records, dag_id = publish.publish_iot(20, devices=2, run_id=run_id, bootstrap=stack.bootstrap), "iot_alerting"
    elif point.startswith("inference"):
        records, dag_id = publish.publish_inference(20, run_id=run_id, target=stack.target), "inference_execution"
    else:
        records = publish.publish_etl(3, rows=4, run_id=run_id, target=stack.target,
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
            alerts = conn.execute(select(func.count()).select_from(db.iot_alerts).where(
                db.iot_alerts.c.device_id.like(f"dev-{run_id}-%"))).scalar_one()
            assert alerts == sum(publish.expected_alerts(records))
            assert report.outputs["alert_duplicates"] >= 0  # re-published with the same dedup key: consumers drop it
        elif point.startswith("inference"):
            assert report.rows == 20 and report.outputs["reply_duplicates"] == 0
        else:
            ledger = conn.execute(select(func.count()).select_from(db.etl_deliveries).where(
                db.etl_deliveries.c.delivery_id.like(f"d-{run_id}-%"))).scalar_one()
            assert ledger == 3 and report.rows == 12


def test_a_cleared_and_rerun_run_writes_nothing_twice(stack: Stack, report_line) -> None:
    records = publish.publish_inference(10, run_id="clear", target=stack.target)
    report = stack.collect(records, timeout=120)
    assert report.ok
    events = create_engine(stack.events_url)
    ids = [r["expect"]["request_id"] for r in records]

    def snapshot() -> list[tuple]:
        with events.connect() as conn:
            return sorted(conn.execute(select(db.predictions).where(db.predictions.c.request_id.in_(ids))).all())

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


def _tries(airflow, run_ids: list[str]) -> int:
    sql = text("SELECT MIN(try_number) FROM task_instance WHERE dag_id = 'inference_execution'"
               " AND task_id = 'answer_batch' AND run_id IN :r").bindparams(bindparam("r", expanding=True))
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
    first_req = publish.publish_inference(1, run_id="dupid", target=stack.target)
    first_etl = publish.publish_etl(1, rows=2, run_id="dupid", target=stack.target,
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
