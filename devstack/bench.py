"""``make bench``: event-to-run latency and throughput on the real local stack, guide settings vs this project's.

For each settings (``guide``: ``MessageQueueTrigger`` with the provider's defaults, as in Astronomer's guide;
``project``: this project's streaming triggers) a fresh native stack is started, and for each broker (SQS through
``inference_execution``, Kafka through ``iot_alerting``) three workloads are published:

* ``latency``: single messages spaced apart; p50/p95/max of publish -> DAG run start;
* ``burst``: many messages at once; ``max_s`` is first publish -> last run finished;
* ``sustained``: a steady rate for a while; ``msgs_per_s`` is the rate into asset events.

Every hop comes from Airflow's own records (``asset_event.timestamp``, ``dag_run.queued_at/start_date/end_date``)
and the publisher's timestamps. A message counts as ``lost`` if no run processed it within the scenario's bounded
wait (``timed_out`` says the wait ran out); ``duplicated`` counts extra deliveries (asset events) of a message.
Writes ``bench/results.json`` and prints a table. Bounded: every wait has a deadline; the stack is stopped at the
end, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from devstack import publish
from devstack.summary import timeline
from devstack.testing import ROOT, Stack, unavailable_reason

DAG_OF = {"sqs": "inference_execution", "kafka": "iot_alerting"}
MODE_OF = {"guide": "guide", "project": "stream"}


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(round(q * (len(values) - 1))))], 2)


def measure(stack: Stack, broker: str, records: list[dict[str, Any]], scenario: str, settings: str,
            wait: float) -> dict[str, Any]:
    dag_id = DAG_OF[broker]
    ids = {r["message_id"] for r in records}
    published = {r["message_id"]: datetime.fromisoformat(r["published_at"]).timestamp() for r in records}
    deadline = time.monotonic() + wait
    url = stack.info["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    while True:
        seen, deliveries = timeline(url, dag_id)
        done = [m for m in ids if seen.get(m, {}).get("state") in ("success", "failed")]
        if len(done) == len(ids) or time.monotonic() > deadline:
            break
        time.sleep(2)
    mine = {m: seen[m] for m in ids if m in seen}
    waits = [mine[m]["start"] - published[m] for m in mine if mine[m].get("start")]
    events = [mine[m]["event"] for m in mine]
    first_pub = min(published.values())
    ends = [mine[m]["end"] for m in mine if mine[m].get("end")]
    row = {
        "broker": broker,
        "settings": settings,
        "scenario": scenario,
        "p50_s": _pct(waits, 0.5),
        "p95_s": _pct(waits, 0.95),
        "max_s": round(max(ends) - first_pub, 2) if scenario == "burst" and ends else _pct(waits, 1.0),
        "msgs_per_s": round(len(events) / max(max(events) - first_pub, 1e-3), 1) if events else 0.0,
        "sent": len(ids),
        "lost": len(ids) - len(done),
        "duplicated": sum(max(0, deliveries.get(m, 0) - 1) for m in ids),
        "timed_out": len(done) < len(ids),
        "event_p50_s": _pct([mine[m]["event"] - published[m] for m in mine], 0.5),
        "runs": len({(mine[m].get("queued"), mine[m].get("start")) for m in mine if mine[m].get("start")}),
    }
    print(f"  {broker:<5} {settings:<7} {scenario:<9} " + json.dumps({k: row[k] for k in list(row)[3:]}), flush=True)
    return row


def workloads(stack: Stack, broker: str, scale: float) -> dict[str, Callable[[], list[dict[str, Any]]]]:
    def pub(count: int, rate: float, run_id: str) -> list[dict[str, Any]]:
        if broker == "sqs":
            return publish.publish_inference(count, run_id=run_id, rate=rate, target=stack.target)
        return publish.publish_iot(count, devices=10, run_id=run_id, rate=rate, bootstrap=stack.bootstrap)

    def latency() -> list[dict[str, Any]]:
        records = []
        for i in range(max(3, int(8 * scale))):
            records += pub(1, 0, f"lat{broker}{i}x{int(time.time())}")
            time.sleep(5)
        return records

    return {
        "latency": latency,
        "burst": lambda: pub(int(500 * scale), 0, f"burst{broker}{int(time.time())}"),
        "sustained": lambda: pub(int((50 if broker == "sqs" else 100) * 20 * scale),
                                 50 if broker == "sqs" else 100, f"sus{broker}{int(time.time())}"),
    }


def run(settings_list: list[str], brokers: list[str], scale: float, wait: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for settings in settings_list:
        with tempfile.TemporaryDirectory(prefix=f"bench-{settings}-") as home:
            stack = Stack(Path(home))
            stack.env["WATCHER_TRIGGERS"] = MODE_OF[settings]
            try:
                print(f"starting the stack with {settings} settings (WATCHER_TRIGGERS={MODE_OF[settings]})", flush=True)
                stack.up()
                for broker in brokers:
                    for scenario, make in workloads(stack, broker, scale).items():
                        rows.append(measure(stack, broker, make(), scenario, settings, wait))
            finally:
                stack.down()
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    head = f"{'broker':<6} {'settings':<8} {'scenario':<10} {'p50 s':>7} {'p95 s':>7} {'max s':>7} {'msg/s':>7} " \
           f"{'sent':>5} {'lost':>5} {'dup':>5}  runs  note"
    lines = [head]
    for r in rows:
        f = lambda v: f"{v:7.2f}" if isinstance(v, (int, float)) else f"{'-':>7}"  # noqa: E731
        note = "wait ran out" if r["timed_out"] else ""
        lines.append(f"{r['broker']:<6} {r['settings']:<8} {r['scenario']:<10} {f(r['p50_s'])} {f(r['p95_s'])} "
                     f"{f(r['max_s'])} {r['msgs_per_s']:7.1f} {r['sent']:>5} {r['lost']:>5} {r['duplicated']:>5}  "
                     f"{r['runs']:>4}  {note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["guide", "project"], choices=["guide", "project"])
    parser.add_argument("--brokers", nargs="+", default=["sqs", "kafka"], choices=["sqs", "kafka"])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every message count")
    parser.add_argument("--wait", type=float, default=150, help="seconds each scenario may take to finish")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    args = parser.parse_args(argv)
    reason = unavailable_reason()
    if reason:
        print(f"cannot benchmark: {reason}", file=sys.stderr)
        return 2
    started = time.monotonic()
    rows = run(args.settings, args.brokers, args.scale, args.wait)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\n{render(rows)}\n\n{len(rows)} rows in {time.monotonic() - started:.0f}s; written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
