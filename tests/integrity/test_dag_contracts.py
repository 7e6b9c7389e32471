"""Integrity tests of our own: what each DAG is scheduled on, which trigger watches it, which connections it
needs, that parsing is warning-free, and how long each DAG file takes to import (reported, not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.definitions.timetables.assets import AssetTriggeredTimetable

from event_streams.pipelines import config
from include.inference_execution import settings as inference_settings
from include.iot_alerting import settings as iot_settings

ROOT = Path(__file__).resolve().parents[2]

# dag_id: (file, max_active_runs predicate)
EXPECTED = {
    "data_delivery_etl": ("data_delivery_etl.py", lambda n: n >= 1),
    # device state is applied in order: a run waits for the ones before it, holding an executor slot while it does,
    # so a few runs at most (the native runner has 4 slots in all)
    "iot_alerting": ("iot_alerting.py", lambda n: 1 <= n <= 4),
    "inference_execution": ("inference_execution.py", lambda n: n > 1),  # runs overlap
}
# What the triggerer will run for each DAG (the serialized classpath): the streaming triggers of the schemes the DAGs
# name (sqs+stream, kafka+stream: providers/event-streams), and with EVENT_STREAMS_TRIGGERS=stock the stock provider
# triggers with their defaults, as in Astronomer's guide: the benchmark's baseline.
TRIGGERS = {
    "stream": {
        "data_delivery_etl": "event_streams.triggers.StreamingSqsTrigger",
        "iot_alerting": "event_streams.triggers.StreamingKafkaTrigger",
        "inference_execution": "event_streams.triggers.StreamingSqsTrigger",
    },
    "guide": {
        "data_delivery_etl": "airflow.providers.amazon.aws.triggers.sqs.SqsSensorTrigger",
        "iot_alerting": "airflow.providers.apache.kafka.triggers.await_message.AwaitMessageTrigger",
        "inference_execution": "airflow.providers.amazon.aws.triggers.sqs.SqsSensorTrigger",
    },
    # Airflow 3.3's shared stream for Kafka; no shared-stream SQS trigger has shipped (amazon 9.39): the stock one
    "shared": {
        "data_delivery_etl": "airflow.providers.amazon.aws.triggers.sqs.SqsSensorTrigger",
        "iot_alerting": "airflow.providers.apache.kafka.triggers.shared_stream.KafkaSharedStreamTrigger",
        "inference_execution": "airflow.providers.amazon.aws.triggers.sqs.SqsSensorTrigger",
    },
}
SCHEMES = {"stream": {}, "guide": {"EVENT_STREAMS_TRIGGERS": "stock"}, "shared": {"EVENT_STREAMS_TRIGGERS": "shared"}}
WATCHERS_OF_MODE = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
out = {}
for dag in bag.dags.values():
    for asset in dag.timetable.asset_condition.objects:
        for w in asset.watchers:
            path, kwargs = w.trigger.serialize()
            out[dag.dag_id] = {"wrapper": type(w.trigger).__name__, "classpath": path, "kwargs": kwargs}
print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()}, "watchers": out}, default=str))
"""


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(dag_folder=str(ROOT / "dags"))


@pytest.fixture(scope="module", params=sorted(SCHEMES))
def watchers(request: pytest.FixtureRequest) -> tuple[str, dict]:
    """The watcher triggers as the DAGs declare them with the mode's schemes (parsed in a fresh process)."""
    env = {k: v for k, v in os.environ.items() if k != "EVENT_STREAMS_TRIGGERS"}
    env.update(SCHEMES[request.param], PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", WATCHERS_OF_MODE, str(ROOT / "dags")], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)
    parsed = json.loads(out.stdout.strip().splitlines()[-1])
    assert parsed["errors"] == {}
    return request.param, parsed["watchers"]


def test_exactly_the_three_pipelines_parse(dagbag: DagBag) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == set(EXPECTED)


def test_parsing_emits_no_warnings(dagbag: DagBag) -> None:
    assert dagbag.captured_warnings == {}


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_each_dag_is_asset_scheduled_with_one_watcher(dagbag: DagBag, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    file, runs_ok = EXPECTED[dag_id]
    assert Path(dag.fileloc).name == file
    assert isinstance(dag.timetable, AssetTriggeredTimetable), f"{dag_id} is not asset-scheduled"
    assert [len(a.watchers) for a in dag.timetable.asset_condition.objects] == [1]
    assert runs_ok(dag.max_active_runs), f"{dag_id}: max_active_runs={dag.max_active_runs}"
    assert dag.default_args["retries"] >= 2 and dag.tags and dag.doc_md


@pytest.mark.parametrize("file", sorted(f for f, _ in EXPECTED.values()))
def test_every_dag_declares_its_watcher_with_message_queue_trigger(file: str) -> None:
    text = (ROOT / "dags" / file).read_text()
    assert "MessageQueueTrigger(" in text
    # one scheme, written out: the benchmark's baseline is chosen in the provider, not by a switch in the DAG
    assert 'scheme="sqs+stream"' in text or 'scheme="kafka+stream"' in text
    assert "EVENT_STREAMS_TRIGGERS" not in text and "WATCHER_SCHEME" not in text


def test_watchers_run_the_intended_trigger_in_each_mode(watchers: tuple[str, dict]) -> None:
    mode, found = watchers
    assert {d: w["classpath"] for d, w in found.items()} == TRIGGERS[mode]
    assert {w["wrapper"] for w in found.values()} == {"MessageQueueTrigger"}  # the scheme= form, in every mode


def test_kafka_watcher_applies_the_project_record_form(watchers: tuple[str, dict]) -> None:
    mode, found = watchers
    kwargs = found["iot_alerting"]["kwargs"]
    assert kwargs["topics"] == [iot_settings.IOT_READINGS_TOPIC] and kwargs["kafka_config_id"] == config.KAFKA_CONN_ID
    if mode == "shared":  # Airflow's shared stream takes no apply function: each event is a record's value
        assert (kwargs["poll_timeout"], kwargs["dlq_topic"]) == (1.0, None) and "apply_function" not in kwargs
        return
    assert kwargs["apply_function"] == "event_streams.pipelines.messages.kafka_message_to_event"
    if mode == "guide":  # the provider's defaults, unsafe as they are (commits before the event is stored)
        assert (kwargs["poll_timeout"], kwargs["poll_interval"], kwargs["commit_offset"]) == (1, 5, True)
    else:  # its own consumer group, not the connection's: a second DAG on the topic does not share its offsets
        assert kwargs["group_id"] == iot_settings.IOT_KAFKA_GROUP_ID == "airflow.iot_alerting"
        assert kwargs["settled_conn_id"] == config.DB_CONN_ID  # where it resumes if the broker dropped its offsets


def test_sqs_watchers_never_delete_on_reception_and_long_poll(watchers: tuple[str, dict]) -> None:
    mode, found = watchers
    for dag_id in ("data_delivery_etl", "inference_execution"):
        kwargs = found[dag_id]["kwargs"]
        assert kwargs["sqs_queue"].startswith(config.SQS_QUEUE_URL_PREFIX)
        if mode in ("guide", "shared"):  # the benchmark's baseline must be the provider's defaults, unsafe as they are
            assert (kwargs["delete_message_on_reception"], kwargs["waiter_delay"], kwargs["wait_time_seconds"],
                    kwargs["max_messages"]) == (True, 60, 1, 5), dag_id
            continue
        assert kwargs["wait_time_seconds"] == 20, dag_id
        # short: a message received by a triggerer that died is received again within this bound; once its event
        # is stored, extended to the run's budget (the same SQS_VISIBILITY_TIMEOUT the run's first task sets)
        assert 5 <= kwargs["visibility_timeout"] <= 60, dag_id
        assert kwargs["handover_visibility_timeout"] == config.SQS_VISIBILITY_TIMEOUT, dag_id


def _importable(dotted: str, cwd: Path, env: dict[str, str]) -> bool:
    module, attr = dotted.rsplit(".", 1)
    code = f"import importlib; print(callable(getattr(importlib.import_module({module!r}), {attr!r})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)
    return out.stdout.strip() == "True"


def test_trigger_code_is_importable_outside_dags(watchers: tuple[str, dict], tmp_path: Path) -> None:
    """The triggerer does not import from the DAG bundle: classes and apply functions must come from elsewhere.
    The stored trigger classes are installed (site-packages): importable with neither the project nor dags/ on the
    path; apply functions come from the project's include/."""
    _, found = watchers
    bare = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for classpath in sorted({w["classpath"] for w in found.values()}):
        assert not classpath.startswith(("dags", "include")), classpath
        assert _importable(classpath, tmp_path, bare), classpath
    for apply in sorted({w["kwargs"].get("apply_function") for w in found.values()} - {None}):
        assert not apply.startswith("dags")
        assert _importable(apply, ROOT, {**bare, "PYTHONPATH": str(ROOT)}), apply


def _seeded_conn_ids() -> set[str]:
    settings = yaml.safe_load((ROOT / "airflow_settings.yaml").read_text())
    return {c["conn_id"] for c in settings["airflow"]["connections"]}


def test_every_connection_the_dags_use_is_seeded(watchers: tuple[str, dict]) -> None:
    used = {config.AWS_CONN_ID, config.KAFKA_CONN_ID, config.DB_CONN_ID, inference_settings.INFERENCE_HTTP_CONN_ID}
    for w in watchers[1].values():
        used |= {v for k, v in w["kwargs"].items() if k.endswith(("conn_id", "config_id")) and v}
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
before = set(sys.modules)
t = time.perf_counter(); runpy.run_path(sys.argv[1]); print(time.perf_counter() - t)
print(" ".join(sorted({m.split(".")[0] for m in set(sys.modules) - before})))
"""
# What parsing a DAG file must not import: the model stack and the broker clients load in the task, not the parser.
HEAVY_AT_RUN_TIME_ONLY = {"sklearn", "numpy", "joblib", "boto3", "botocore", "aiobotocore", "confluent_kafka"}


@pytest.mark.parametrize("file", sorted(p.name for p in (ROOT / "dags").glob("*.py")))
def test_dag_file_import_time_is_measured(file: str, report_line) -> None:
    """Each DAG file imported in a fresh interpreter; the time is reported in the summary (targets: `make bench`)."""
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_TIMER, str(ROOT / "dags" / file)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    timing, imported = out.stdout.splitlines()[-2:]
    seconds = float(timing)
    report_line(f"DAG import time {file:<28} {seconds * 1000:7.1f} ms (fresh interpreter, Airflow pre-imported)")
    assert not HEAVY_AT_RUN_TIME_ONLY & set(imported.split()), f"parsing {file} imports {imported}"


@pytest.mark.parametrize("file", sorted(p.name for p in (ROOT / "dags").glob("*.py")))
def test_every_module_attribute_a_dag_file_uses_exists(file: str) -> None:
    """``settings.X`` / ``config.X`` / ``clients.X`` inside task bodies run only in a task: parsing would not catch a
    name that moved (it happened: ``config.IOT_ALERTS_TOPIC`` after the topics moved to the pipeline's settings)."""
    import ast
    import importlib

    tree = ast.parse((ROOT / "dags" / file).read_text())
    modules = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("include"):
            for alias in node.names:
                target = importlib.import_module(node.module)
                value = getattr(target, alias.name, None)
                if value is None:
                    value = importlib.import_module(f"{node.module}.{alias.name}")
                modules[alias.asname or alias.name] = value
    missing = [
        f"{node.value.id}.{node.attr} (line {node.lineno})"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
        and isinstance(modules[node.value.id], type(ast)) and not hasattr(modules[node.value.id], node.attr)
    ]
    assert not missing, f"{file} uses names its modules do not define: {missing}"


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_each_task_pushes_one_xcom_at_most(dagbag: DagBag, dag_id: str) -> None:
    """A TaskFlow task annotated ``-> dict[...]`` pushes one XCom per key unless told otherwise: each is an API call
    and a metadata-database write in every run (IoT's task made six)."""
    many = [t.task_id for t in dagbag.dags[dag_id].tasks if getattr(t, "multiple_outputs", False)]
    assert not many, f"{dag_id}: tasks pushing one XCom per key: {many}"
