"""``make demo``: publish sample events for all three pipelines to the running native stack, then summarize.

Publishes deliveries (SQS), sensor readings (Kafka, paced) and inference requests (SQS, paced, plus a burst
that the scheduler coalesces into fewer runs), prints progress while the runs happen, then a summary per pipeline:
messages published, DAG runs and task states, rows written, alerts and replies, publish -> run-start latency.
Exits 1 if anything expected is missing after the deadline.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from devstack import publish, stack, summary


def publish_all(env: dict[str, str], run_id: str, scale: float = 1.0) -> list[dict[str, Any]]:
    landing = Path(env["LANDING_DIR"])
    sqs_kwargs = {"target": publish.SqsTarget(env["SQS_ENDPOINT_URL"], env["SQS_QUEUE_URL_PREFIX"], "us-east-1")}
    jobs = {
        "etl": lambda: publish.publish_etl(int(10 * scale), run_id=run_id, rate=5, rows=5, landing_dir=landing, **sqs_kwargs),
        "iot": lambda: publish.publish_iot(int(30 * scale), devices=3, run_id=run_id, rate=5, bootstrap=env["KAFKA_BOOTSTRAP"]),
        "inference": lambda: publish.publish_inference(int(50 * scale), run_id=run_id, rate=10, **sqs_kwargs),
        "burst": lambda: publish.publish_inference(int(100 * scale), run_id=f"{run_id}0", rate=0, **sqs_kwargs),
    }
    results: dict[str, list[dict[str, Any]]] = {}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            results[name] = jobs[name]()
        except BaseException as exc:  # reported after every publisher finished
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(name,)) for name in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    for name, records in results.items():
        print(f"published {len(records):>4} {name} messages")
    return [r for records in results.values() for r in records]


def progress(reports: dict[str, summary.Report]) -> None:
    parts = [f"{p}: {r.runs.total()} runs, {r.rows} rows, {len(r.missing)} gaps" for p, r in reports.items()]
    print("  waiting... " + " | ".join(parts), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=240)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every message count")
    parser.add_argument("--json", type=Path, help="also write the summary as JSON here")
    args = parser.parse_args(argv)

    env = stack.airflow_env()
    run_id = publish.new_run_id()
    started = time.monotonic()
    records = publish_all(env, run_id, args.scale)
    sqs = publish.make_sqs_client(env["SQS_ENDPOINT_URL"], "us-east-1")
    reports = summary.collect(
        records,
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
        f"sqlite:///{stack.DATA / 'events.db'}",
        bootstrap=env["KAFKA_BOOTSTRAP"],
        alerts_topic="iot-alerts",
        sqs=sqs,
        reply_queue_url=f"{env['SQS_QUEUE_URL_PREFIX']}/inference-replies",
        timeout=args.timeout,
        on_progress=progress,
    )
    print(f"\nSummary (run id {run_id}, {time.monotonic() - started:.0f}s; p50 and p95: publish -> DAG run start; task50: publish -> the run's first task start)")
    print(summary.render(reports))
    if args.json:
        args.json.write_text(json.dumps(summary.statistics_of(reports), indent=2, default=str))
    return 0 if all(r.ok for r in reports.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
