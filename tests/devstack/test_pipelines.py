"""The lab finds the pipelines (``devstack/pipelines.py``): every ``include/<dag_id>/samples.py`` with its
``SAMPLES``, and nothing else; the runner, the demo and the summary use what it finds."""

from __future__ import annotations

import itertools
import json
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest

from devstack import demo, pipelines, summary
from event_streams.pipelines.samples_api import PipelineSamples

_names = itertools.count()

SAMPLES_MODULE = '''
from event_streams.pipelines.samples_api import PipelineSamples, SinkCheck

SAMPLES = PipelineSamples(
    name={name!r}, dag_id={dag_id!r}, broker="sqs", source="q", dlq="q-dlq",
    messages=lambda run_id, count, **_: [], poison=lambda run_id, **_: [], check=lambda e, r, b: SinkCheck(),
)
'''


def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folders: dict[str, str | None]) -> str:
    """A fresh importable package with these folders: ``{folder: samples.py source, or None for none}``."""
    name = f"discovery_pkg_{next(_names)}"
    root = tmp_path / name
    root.mkdir()
    (root / "__init__.py").write_text("")
    for folder, source in folders.items():
        (root / folder).mkdir()
        (root / folder / "__init__.py").write_text("")
        if source is not None:
            (root / folder / "samples.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_the_project_has_exactly_its_three_pipelines() -> None:
    found = pipelines.pipelines()
    assert [(p.name, p.dag_id, p.broker) for p in found] == [
        ("etl", "data_delivery_etl", "sqs"), ("inference", "inference_execution", "sqs"), ("iot", "iot_alerting", "kafka")]
    assert all(isinstance(p, PipelineSamples) for p in found)
    dags = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "dags").glob("*.py"))
    assert [p.dag_id for p in found] == dags, "every DAG has a samples module, named like its folder"
    assert pipelines.get("iot").dag_id == "iot_alerting"
    with pytest.raises(KeyError, match="known: etl, inference, iot"):
        pipelines.get("orders")


def test_a_new_folder_with_a_samples_module_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = package(tmp_path, monkeypatch, {
        "billing_events": SAMPLES_MODULE.format(name="billing", dag_id="billing_events"),
        "another_flow": SAMPLES_MODULE.format(name="another", dag_id="another_flow"),
        "shared_core": None,  # a folder without a samples module (like the core, or models/) is not a pipeline
    })
    (tmp_path / pkg / "loose_file.py").write_text("")
    assert [(p.name, p.dag_id) for p in pipelines.discover(pkg)] == [
        ("another", "another_flow"), ("billing", "billing_events")]


@pytest.mark.parametrize(("folders", "error"), [
    ({"flow": "X = 1\n"}, "defines no SAMPLES"),
    ({"flow": SAMPLES_MODULE.format(name="f", dag_id="other_dag")}, "is not its folder's name"),
    ({"a_flow": SAMPLES_MODULE.format(name="f", dag_id="a_flow"),
      "b_flow": SAMPLES_MODULE.format(name="f", dag_id="b_flow")}, "share a short name"),
], ids=["no SAMPLES", "dag_id not the folder", "same short name"])
def test_a_samples_module_that_breaks_the_contract_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folders: dict[str, str], error: str
) -> None:
    with pytest.raises((TypeError, ValueError), match=error):
        pipelines.discover(package(tmp_path, monkeypatch, folders))


def test_the_runner_waits_for_every_pipeline_found() -> None:
    from devstack import stack

    if "DEVSTACK_DAG_IDS" in os.environ:
        pytest.skip("DEVSTACK_DAG_IDS names the DAGs here")
    assert set(stack.DAG_IDS) == {p.dag_id for p in pipelines.pipelines()}


def test_the_demo_publishes_each_pipelines_demo_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[str, int, dict[str, Any]]] = []

    def fake_publish(pipeline: str, count: int, **kwargs: Any) -> list[dict[str, Any]]:
        calls.append((pipeline, count, kwargs))
        return [{"pipeline": pipeline}] * count

    monkeypatch.setattr(demo.publish, "publish", fake_publish)
    env = {"SQS_ENDPOINT_URL": "http://sqs", "SQS_QUEUE_URL_PREFIX": "http://sqs/0", "KAFKA_BOOTSTRAP": "k:1",
           "LANDING_DIR": str(tmp_path)}
    records = demo.publish_all(env, "run1", scale=2)
    loads = [(p.name, 2 * d.count, d.rate, f"run1{d.run_suffix}") for p in pipelines.pipelines() for d in p.demo]
    assert sorted((c[0], c[1], c[2]["rate"], c[2]["run_id"]) for c in calls) == sorted(loads)
    assert len(records) == sum(n for _, n, _, _ in loads)
    etl = next(kw for name, _, kw in calls if name == "etl")
    assert etl["landing_dir"] == tmp_path and etl["rows"] == 5  # from the stack's env; the demo load's own
    assert all(c[2]["bootstrap"] == "k:1" and c[2]["target"].queue_url_prefix == "http://sqs/0" for c in calls)


class FakeReplyQueue:
    """receive_message / delete_message of one SQS queue: a received message stays hidden until a receive finds
    nothing more (the visibility timeout, between the summary's calls)."""

    def __init__(self, bodies: list[dict[str, Any]]) -> None:
        self.messages = [{"Body": json.dumps(b), "ReceiptHandle": f"rh-{i}"} for i, b in enumerate(bodies)]
        self.urls: set[str] = set()
        self.hidden: set[str] = set()

    def receive_message(self, QueueUrl: str, **_: Any) -> dict[str, Any]:  # noqa: N803
        self.urls.add(QueueUrl)
        batch = [m for m in self.messages if m["ReceiptHandle"] not in self.hidden][:10]
        self.hidden = self.hidden | {m["ReceiptHandle"] for m in batch} if batch else set()
        return {"Messages": batch}

    def delete_message(self, QueueUrl: str, ReceiptHandle: str) -> None:  # noqa: N803
        self.messages = [m for m in self.messages if m["ReceiptHandle"] != ReceiptHandle]


def test_the_summarys_reader_takes_wanted_replies_and_counts_copies_across_calls() -> None:
    sqs = FakeReplyQueue([{"correlation_id": "a"}, {"correlation_id": "b"}, {"correlation_id": "a"},
                          {"correlation_id": "someone-elses"}])
    taken: dict[str, dict] = {}
    brokers = summary.Brokers("k:1", sqs, "http://sqs/0", taken)
    assert brokers.take("replies", "correlation_id", {"a"}) == {"a": 2}
    assert sqs.urls == {"http://sqs/0/replies"}
    assert brokers.take("replies", "correlation_id", {"a", "b"}) == {"a": 2, "b": 1}  # "a" was taken before
    assert [json.loads(m["Body"])["correlation_id"] for m in sqs.messages] == ["someone-elses"]  # left for its owner
