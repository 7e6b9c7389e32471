"""SQS visibility follows the work, on the real stack (`make test-faults`): a task longer than the visibility budget
keeps its messages, a mapped task that fails for good gives back only its own batch while a sibling works on, and
a run queued behind ``max_active_runs`` for longer than the budget keeps its messages until it takes them.

The model endpoint is a real HTTP server of this module on 127.0.0.1:8000, where the stack's ``inference_endpoint``
connection points (``INFERENCE_BACKEND=http``): a request with
``rpm`` 1111 is answered after ``SLOW_S`` seconds, one with ``rpm`` 2222 gets HTTP 500, any other at once. The run's
budget is 20 s (``SQS_VISIBILITY_TIMEOUT``) with a heartbeat every 5 s; one request per task
(``INFERENCE_BATCH_SIZE=1``), so each request after the first is a mapped task of its own.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text

from devstack import publish, summary
from devstack.testing import Stack, wait_for
from event_streams.pipelines import db
from event_streams.pipelines.samples_api import Sample
from include.inference_execution.schemas import InferenceRequest, MachineFeatures

SLOW_S = 52  # longer than the budget (20 s) and the failing sibling's four tries (3 x 10 s retry delay), under the
# endpoint call's 60 s timeout
BUDGET_S = 20
PORT = 8000  # where the native stack's `inference_endpoint` connection points (devstack/astro_project.py)
STACK_ENV = {"INFERENCE_BACKEND": "http", "SQS_VISIBILITY_TIMEOUT": str(BUDGET_S), "SQS_HEARTBEAT_SECONDS": "5",
             "INFERENCE_BATCH_SIZE": "1", "SQS_REDELIVERY_DELAY_SECONDS": "5", "MAX_FAILED_RUNS": "1"}


class _Model(BaseHTTPRequestHandler):
    calls: list[list[float]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        rpms = [i["rpm"] for i in body["instances"]]
        type(self).calls.append(rpms)
        if 2222 in rpms:
            self.send_response(500)
            self.end_headers()
            return
        if 1111 in rpms:
            time.sleep(SLOW_S)
        answer = {"model_version": "slow-endpoint", "probabilities": [0.9 for _ in rpms]}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def endpoint() -> Iterator[type[_Model]]:
    server = ThreadingHTTPServer(("127.0.0.1", PORT), _Model)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield _Model
    finally:
        server.shutdown()


def _request(run_id: str, name: str, rpm: float) -> Sample:
    rid = f"req-{run_id}-{name}"
    features = MachineFeatures(temperature_c=90.0, vibration_mm_s=15.0, pressure_kpa=90.0, rpm=rpm)
    body = InferenceRequest(request_id=rid, submitted_at=publish.utcnow(), features=features)
    expect = ({"dead_letter_reason_contains": "failed for good in 1 run"} if rpm == 2222 else {"request_id": rid})
    return Sample(rid, body.model_dump_json().encode(), expect)


def test_a_slow_task_keeps_its_messages_and_a_failing_sibling_gives_back_only_its_own(
        endpoint: type[_Model], stack: Stack, report_line) -> None:
    messages = [_request("vis", "fast", 3000), _request("vis", "slow", 1111), _request("vis", "fails", 2222)]
    queue_url = stack.target.queue_url("inference-requests")
    records = publish.send_sqs("inference", stack.sqs(), queue_url, messages)  # one batch: one run, in this order
    started = time.monotonic()
    report = stack.collect(records, timeout=SLOW_S + 180, until_finished=False)  # every reply and dead letter
    assert not report.missing, report.missing  # the run itself failed: its mapped task failed for good, as planned
    assert (report.outputs["replies"], report.outputs["reply_duplicates"], report.outputs["dead_lettered"]) == (2, 0, 1)
    took = time.monotonic() - started
    assert endpoint.calls[0] == [3000], f"the first task answered another request first: {endpoint.calls}"
    by_name = {r["message_id"]: r["expect"].get("request_id", "fails").rsplit("-", 1)[-1] for r in records}
    deliveries = stack.deliveries("inference_execution", set(by_name))
    events = create_engine(stack.events_url)
    with events.connect() as conn:
        failures = conn.execute(select(db.message_failures.c.message_id, db.message_failures.c.task_id)).all()
        letters = dict(conn.execute(select(db.dead_letters.c.message_id, db.dead_letters.c.reason)).all())
    named = {by_name[m]: n for m, n in deliveries.items()}
    report_line(f"faults visibility: slow task {SLOW_S}s on a {BUDGET_S}s budget beside a failing sibling: deliveries"
                f" {named}, failures {[(by_name.get(m, m), t) for m, t in failures]}, done in {took:.0f}s")
    # The slow request was held by its task's heartbeat for 75 s on a 20 s budget and not given back by its failing
    # sibling: one delivery, one reply (report.ok checks replies exactly once), no failure recorded against it.
    assert named["slow"] == 1 and named["fast"] == 1, named
    assert [by_name[m] for m, _ in failures] == ["fails"] and failures[0][1] == "answer_batch"
    # The failing request was given back alone, redelivered once, and dead-lettered with its task's error.
    assert named["fails"] == 2
    [failed_id] = [m for m, n in by_name.items() if n == "fails"]
    assert set(letters) == {failed_id} and "task answer_batch failed" in letters[failed_id], letters


def test_a_run_queued_longer_than_the_budget_keeps_its_messages_until_it_takes_them(
        endpoint: type[_Model], stack: Stack, report_line) -> None:
    """Four runs wait on slow requests (``max_active_runs=4``); a fifth request's run is queued behind them for
    about ``SLOW_S`` s on a 20 s budget. The trigger extends that message on its heartbeat until the run marks it
    taken: one asset event, one reply, no redelivery; the four slow requests are answered once each too."""
    queue_url = stack.target.queue_url("inference-requests")
    airflow = create_engine(stack.info["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    running = text("SELECT COUNT(*) FROM dag_run WHERE dag_id = 'inference_execution' AND state = 'running'")
    with airflow.connect() as conn:  # the test before this one has left nothing running
        assert wait_for(lambda: conn.execute(running).scalar_one() == 0, timeout=120)
    records = []
    for i in range(4):  # one run each: the next is published once the run before it is running
        records += publish.send_sqs("inference", stack.sqs(), queue_url, [_request("queued", f"slow{i}", 1111)])
        with airflow.connect() as conn:
            assert wait_for(lambda n=i + 1: conn.execute(running).scalar_one() == n, timeout=60), f"run {i + 1} not running"
    [queued] = publish.send_sqs("inference", stack.sqs(), queue_url, [_request("queued", "behind", 3000)])
    report = stack.collect(records + [queued], timeout=SLOW_S + 180, until_finished=False)
    assert not report.missing, report.missing
    assert (report.outputs["replies"], report.outputs["reply_duplicates"], report.outputs["dead_lettered"]) == (5, 0, 0)
    deliveries = stack.deliveries("inference_execution", {r["message_id"] for r in records + [queued]})
    timeline, _ = summary.timeline(stack.info["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], "inference_execution")
    waited = timeline[queued["message_id"]]["start"] - timeline[queued["message_id"]]["event"]
    report_line(f"faults visibility: a run queued {waited:.0f}s behind max_active_runs on a {BUDGET_S}s budget: "
                f"deliveries {sorted(deliveries.values())}, replies {report.outputs['replies']}")
    # the case happened: the queued run started later than the handover (10 s) plus the budget after its event
    assert waited > BUDGET_S + 10, waited
    assert set(deliveries.values()) == {1}, deliveries  # nothing came back to the trigger: no second event
