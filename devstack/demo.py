"""``make demo``: publish sample events for every pipeline to the running native stack, then summarize.

Publishes what each pipeline's samples module asks for (``DemoLoad``: deliveries on SQS, sensor readings on Kafka,
paced, inference requests, paced, plus a burst that the scheduler coalesces into fewer runs), prints progress while
the runs happen, then a summary per pipeline: messages published, DAG runs and task states, rows written, alerts
and replies, publish -> run-start latency. Exits 1 if anything expected is missing after the deadline.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from devstack import pipelines, publish, stack, summary
from event_streams.pipelines.samples_api import DemoLoad, PipelineSamples


def publish_all(env: dict[str, str], run_id: str, scale: float = 1.0) -> list[dict[str, Any]]:
    """Every pipeline's demo loads at once, one publisher thread each; the stack's ``env`` gives the brokers and the
    options a pipeline reads from the environment (the ETL's landing folder)."""
    brokers: dict[str, Any] = {"target": publish.SqsTarget(env["SQS_ENDPOINT_URL"], env["SQS_QUEUE_URL_PREFIX"], "us-east-1"),
                               "bootstrap": env["KAFKA_BOOTSTRAP"]}

    def job(spec: PipelineSamples, load: DemoLoad) -> Any:
        from_env = {o.name: o.type(env[o.env]) for o in spec.options if o.env and o.env in env}
        return lambda: publish.publish(spec.name, int(load.count * scale), run_id=f"{run_id}{load.run_suffix}",
                                       rate=load.rate, **brokers, **{**from_env, **load.options})

    jobs = {load.label or spec.name: job(spec, load) for spec in pipelines.pipelines() for load in spec.demo}
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
        sqs=sqs,
        queue_url_prefix=env["SQS_QUEUE_URL_PREFIX"],
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
