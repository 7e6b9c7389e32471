"""The pipelines' metrics reach Airflow's metrics system (event_streams.pipelines.metrics): Airflow's own StatsD
client, configured by ``[metrics]`` as in production, sends them to a UDP listener on 127.0.0.1; a known batch goes
through ``airflow_io.run_messages`` and ``SqsSource.settle`` and the documented names arrive with its figures."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine

from event_streams.pipelines import airflow_io, db, metrics, redelivery, sqs_source
from event_streams.pipelines.messages import Envelope

START = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
DAG = "inference_execution"


@pytest.fixture
def statsd(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A UDP listener, and Airflow's stats pointed at it through [metrics] (restored to off afterwards)."""
    from airflow.sdk.observability import stats
    from airflow.sdk.observability.metrics import stats_utils

    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(0.5)
    for key, value in {"STATSD_ON": "True", "STATSD_HOST": "127.0.0.1", "STATSD_PORT": str(listener.getsockname()[1]),
                       "STATSD_PREFIX": "airflow"}.items():
        monkeypatch.setenv(f"AIRFLOW__METRICS__{key}", value)
    stats.initialize(factory=stats_utils.get_stats_factory(), export_legacy_names=False)
    yield listener
    monkeypatch.delenv("AIRFLOW__METRICS__STATSD_ON")
    stats.initialize(factory=stats_utils.get_stats_factory(), export_legacy_names=False)
    listener.close()


def received(listener: socket.socket) -> list[str]:
    lines: list[str] = []
    while True:
        try:
            lines += listener.recv(65536).decode().splitlines()
        except TimeoutError:
            return lines


class Source:
    def take(self, envelopes: list[Envelope], dag_id: str) -> list[Envelope]:
        return list(envelopes)


def test_a_known_batch_sends_the_documented_metrics(statsd: socket.socket, engine: Engine,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "engine", lambda: engine)
    body = json.dumps({"submitted_at": (START - timedelta(seconds=2)).isoformat()})
    batch = [{"MessageId": f"m{i}", "ReceiptHandle": f"rh-{i}", "Body": body} for i in (1, 2, 3)]
    redelivery.record_failure(engine, DAG, "run-0", "answer_batch", ["m2"], "boom")  # m2 comes back once
    context: dict[str, Any] = {
        "dag_run": SimpleNamespace(dag_id=DAG, run_id="run-1", conf={"messages": [{"replayed": True}]},
                                   start_date=START),
        "ti": SimpleNamespace(task_id="answer_first_batch", start_date=None),
        "triggering_asset_events": {"asset": [SimpleNamespace(extra={"payload": {"message_batch": batch}})]},
    }
    messages = airflow_io.run_messages(context, "asset", Source(), produced_at_field="submitted_at")  # type: ignore[arg-type]
    assert len(messages) == 4

    monkeypatch.setenv("AIRFLOW_CTX_DAG_ID", DAG)  # what Airflow exports to a running task's environment
    monkeypatch.setattr(sqs_source, "settle_sqs", lambda *args: None)
    envelopes = airflow_io.to_envelopes(messages[:3])
    sqs_source.SqsSource("q", "dlq").settle(envelopes, [{"message_id": "m3", "reason": "not JSON"}])

    lines = received(statsd)
    name = f"airflow.{metrics.PREFIX}.{DAG}"
    counters = {line.split(":")[0]: line.split(":")[1] for line in lines if line.endswith("|c")}
    assert counters == {f"{name}.received": "4|c", f"{name}.redelivered": "1|c", f"{name}.replayed": "1|c",
                        f"{name}.processed": "2|c", f"{name}.dead_lettered": "1|c"}, lines
    ages = [line for line in lines if line.startswith(f"{name}.message_age:")]
    assert len(ages) == 3 and all(float(a.split(":")[1].split("|")[0]) == 2000.0 for a in ages), ages


class QueueAttributes:
    """The one SQS call the trigger's gauge makes, answered as ElasticMQ does."""

    async def get_queue_attributes(self, QueueUrl: str, AttributeNames: list[str]) -> dict[str, Any]:  # noqa: N803
        return {"Attributes": {"ApproximateNumberOfMessages": "7", "ApproximateNumberOfMessagesNotVisible": "3",
                               "ApproximateNumberOfMessagesDelayed": "0"}}


class Partitions:
    """The consumer calls the Kafka trigger's gauge makes: committed offsets, read positions, end offsets."""

    def committed(self, tps: list[Any], timeout: float) -> list[Any]:
        return [SimpleNamespace(topic=tp.topic, partition=tp.partition, offset={0: 40, 1: -1001}[tp.partition])
                for tp in tps]

    def position(self, tps: list[Any]) -> list[Any]:
        return [SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=45, error=None) for tp in tps]

    def get_watermark_offsets(self, tp: Any, timeout: float) -> tuple[int, int]:
        return 0, {0: 50, 1: 20}[tp.partition]


def test_the_triggers_send_their_brokers_gauges(statsd: socket.socket) -> None:
    import asyncio

    from event_streams.triggers import StreamingKafkaTrigger, StreamingSqsTrigger

    sqs = StreamingSqsTrigger(sqs_queue="http://127.0.0.1:9324/000000000000/inference-requests", gauge_seconds=30)
    assert asyncio.run(sqs.gauge(QueueAttributes())) == {"visible": 7, "in_flight": 3, "delayed": 0}
    assert asyncio.run(sqs.gauge(QueueAttributes())) is None  # not again before gauge_seconds
    kafka = StreamingKafkaTrigger(topics=["iot-readings"], group_id="airflow.iot_alerting")
    kafka._consumer, kafka._assigned = Partitions(), {("iot-readings", 0), ("iot-readings", 1)}
    kafka._config = {"group.id": "airflow.iot_alerting"}  # as the consumer, once open, has it
    # partition 0: 50 - 40 behind the commit, 5 unread; partition 1: no commit yet (not counted), 20 - 45 -> 0
    assert kafka.gauge() == {"iot-readings": {"lag": 10, "unread": 5}}
    gauges = {line.split("|")[0] for line in received(statsd) if line.endswith("|g")}
    assert gauges == {"airflow.event_streams.sqs.inference-requests.visible:7",
                      "airflow.event_streams.sqs.inference-requests.in_flight:3",
                      "airflow.event_streams.sqs.inference-requests.delayed:0",
                      "airflow.event_streams.kafka.airflow.iot_alerting.iot-readings.lag:10",
                      "airflow.event_streams.kafka.airflow.iot_alerting.iot-readings.unread:5"}
    off = StreamingSqsTrigger(sqs_queue="q", gauge_seconds=0)
    assert asyncio.run(off.gauge(QueueAttributes())) is None
