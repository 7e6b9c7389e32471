"""HA suite (`make test-ha`): the scale-out profile (DEVSTACK_PROFILE=ha: PostgreSQL, CeleryExecutor on Redis, two
schedulers, two triggerers, two Celery workers) runs the same DAGs, and survives a `kill -9` of a component while
messages stream in on both brokers, with exactly-once effects in the sinks and nothing left in the queues/topics.

Which process owns a watcher or ran a task comes from Airflow's own records: the profile's hostname callable
(`devstack/hostname.py`) makes `job.hostname` and `task_instance.hostname` end in the component's name.
"""

from __future__ import annotations

import time
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from devstack import publish
from devstack.testing import Stack, in_background, result, wait_for
from include.iot_alerting.samples import expected_alerts

STACK_ENV = {"DEVSTACK_PROFILE": "ha"}
TAKEOVER_BOUND_S = 60


def _airflow(stack: Stack) -> Any:
    return _engine(stack.info["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])


@cache
def _engine(url: str) -> Any:
    """One engine (one pool) per database: the takeover wait polls twice a second."""
    return create_engine(url)


def watcher_owners(stack: Stack) -> dict[str, int]:
    """component name -> how many asset watchers' triggers its triggerer job holds."""
    sql = text('SELECT j.hostname, COUNT(*) FROM asset_watcher w JOIN "trigger" t ON t.id = w.trigger_id'
               " JOIN job j ON j.id = t.triggerer_id GROUP BY j.hostname")
    with _airflow(stack).connect() as conn:
        return {host.rsplit(":", 1)[-1]: n for host, n in conn.execute(sql)}


def _watchers(stack: Stack) -> int:
    with _airflow(stack).connect() as conn:
        return conn.execute(text("SELECT COUNT(*) FROM asset_watcher")).scalar_one()


def _stream(stack: Stack, run_id: str, count: int, rate: float) -> list[dict[str, Any]]:
    """``count`` inference requests (SQS) and ``count`` readings (Kafka), each at ``rate`` per second, at once."""
    requests = in_background(publish.publish, "inference", count, run_id=run_id, rate=rate, target=stack.target)
    readings = in_background(publish.publish, "iot", count, devices=8, run_id=run_id, rate=rate, bootstrap=stack.bootstrap)
    return result(*requests) + result(*readings)


def _assert_exactly_once(stack: Stack, records: list[dict[str, Any]], timeout: float = 300) -> dict[str, Any]:
    requests = [r for r in records if r["pipeline"] == "inference"]
    readings = [r for r in records if r["pipeline"] == "iot"]
    inference = stack.collect(requests, timeout=timeout)
    iot = stack.collect(readings, timeout=timeout)
    assert inference.ok, inference.missing[:5]
    assert iot.ok, iot.missing[:5]
    assert inference.rows == len(requests) and inference.outputs["reply_duplicates"] == 0
    assert iot.rows == len(readings)
    assert (iot.outputs["alerts_raised"], iot.outputs["alerts_cleared"]) == expected_alerts(readings)
    assert wait_for(lambda: stack.queue_depth("inference-requests") == 0, timeout=60), "requests left on the queue"
    offsets = wait_for(lambda: (o := stack.kafka_offsets("iot-readings")) and all(
        c == end or (end == 0 and c < 0) for c, end in o.values()) and o, timeout=120)  # an empty partition: no commit
    assert offsets, f"committed offsets short of the end of iot-readings: {stack.kafka_offsets('iot-readings')}"
    assert len(offsets) >= 6, "iot-readings has at least 6 partitions"
    return {"requests": len(requests), "readings": len(readings), "alerts": iot.outputs["alerts_raised"]
            + iot.outputs["alerts_cleared"]}


def test_every_pipeline_runs_on_two_celery_workers(stack: Stack, report_line) -> None:
    records = _stream(stack, "haok", 100, 0)
    figures = _assert_exactly_once(stack, records)
    with _airflow(stack).connect() as conn:
        hosts = conn.execute(text("SELECT hostname FROM task_instance WHERE state = 'success'")).scalars().all()
    workers = {h.rsplit(":", 1)[-1] for h in hosts}
    assert hosts and workers <= {"worker", "worker-2"}, workers  # LocalExecutor would say "scheduler"
    # Each worker's main process loaded the plugins, and so the model, before forking its pool (celery_worker.py):
    # task processes inherit it instead of loading it (~4 s per task at rest).
    run = Path(stack.info["DEVSTACK_RUN"])
    assert all("inference model pre-loaded" in (run / f"airflow-{w}.log").read_text() for w in ("worker", "worker-2"))
    owners = watcher_owners(stack)
    assert sum(owners.values()) == _watchers(stack) == 3 and set(owners) <= {"triggerer", "triggerer-2"}
    report_line(f"ha  pipelines on Celery: {figures}; tasks ran on {sorted(workers)}; watchers held by {owners}")


def test_killing_the_triggerer_that_owns_the_watchers_hands_them_to_the_other(stack: Stack, report_line) -> None:
    owners = watcher_owners(stack)
    victim = max(owners, key=owners.get)
    survivor = next(t for t in ("triggerer", "triggerer-2") if t != victim)
    publisher = in_background(_stream, stack, "hatrig", 400, 40)
    time.sleep(3)
    killed_at = time.monotonic()  # before the crash command: an upper bound of the takeover time
    stack.cli("crash", victim)
    took_over = wait_for(lambda: watcher_owners(stack) == {survivor: _watchers(stack)}, timeout=180, interval=0.5)
    takeover_s = time.monotonic() - killed_at
    records = result(*publisher)
    assert took_over, f"the watchers were not taken over: {watcher_owners(stack)}"
    figures = _assert_exactly_once(stack, records)
    last = max(datetime.fromisoformat(r["published_at"]).timestamp() for r in records)
    report_line(f"ha  kill -9 {victim} (held {owners.get(victim)} of 3 watchers) while 400+400 stream in: "
                f"{survivor} held all after {takeover_s:.1f}s; {figures}; all effects done "
                f"{time.time() - last:.0f}s after the last publish (upper bound)")
    stack.cli("start", victim)  # as a supervisor would
    assert takeover_s <= TAKEOVER_BOUND_S


def _runs_per_event(stack: Stack) -> int:
    """The most DAG runs any one asset event was consumed by (1: no run was created twice for the same events)."""
    sql = text("SELECT COALESCE(MAX(n), 0) FROM (SELECT COUNT(*) AS n FROM dagrun_asset_event GROUP BY event_id) c")
    with _airflow(stack).connect() as conn:
        return conn.execute(sql).scalar_one()


def test_killing_one_scheduler_leaves_the_other_creating_and_starting_runs(stack: Stack, report_line) -> None:
    publisher = in_background(_stream, stack, "hasched", 300, 30)
    time.sleep(3)
    stack.cli("crash", "scheduler")
    killed_at = time.time()
    figures = _assert_exactly_once(stack, result(*publisher))
    done_s = time.time() - killed_at
    with _airflow(stack).connect() as conn:
        # Queued after the kill, not started after it: a task the victim queued just before dying may start later
        # on a worker, and that is no sign of the victim being alive (CI at aadd479 saw exactly that).
        queued_by = conn.execute(text(
            "SELECT DISTINCT j.hostname FROM task_instance t JOIN job j ON j.id = t.queued_by_job_id"
            " WHERE t.queued_dttm > :k"), {"k": datetime.fromtimestamp(killed_at).astimezone()}).scalars().all()
    assert _runs_per_event(stack) == 1, "an asset event was consumed by two runs"
    assert {h.rsplit(":", 1)[-1] for h in queued_by} == {"scheduler-2"}, queued_by
    report_line(f"ha  kill -9 scheduler while 300+300 stream in: scheduler-2 queued every task after it; {figures};"
                f" every asset event in exactly one run; all effects done within {done_s:.0f}s of the kill")
    stack.cli("start", "scheduler")


def test_killing_a_worker_mid_task_retries_the_task_on_the_other(stack: Stack, report_line) -> None:
    marker = Path(stack.info["EVENTS_FAULTS_DIR"]) / "iot.before_commit"
    marker.write_text("hang:600")
    records = publish.publish("iot", 20, devices=2, run_id="haworker", bootstrap=stack.bootstrap)
    assert wait_for(lambda: not marker.exists(), timeout=120), "no task reached the fault point"
    # Runs overlap (max_active_runs > 1): a later run's task may be running too, waiting for this one's readings
    # (per-partition order). The task at the fault point is the one that started first.
    sql = text("SELECT hostname, run_id FROM task_instance WHERE dag_id = 'iot_alerting' AND state = 'running'"
               " ORDER BY start_date LIMIT 1")
    with _airflow(stack).connect() as conn:
        host, run_id = conn.execute(sql).one()
    victim = host.rsplit(":", 1)[-1]
    survivor = next(w for w in ("worker", "worker-2") if w != victim)
    stack.cli("crash", victim)
    killed_at = time.time()
    report = stack.collect(records, timeout=300)
    assert report.ok, report.missing
    with _airflow(stack).connect() as conn:
        end, tries, last_host = conn.execute(text(
            "SELECT end_date, try_number, hostname FROM task_instance WHERE dag_id = 'iot_alerting' AND run_id = :r"),
            {"r": run_id}).one()
    recovered_s = (end if isinstance(end, datetime) else datetime.fromisoformat(str(end))).timestamp() - killed_at
    assert tries >= 2 and last_host.rsplit(":", 1)[-1] == survivor
    assert report.rows == 20
    report_line(f"ha  kill -9 {victim} mid-task: retried on {survivor} (try {tries}), done {recovered_s:.0f}s after the"
                f" kill; readings={report.rows}")
    stack.cli("start", victim)
    assert recovered_s <= 60 + 10 + 40
