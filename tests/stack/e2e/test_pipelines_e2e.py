"""End to end on the real native stack: real Kafka, real ElasticMQ, real Airflow scheduler/triggerer/dag-processor/
api-server. Messages are published to the brokers; the assertions read the pipelines' database, the alert topic,
the reply queue and Airflow's own records of which asset events ran in which DAG run.

The module starts its own stack (the ``stack`` fixture of tests/conftest.py: its own state folder, the shared jar
cache) and stops it afterwards. Outside CI it skips, with the reason, when Java/Maven are missing or the stack's
ports are taken (e.g. by `make up`). `make test` runs it with Airflow on SQLite, `make test-postgres` runs it again
with Airflow on PostgreSQL (`DEVSTACK_DB=postgres`), what `astro dev start` uses.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sqlalchemy import create_engine, func, select, text

from devstack import publish
from devstack.summary import message_runs
from devstack.testing import Stack
from include.data_delivery_etl import tables as etl_tables
from include.iot_alerting.samples import expected_alerts


def test_airflow_runs_on_the_requested_metadata_database(stack: Stack, report_line) -> None:
    wanted = os.environ.get("DEVSTACK_DB", "sqlite")
    airflow = create_engine(stack.info["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert airflow.dialect.name == {"sqlite": "sqlite", "postgres": "postgresql"}[wanted]
    with airflow.connect() as conn:
        version = conn.execute(text("SELECT sqlite_version()" if wanted == "sqlite" else "SHOW server_version")).scalar()
        dags = conn.execute(text("SELECT COUNT(*) FROM dag WHERE NOT is_paused")).scalar_one()
    assert dags == 3
    report_line(f"e2e metadata database: {airflow.dialect.name} {version}")


def test_etl_loads_exactly_the_delivered_rows_and_quarantines_bad_files(stack: Stack) -> None:
    landing = Path(stack.info["LANDING_DIR"])
    good = publish.publish("etl", 4, rows=3, run_id="e2eetl", target=stack.target, landing_dir=landing)
    poison = publish.publish("etl", run_id="e2eetlp", poison=True, target=stack.target, landing_dir=landing)
    report = stack.collect(good + poison)
    assert report.ok, report.missing
    events = create_engine(stack.events_url)
    with events.connect() as conn:
        loaded = set(conn.execute(select(etl_tables.orders.c.order_id).where(etl_tables.orders.c.order_id.like("o-e2eetl-%"))).scalars())
        ledger = conn.execute(select(func.count()).select_from(etl_tables.etl_deliveries)).scalar_one()
    assert loaded == {o for r in good for o in r["expect"]["orders"]} and len(loaded) == 12
    assert ledger == 4
    assert report.outputs["quarantined"] == 1  # the missing file (the truncated one: a checksum mismatch, dead-lettered)
    assert report.outputs["dead_lettered"] == report.outputs["in_dlq"] == len(poison) - 1
    assert stack.queue_depth("data-deliveries") == 0, "every message is deleted once its effect is durable"
    # Each loading task emitted one events_db.orders event with what it loaded; the poison-only runs' say 0 rows.
    airflow = create_engine(stack.info["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    consumed = message_runs(airflow, "data_delivery_etl")
    good_runs = {consumed[r["message_id"]][0] for r in good}
    poison_only = {consumed[r["message_id"]][0] for r in poison} - good_runs
    announced = orders_events(airflow, good_runs | poison_only)
    assert sum(e["rows_loaded"] for e in announced.values()) == 12
    assert sorted(d for e in announced.values() for d in e["deliveries_loaded"]) == sorted(r["id"] for r in good)
    assert set(announced) == good_runs | poison_only, "every run's loading task emits an orders event"
    assert {announced[r]["rows_loaded"] for r in poison_only - good_runs} <= {0}


def orders_events(airflow, run_ids: set[str]) -> dict[str, dict]:
    """run_id -> the extra of each ``events_db.orders`` asset event a run of the ETL emitted (summed per run)."""
    sql = text("SELECT e.source_run_id, e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id"
               " WHERE a.name = 'events_db.orders' AND e.source_dag_id = 'data_delivery_etl'")
    out: dict[str, dict] = {}
    with airflow.connect() as conn:
        for run_id, extra in conn.execute(sql):
            if run_id in run_ids:
                extra = json.loads(extra) if isinstance(extra, str) else extra
                total = out.setdefault(run_id, {"rows_loaded": 0, "deliveries_loaded": []})
                total["rows_loaded"] += extra["rows_loaded"]
                total["deliveries_loaded"] += extra["deliveries_loaded"]
    return out


def test_iot_publishes_exactly_the_expected_alert_transitions(stack: Stack) -> None:
    records = publish.publish("iot", 12, devices=2, run_id="e2eiot", bootstrap=stack.bootstrap)
    poison = publish.publish("iot", run_id="e2eiotp", poison=True, bootstrap=stack.bootstrap)
    raised, cleared = expected_alerts(records)
    assert raised > 0 and cleared > 0, "the sample must exercise both transitions"
    report = stack.collect(records + poison)
    assert report.ok, report.missing
    assert (report.outputs["alerts_raised"], report.outputs["alerts_cleared"]) == (raised, cleared)
    assert report.outputs["alert_duplicates"] == 0
    assert report.rows == 12 and report.outputs["dead_lettered"] == report.outputs["in_dlq"] == len(poison)


def test_an_inference_burst_is_coalesced_and_every_request_answered_once_and_poison_dead_lettered(stack: Stack) -> None:
    records = publish.publish("inference", 60, run_id="e2einf", rate=0, target=stack.target)
    poison = publish.publish("inference", run_id="e2einfp", poison=True, target=stack.target)
    report = stack.collect(records + poison)
    assert report.ok, report.missing
    assert report.rows == 60 and report.outputs["replies"] == 60
    assert report.outputs["dead_lettered"] == report.outputs["in_dlq"] == len(poison)
    assert report.runs.total() < 60, f"{report.runs.total()} runs for 60 messages: nothing was coalesced"
    assert stack.queue_depth("inference-requests") == 0
    assert report.outputs["reply_duplicates"] == 0
