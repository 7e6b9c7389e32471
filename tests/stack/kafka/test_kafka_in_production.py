"""Kafka in production (`make test-kafka`), through Airflow on the real stack: what needs a scheduler and a triggerer.

- A second DAG on the topic of `iot_alerting` (`tests/stack/kafka/dags/iot_readings_audit.py`): each watcher reads and
  commits in its own consumer group, so both DAGs see every record exactly once, and one of them being paused holds
  back only its own committed offset.
- A run that fails for good between readings of one device: the later readings are held behind it and applied
  after it, so the alerts are those of the in-order evaluation.

The trigger-level cases (transactions, compaction, a busy group, expired offsets, large keys, headers) are in
`tests/stack/integration/test_brokers_smoke.py`, which `make test-kafka` runs first. This stack re-reads after 60 s
(`KAFKA_REDELIVERY_SECONDS`): longer than a run takes to fail for good (4 attempts, 10 s apart), so that the run
after it starts before the re-read.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import create_engine, func, inspect, select, text

from devstack import publish
from devstack.stack import PROJECT
from devstack.testing import Stack, wait_for
from event_streams.pipelines import db
from include.iot_alerting import samples as iot_samples
from include.iot_alerting import tables as iot_tables

AUDIT_GROUP = "airflow.iot_readings_audit"
BUNDLES = [
    {"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle", "kwargs": {}},
    {"name": "e2e-dags", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
     "kwargs": {"path": str(PROJECT / "tests" / "stack" / "kafka" / "dags")}},
]
STACK_ENV = {
    "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(BUNDLES),
    "DEVSTACK_DAG_IDS": "data_delivery_etl,iot_alerting,inference_execution,iot_readings_audit",
    "KAFKA_REDELIVERY_SECONDS": "60",
    "MAX_FAILED_RUNS": "2",
}


def _audited(stack: Stack, ids: set[str]) -> set[str]:
    engine = create_engine(stack.events_url)
    if not inspect(engine).has_table("iot_readings_audit"):
        return set()
    with engine.connect() as conn:
        return {m for (m,) in conn.execute(text("SELECT message_id FROM iot_readings_audit")) if m in ids}


def _at_end(stack: Stack, group: str | None = None) -> bool:
    return all(c == end or (end == 0 and c < 0) for c, end in stack.kafka_offsets("iot-readings", group).values())


def test_a_second_dag_on_the_topic_reads_every_record_in_its_own_group(stack: Stack, report_line) -> None:
    first = publish.publish("iot", 100, devices=10, run_id="shared1", bootstrap=stack.bootstrap)
    report = stack.collect(first, timeout=240)
    assert report.ok, report.missing  # iot_alerting: every reading once, the alerts of the in-order evaluation
    ids = {r["message_id"] for r in first}
    assert wait_for(lambda: _audited(stack, ids) == ids, timeout=180), len(_audited(stack, ids))
    assert wait_for(lambda: _at_end(stack) and _at_end(stack, AUDIT_GROUP), timeout=120), (
        stack.kafka_offsets("iot-readings"), stack.kafka_offsets("iot-readings", AUDIT_GROUP))

    # The audit DAG paused: iot_alerting settles 100 more and commits to the end; the audit group stays behind
    # them, and reads them all once unpaused.
    stack.airflow("dags", "pause", "iot_readings_audit")
    time.sleep(15)  # the watcher goes away with the pause
    second = publish.publish("iot", 100, devices=10, run_id="shared2", bootstrap=stack.bootstrap)
    assert stack.collect(second, timeout=240).ok
    assert wait_for(lambda: _at_end(stack), timeout=120), stack.kafka_offsets("iot-readings")
    behind = stack.kafka_offsets("iot-readings", AUDIT_GROUP)
    assert sum(end - max(c, 0) for c, end in behind.values()) == 100, behind
    stack.airflow("dags", "unpause", "iot_readings_audit")
    both = ids | {r["message_id"] for r in second}
    assert wait_for(lambda: _audited(stack, both) == both, timeout=180), len(_audited(stack, both))
    assert wait_for(lambda: _at_end(stack, AUDIT_GROUP), timeout=120), stack.kafka_offsets("iot-readings", AUDIT_GROUP)
    audit_deliveries = stack.deliveries("iot_readings_audit", both)
    assert set(audit_deliveries) == both
    report_line(f"shared topic: iot_alerting and iot_readings_audit each stored 200/200 readings in their own group; "
                f"with the audit paused its lag was {sum(end - max(c, 0) for c, end in behind.values())} while "
                f"iot_alerting committed to the end; audit deliveries {sum(audit_deliveries.values())} for "
                f"{len(both)} records")


def _failed_runs(stack: Stack, ids: set[str]) -> dict[str, int]:
    """message id -> in how many runs of iot_alerting that failed for good it was."""
    t = db.message_failures
    with create_engine(stack.events_url).connect() as conn:
        return dict(conn.execute(select(t.c.message_id, func.count()).where(
            t.c.dag_id == "iot_alerting", t.c.message_id.in_(sorted(ids))).group_by(t.c.message_id)).all())


def test_a_devices_readings_stay_in_order_when_a_run_between_them_fails_for_good(stack: Stack, report_line) -> None:
    """One device, eight readings: the run of the first four fails for good (once; the limit is 2), the last four
    arrive while it waits to be read again. The later run must not apply them first (they would make the earlier
    ones "not newer" and change the alerts): they are held behind the unsettled readings and applied after them.
    The alerts on the topic are then those of the in-order evaluation, and the state is that of the last reading."""
    for seed in range(100):  # both halves change the device's state: the order is visible in the alerts
        messages = list(iot_samples.messages("order", 8, devices=1, seed=seed))
        if all(any(m.expect.get("transition") for m in half) for half in (messages[:4], messages[4:])):
            break
    marker = Path(stack.info["EVENTS_FAULTS_DIR"]) / "iot.before_commit"
    marker.write_text("times:4")  # the first run's four attempts (retries=3) fail there, then none
    producer = publish.make_producer(stack.bootstrap)
    started = first_published = time.time()
    first = publish.send_kafka("iot", producer, "iot-readings", messages[:4])
    airflow = create_engine(stack.info["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    retrying = text("SELECT COUNT(*) FROM task_instance WHERE dag_id = 'iot_alerting' AND state = 'up_for_retry'")
    with airflow.connect() as conn:
        assert wait_for(lambda: conn.execute(retrying).scalar_one(), timeout=120), "the first run never failed"
    # while the first run retries, the later readings arrive: their run starts beside it (max_active_runs > 1) and
    # waits for it; once it has failed for good, the later run holds them, before the watcher reads the failed
    # readings again
    second = publish.send_kafka("iot", producer, "iot-readings", messages[4:])
    ids = {r["message_id"] for r in first}
    assert wait_for(lambda: set(_failed_runs(stack, ids)) == ids, timeout=180)
    took = time.time() - started
    started = time.time()
    report = stack.collect(first + second, timeout=300, until_finished=False)
    assert not report.missing, report.missing  # every reading stored once, the alerts the in-order rules say
    assert report.outputs["alerts_out_of_order"] == 0 and report.outputs["alert_duplicates"] == 0
    assert not marker.exists() and report.runs["failed"] == 1, report.runs
    # the report counts one run per message; Airflow's own table has them all: the one that failed for good, the
    # one that held the later readings (they were delivered to it), the one that applied all eight after the re-read
    since = {"t": datetime.fromtimestamp(first_published, timezone.utc).replace(tzinfo=None)}
    states = text("SELECT state FROM dag_run WHERE dag_id = 'iot_alerting' AND start_date >= :t")

    def finished() -> list[str] | None:  # the last run may still be finishing its bookkeeping
        with airflow.connect() as conn:
            found = sorted(conn.execute(states, since).scalars().all())
        return found if found and all(s in ("failed", "success") for s in found) else None

    runs = wait_for(finished, timeout=60)
    assert runs == ["failed", "success", "success"], runs
    held = stack.deliveries("iot_alerting", {r["message_id"] for r in second})
    assert min(held.values()) >= 2, held  # delivered to the run that held them, then again after the failed ones
    with create_engine(stack.events_url).connect() as conn:
        state = conn.execute(select(iot_tables.iot_device_state).where(
            iot_tables.iot_device_state.c.device_id == "dev-order-0")).mappings().one()
        outbox = conn.execute(select(func.count()).select_from(iot_tables.iot_alert_outbox)).scalar_one()
    kinds = [m.expect["transition"] for m in messages if m.expect.get("transition")]
    last = json.loads(messages[-1].body)
    assert (state["alerting"], state["last_value"]) == (kinds[-1] == "raised", last["value"]) and outbox == 0
    assert wait_for(lambda: _at_end(stack), timeout=120), stack.kafka_offsets("iot-readings")
    report_line(f"kafka run failed for good between readings: 8 readings of one device, alerts {kinds} in "
                f"order; runs {sorted(runs)}; the later 4 delivered {sorted(held.values())} times (held, then "
                f"re-read); failing phase {took:.0f}s, all applied {time.time() - started:.0f}s after it")
