"""The summary (``devstack/summary.py``) on a stand-in of Airflow's tables: Airflow's side (runs, tasks, latency,
shared dead letters) is its own, each pipeline's sinks are its samples module's check, found by name in the records."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from devstack import summary
from event_streams import payload
from event_streams.pipelines.messages import Envelope
from event_streams.pipelines.samples_api import iso
from include.inference_execution.pipeline import answer_requests
from include.inference_execution.samples import messages
from include.inference_execution.schemas import InferenceReply

T0 = datetime(2026, 11, 24, 8, 0, tzinfo=timezone.utc)
AIRFLOW_TABLES = (
    "CREATE TABLE asset_event (id INTEGER PRIMARY KEY, asset_id INTEGER, extra TEXT, timestamp TIMESTAMP)",
    "CREATE TABLE dagrun_asset_event (dag_run_id INTEGER, event_id INTEGER)",
    "CREATE TABLE dag_run (id INTEGER PRIMARY KEY, dag_id TEXT, run_id TEXT, queued_at TIMESTAMP,"
    " start_date TIMESTAMP, end_date TIMESTAMP, state TEXT)",
    "CREATE TABLE task_instance (dag_id TEXT, run_id TEXT, start_date TIMESTAMP, state TEXT)",
)


class HotIsFailing:
    version = "test"

    def predict_proba(self, rows: list[Any]) -> list[float]:
        return [0.9 if r.temperature_c > 80 else 0.1 for r in rows]


class ReplyQueue:
    def __init__(self, replies: list[InferenceReply]) -> None:
        self.messages = [{"Body": r.model_dump_json(), "ReceiptHandle": f"rh-{i}"} for i, r in enumerate(replies)]

    def receive_message(self, **_: Any) -> dict[str, Any]:
        batch, self.messages = self.messages[:10], self.messages[10:]
        return {"Messages": batch}

    def delete_message(self, **_: Any) -> None:
        pass


def test_a_report_joins_airflows_runs_with_the_pipelines_own_sink_check(tmp_path: Path) -> None:
    msgs = list(messages("sum", 3, seed=1))
    sqs_messages = [{"MessageId": f"m-{i}", "Body": m.body.decode(), "ReceiptHandle": f"rh-{i}"} for i, m in enumerate(msgs)]
    records = [{"pipeline": "inference", "id": m.id, "message_id": f"m-{i}", "published_at": iso(T0), "expect": m.expect}
               for i, m in enumerate(msgs)]
    airflow_url = f"sqlite:///{tmp_path / 'airflow.db'}"
    with create_engine(airflow_url).begin() as conn:
        for ddl in AIRFLOW_TABLES:
            conn.execute(text(ddl))
        conn.execute(text("INSERT INTO asset_event VALUES (1, 1, :extra, :t)"),
                     {"extra": json.dumps({"payload": {payload.MESSAGE_BATCH: sqs_messages}}), "t": T0})
        conn.execute(text("INSERT INTO dag_run VALUES (7, 'inference_execution', 'r1', :q, :s, :e, 'success')"),
                     {"q": T0, "s": T0 + timedelta(seconds=2), "e": T0 + timedelta(seconds=5)})
        conn.execute(text("INSERT INTO dagrun_asset_event VALUES (7, 1)"))
        conn.execute(text("INSERT INTO task_instance VALUES ('inference_execution', 'r1', :s, 'success')"),
                     {"s": T0 + timedelta(seconds=3)})
    events_url = f"sqlite:///{tmp_path / 'events.db'}"
    summary.collect([], airflow_url, events_url, bootstrap="unused:1", sqs=None, queue_url_prefix="http://q",
                    timeout=0)  # creates the events schema
    sent: list[InferenceReply] = []
    answer_requests([Envelope.from_sqs(m) for m in sqs_messages[:2]], create_engine(events_url), HotIsFailing(),
                    sent.extend)  # the third request was never answered

    reports = summary.collect(records, airflow_url, events_url, bootstrap="unused:1", sqs=ReplyQueue(sent),
                              queue_url_prefix="http://q", timeout=0)
    [(name, report)] = reports.items()
    assert name == report.pipeline == "inference" and report.published == 3
    assert dict(report.runs) == {"success": 1} and dict(report.tasks) == {"success": 1}
    assert report.latencies == [2.0] * 3 and report.task_latencies == [3.0] * 3
    assert report.rows == 2 and report.outputs == {"dead_lettered": 0, "replies": 2, "reply_duplicates": 0}
    assert report.missing == ["1 of 3 predictions not stored", "1 of 3 replies not received"] and not report.ok
    assert summary.render(reports).splitlines()[1].endswith("MISSING")
    assert summary.statistics_of(reports)["inference"]["ok"] is False
