"""``make bench-workers``: inference requests replied per second with LocalExecutor (the embedded default and
``astro dev start``) and with CeleryExecutor on 2 and on 1 worker (the HA profile), in one harness run.

Each configuration takes the same burst of requests (``--count``, default 2,000) published at once by a long-lived
client, and a listening client receives the replies (``devstack.bench.ReplyListener``): replies/s
(``effect_msgs_per_s``) is replies received / (first publish -> last reply). While the burst is processed the CPU of every process group of
the stack is sampled, and printed per 1,000 replies: what each stage costs, which is what a cluster's sizing needs
(docs/scale-out.md). LocalExecutor runs on PostgreSQL (as ``astro dev start``), like the HA profile. The 1-worker
row is the HA stack after ``stop worker-2``: same schedulers, triggerers and broker. Each stack first answers a
warm-up burst (``WARM_UP``). Prints a table, writes ``bench/workers.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from devstack import publish
from devstack.bench import ReplyListener, group_cpu_seconds, machine, measure, tree_cpu_seconds
from devstack.testing import ROOT, Stack, unavailable_reason

# name -> (stack environment, components stopped before the burst)
CONFIGS: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "local": ({"DEVSTACK_PROFILE": "default"}, ()),
    "celery-2": ({"DEVSTACK_PROFILE": "ha"}, ()),
    "celery-1": ({"DEVSTACK_PROFILE": "ha"}, ("worker-2",)),
}

WARM_UP = 500  # requests answered before the measured bursts of a stack


def cpu_meters(stack: Stack) -> dict[str, Callable[[], float]]:
    """component -> its CPU seconds so far: every component with a PID file (Airflow's, the brokers', Redis: each
    leads its process group) and the PostgreSQL server (its postmaster and backends)."""
    run = Path(stack.info["DEVSTACK_RUN"])
    meters: dict[str, Callable[[], float]] = {
        p.stem.removeprefix("airflow-"): partial(group_cpu_seconds, int(p.read_text().split()[0]))
        for p in run.glob("*.pid")}
    postmaster = run.parent / "postgres" / "postmaster.pid"  # devstack.stack.PG_DATA of that stack
    if postmaster.is_file():
        meters["postgres"] = partial(tree_cpu_seconds, int(postmaster.read_text().split()[0]))
    return meters


def burst(stack: Stack, name: str, count: int, wait: float, replies: ReplyListener) -> dict[str, Any]:
    meters = cpu_meters(stack)
    before = {n: meter() for n, meter in meters.items()}
    started = time.monotonic()
    records = publish.publish("inference", count, run_id=f"w{name.replace('-', '')}{int(time.time())}",
                              target=stack.target)
    row = measure(stack, "postgres", "sqs", records, "burst", name, wait, replies=replies)
    seconds = time.monotonic() - started
    replied = count - row["no_effect"]
    cpu = {n: meter() - before[n] for n, meter in meters.items()}
    row.update({
        "executor": name,
        "replied": replied,
        "window_s": round(seconds, 1),
        "cpu_s_per_1000": {n: round(1000 * s / max(replied, 1), 2) for n, s in sorted(cpu.items(), key=lambda x: -x[1])},
        "cpu_cores_busy": round(sum(cpu.values()) / seconds, 2),
    })
    return row


def run(names: list[str], count: int, wait: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    by_profile: dict[str, list[str]] = {}
    for name in names:  # one stack per profile: celery-2 then celery-1 share the HA stack
        by_profile.setdefault(CONFIGS[name][0]["DEVSTACK_PROFILE"], []).append(name)
    for profile, members in by_profile.items():
        with tempfile.TemporaryDirectory(prefix=f"bench-workers-{profile}-") as home:
            stack = Stack(Path(home), db="postgres", env=CONFIGS[members[0]][0])
            try:
                print(f"starting the {profile} profile on PostgreSQL", flush=True)
                stack.up()
                time.sleep(10)  # start-up work (first parses, first polls) settles
                with ReplyListener(stack) as replies:
                    # A burst first, replied to before measuring: the first tasks after a start warm the execution
                    # API and the workers, and ElasticMQ's JVM spent ~3 CPU-s per 1,000 messages more while cold.
                    warm = publish.publish("inference", WARM_UP, run_id=f"warm{profile}{int(time.time())}",
                                           target=stack.target)
                    replies.wait({r["expect"]["request_id"] for r in warm}, wait)
                    for name in sorted(members, key=lambda n: len(CONFIGS[n][1])):
                        for component in CONFIGS[name][1]:
                            stack.cli("stop", component)
                        rows.append(burst(stack, name, count, wait, replies))
            finally:
                stack.down()
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    head = (f"{'executor':<9} {'sent':>5} {'replied':>7} {'lost':>4} {'dup':>3} {'runs':>4} {'replied/s':>9} "
            f"{'p50 s':>6} {'p95 s':>6} {'max s':>6} {'cores busy':>10}  CPU-s per 1,000 replies (top 6)")
    lines = [head]
    for r in rows:
        top = ", ".join(f"{n} {s}" for n, s in list(r["cpu_s_per_1000"].items())[:6])
        lines.append(f"{r['executor']:<9} {r['sent']:>5} {r['replied']:>7} {r['lost']:>4} {r['reply_duplicates']:>3} "
                     f"{r['runs']:>4} {r['effect_msgs_per_s']:>9.1f} {r['effect_p50_s'] or 0:>6.2f} "
                     f"{r['effect_p95_s'] or 0:>6.2f} {r['effect_max_s'] or 0:>6.2f} {r['cpu_cores_busy']:>10.2f}  {top}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executors", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--count", type=int, default=2000, help="requests per burst (default 2,000)")
    parser.add_argument("--wait", type=float, default=300, help="seconds a burst may take to finish")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "workers.json")
    args = parser.parse_args(argv)
    reason = unavailable_reason("postgres")
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    started = time.monotonic()
    rows = run(args.executors, args.count, args.wait)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2) + "\n")
    print(f"\n{render(rows)}\n\nmachine: {machine()}\n{len(rows)} rows in {time.monotonic() - started:.0f}s; "
          f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
