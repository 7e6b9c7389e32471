"""Integrity tests of our own: what each DAG is scheduled on, which trigger watches it, which connections it
needs, that parsing is warning-free, and how long each DAG file takes to import (reported, not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from airflow.dag_processing.dagbag import DagBag
from airflow.providers.amazon.aws.triggers.sqs import SqsSensorTrigger
from airflow.providers.apache.kafka.triggers.await_message import AwaitMessageTrigger
from airflow.sdk.definitions.timetables.assets import AssetTriggeredTimetable

from include.event_pipelines import config

ROOT = Path(__file__).resolve().parents[2]

EXPECTED = {
    # dag_id: (file, trigger class the MessageQueueTrigger resolves to, max_active_runs must be)
    "data_delivery_etl": ("data_delivery_etl.py", SqsSensorTrigger, lambda n: n >= 1),
    "iot_alerting": ("iot_alerting.py", AwaitMessageTrigger, lambda n: n == 1),
    "inference_execution": ("inference_execution.py", SqsSensorTrigger, lambda n: n > 1),
}


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(dag_folder=str(ROOT / "dags"))


def _watchers(dag):
    timetable = dag.timetable
    assert isinstance(timetable, AssetTriggeredTimetable), f"{dag.dag_id} is not asset-scheduled"
    assets = list(timetable.asset_condition.objects)
    return [w for a in assets for w in a.watchers]


def test_exactly_the_three_pipelines_parse(dagbag: DagBag) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == set(EXPECTED)


def test_parsing_emits_no_warnings(dagbag: DagBag) -> None:
    assert dagbag.captured_warnings == {}


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_scheduled_on_an_asset_watched_by_message_queue_trigger(dagbag: DagBag, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    file, trigger_cls, runs_ok = EXPECTED[dag_id]
    assert Path(dag.fileloc).name == file
    watchers = _watchers(dag)
    assert len(watchers) == 1
    trigger = watchers[0].trigger
    # MessageQueueTrigger resolves to the provider trigger; its serialized form is what the triggerer runs.
    assert type(trigger).__name__ == "MessageQueueTrigger", type(trigger)
    assert isinstance(trigger.trigger, trigger_cls)
    assert runs_ok(dag.max_active_runs), f"{dag_id}: max_active_runs={dag.max_active_runs}"
    assert dag.default_args["retries"] >= 2 and dag.tags and dag.doc_md


def test_sqs_watchers_receive_without_deleting_and_long_poll(dagbag: DagBag) -> None:
    for dag_id in ("data_delivery_etl", "inference_execution"):
        _, kwargs = _watchers(dagbag.dags[dag_id])[0].trigger.serialize()
        assert kwargs["delete_message_on_reception"] is False, dag_id
        assert kwargs["waiter_delay"] == 0 and kwargs["wait_time_seconds"] == 20, dag_id
        assert kwargs["visibility_timeout"] >= 60, dag_id
        assert kwargs["sqs_queue"].startswith(config.SQS_QUEUE_URL_PREFIX)


def test_kafka_apply_function_is_importable_outside_dags(dagbag: DagBag) -> None:
    _, kwargs = _watchers(dagbag.dags["iot_alerting"])[0].trigger.serialize()
    module = kwargs["apply_function"].rsplit(".", 1)[0]
    assert not module.startswith("dags"), "the triggerer does not import from the DAG bundle"
    # Import it the way the triggerer does: a fresh interpreter with only the project root on sys.path.
    code = f"import importlib; m = importlib.import_module({module!r}); print(callable(getattr(m, {kwargs['apply_function'].rsplit('.', 1)[1]!r})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def _seeded_conn_ids() -> set[str]:
    settings = yaml.safe_load((ROOT / "airflow_settings.yaml").read_text())
    return {c["conn_id"] for c in settings["airflow"]["connections"]}


def test_every_connection_the_dags_use_is_seeded(dagbag: DagBag) -> None:
    used = {config.AWS_CONN_ID, config.KAFKA_CONN_ID, config.DB_CONN_ID, config.INFERENCE_HTTP_CONN_ID}
    for dag in dagbag.dags.values():
        for watcher in _watchers(dag):
            _, kwargs = watcher.trigger.serialize()
            used |= {v for k, v in kwargs.items() if k.endswith(("conn_id", "config_id")) and v}
    assert used <= _seeded_conn_ids(), f"not seeded in airflow_settings.yaml: {used - _seeded_conn_ids()}"


def test_kafka_connection_is_safe_for_manual_commits() -> None:
    settings = yaml.safe_load((ROOT / "airflow_settings.yaml").read_text())
    kafka = next(c for c in settings["airflow"]["connections"] if c["conn_id"] == config.KAFKA_CONN_ID)
    extra = kafka["conn_extra"]
    assert extra["enable.auto.commit"] is False
    assert {"bootstrap.servers", "group.id", "auto.offset.reset"} <= set(extra)


IMPORT_TIMER = """
import runpy, sys, time
import airflow.sdk, airflow.providers.common.messaging.triggers.msg_queue  # Airflow itself is not the DAG's cost
t = time.perf_counter(); runpy.run_path(sys.argv[1]); print(time.perf_counter() - t)
"""


@pytest.mark.parametrize("file", sorted(p.name for p in (ROOT / "dags").glob("*.py")))
def test_dag_file_import_time_is_measured(file: str, report_line) -> None:
    """Each DAG file imported in a fresh interpreter; the time is reported in the summary (targets: `make bench`)."""
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_TIMER, str(ROOT / "dags" / file)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    seconds = float(out.stdout.strip().splitlines()[-1])
    report_line(f"DAG import time {file:<28} {seconds * 1000:7.1f} ms (fresh interpreter, Airflow pre-imported)")
    assert seconds > 0
