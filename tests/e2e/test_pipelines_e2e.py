"""End to end on the real native stack: real Kafka, real ElasticMQ, real Airflow scheduler/triggerer/dag-processor/
api-server. Messages are published to the brokers; the assertions read the pipelines' database, the alert topic,
the reply queue and Airflow's own records of which asset events ran in which DAG run.

The module starts its own stack (its own state folder, shared jar cache) and stops it afterwards. Outside CI it
skips, with the reason, when Java/Maven are missing or the stack's ports are taken (e.g. by `make up`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select

from devstack import publish, summary
from include.event_pipelines import db

ROOT = Path(__file__).resolve().parents[2]
PORTS = (9092, 9093, 9324, 9325, 8080)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"end-to-end tests cannot run in CI: {reason}")
    pytest.skip(reason)


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if not (shutil.which("java") and shutil.which("mvn")):
        _unavailable("java and mvn are needed to run the real brokers (apt-get install default-jdk-headless maven)")
    taken = [p for p in PORTS if _port_taken(p)]
    if taken:
        _unavailable(f"ports {taken} are in use (a stack from `make up` is running? `make down` first)")
    env = {**os.environ, "DEVSTACK_HOME": str(tmp_path_factory.mktemp("devstack")),
           "DEVSTACK_CACHE": str(ROOT / ".devstack" / "cache")}
    cli = [sys.executable, "-m", "devstack.stack"]
    try:
        subprocess.run([*cli, "up"], cwd=ROOT, env=env, check=True, timeout=600)
        info = json.loads(subprocess.run([*cli, "env-json"], cwd=ROOT, env=env, check=True, capture_output=True,
                                         text=True).stdout)
        yield info
    finally:
        subprocess.run([*cli, "down"], cwd=ROOT, env=env, timeout=120)


def _collect(stack: dict[str, Any], records: list[dict[str, Any]], timeout: float = 240) -> summary.Report:
    [report] = summary.collect(
        records,
        stack["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
        _events_url(stack),
        bootstrap=stack["KAFKA_BOOTSTRAP"],
        alerts_topic="iot-alerts",
        sqs=_sqs(stack),
        reply_queue_url=f"{stack['SQS_QUEUE_URL_PREFIX']}/inference-replies",
        timeout=timeout,
    ).values()
    print(summary.render({report.pipeline: report}))
    return report


def _events_url(stack: dict[str, Any]) -> str:
    return f"sqlite:///{Path(stack['DEVSTACK_DATA']) / 'events.db'}"


def _sqs(stack: dict[str, Any]) -> Any:
    return publish.make_sqs_client(stack["SQS_ENDPOINT_URL"], "us-east-1")


def _target(stack: dict[str, Any]) -> publish.SqsTarget:
    return publish.SqsTarget(stack["SQS_ENDPOINT_URL"], stack["SQS_QUEUE_URL_PREFIX"], "us-east-1")


def _queue_depth(stack: dict[str, Any], queue: str) -> int:
    attrs = _sqs(stack).get_queue_attributes(
        QueueUrl=f"{stack['SQS_QUEUE_URL_PREFIX']}/{queue}",
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def test_etl_loads_exactly_the_delivered_rows_and_quarantines_bad_files(stack: dict[str, Any]) -> None:
    landing = Path(stack["LANDING_DIR"])
    good = publish.publish_etl(4, rows=3, run_id="e2eetl", target=_target(stack), landing_dir=landing)
    poison = publish.publish_etl(run_id="e2eetlp", poison=True, target=_target(stack), landing_dir=landing)
    report = _collect(stack, good + poison)
    assert report.ok, report.missing
    events = create_engine(_events_url(stack))
    with events.connect() as conn:
        loaded = set(conn.execute(select(db.orders.c.order_id).where(db.orders.c.order_id.like("o-e2eetl-%"))).scalars())
        ledger = conn.execute(select(func.count()).select_from(db.etl_deliveries)).scalar_one()
    assert loaded == {o for r in good for o in r["expect"]["orders"]} and len(loaded) == 12
    assert ledger == 4
    assert report.outputs["quarantined"] == 2  # the missing file and the truncated file
    assert report.outputs["dead_lettered"] == report.outputs["in_dlq"] == len(poison) - 2
    assert _queue_depth(stack, "data-deliveries") == 0, "every message is deleted once its effect is durable"


def test_iot_publishes_exactly_the_expected_alert_transitions(stack: dict[str, Any]) -> None:
    records = publish.publish_iot(12, devices=2, run_id="e2eiot", bootstrap=stack["KAFKA_BOOTSTRAP"])
    poison = publish.publish_iot(run_id="e2eiotp", poison=True, bootstrap=stack["KAFKA_BOOTSTRAP"])
    raised, cleared = publish.expected_alerts(records)
    assert raised > 0 and cleared > 0, "the sample must exercise both transitions"
    report = _collect(stack, records + poison)
    assert report.ok, report.missing
    assert (report.outputs["alerts_raised"], report.outputs["alerts_cleared"]) == (raised, cleared)
    assert report.outputs["alert_duplicates"] == 0
    assert report.rows == 12 and report.outputs["dead_lettered"] == report.outputs["in_dlq"] == len(poison)


def test_an_inference_burst_is_coalesced_into_fewer_runs_and_every_request_answered_once(stack: dict[str, Any]) -> None:
    records = publish.publish_inference(60, run_id="e2einf", rate=0, target=_target(stack))
    report = _collect(stack, records)
    assert report.ok, report.missing
    assert report.rows == 60 and report.outputs["replies"] == 60
    assert report.runs.total() < 60, f"{report.runs.total()} runs for 60 messages: nothing was coalesced"
    assert _queue_depth(stack, "inference-requests") == 0
    assert report.outputs["reply_duplicates"] == 0
