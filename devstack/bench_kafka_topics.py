"""``make bench-kafka``: the streaming Kafka trigger and the run's commit on topics as production writes them.

On a private Kafka (free ports, a throwaway data dir): a transactional topic (``--transactions`` transactions of
``--per`` records over 3 partitions, every ``--abort-every``-th aborted) and a compacted one. The trigger reads them
as in the triggerer (``gather``) and every asset event is settled by a run that succeeds (``commit_settled``); then
``--cycles`` redelivery periods pass (the trigger's own clock is moved on) and whatever it delivers again is settled
too. Prints, per topic and partition: the committed offset against the end of the partition, the records a
consumer can see, how many asset events carried each record, and the rows left in ``kafka_settled``. Figures in
docs/delivery-guarantees.md "Kafka topics as production writes them" come from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from devstack import brokers

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 3


class Settled:
    """What ``commit_settled`` reads of a delivered record (attributes of the project's Envelope)."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.source = record["source"]
        self.topic, self.partition, self.offset = record["topic"], record["partition"], record["offset"]
        self.read_from = record.get("read_from")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def transactional_topic(bootstrap: str, topic: str, transactions: int, per: int, abort_every: int) -> int:
    """Returns how many records a ``read_committed`` consumer sees."""
    from confluent_kafka import Producer

    brokers.create_topics(bootstrap, {topic: PARTITIONS})
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"tx-{topic}", "acks": "all",
                         "linger.ms": 0})
    producer.init_transactions(30)
    visible = 0
    for t in range(transactions):
        producer.begin_transaction()
        for i in range(per):
            producer.produce(topic, key=f"dev-{(t * per + i) % 30}", value=f'{{"t": {t}, "i": {i}}}'.encode())
        if abort_every and t % abort_every == abort_every - 1:
            producer.flush(30)
            producer.abort_transaction(30)
        else:
            producer.commit_transaction(30)
            visible += per
    return visible


def compacted_topic(bootstrap: str, topic: str, keys: int = 50, rounds: int = 6, wait: float = 120) -> int:
    """A compacted topic after the log cleaner ran: returns how many records are left."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    [created] = admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1, config={
        "cleanup.policy": "compact", "segment.ms": "100", "min.cleanable.dirty.ratio": "0.001",
        "min.compaction.lag.ms": "0", "delete.retention.ms": "0"})]).values()
    created.result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    for rnd in range(rounds):
        for k in range(keys):
            producer.produce(topic, key=f"dev-{k}", value=f"state-{rnd}".encode())
        producer.flush(30)
        time.sleep(0.3)

    def remaining() -> int:
        probe = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4().hex}",
                          "enable.auto.commit": False})
        probe.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        seen = 0
        try:
            while (m := probe.poll(3)) is not None:
                seen += m.error() is None
        finally:
            probe.close()
        return seen

    deadline = time.monotonic() + wait
    written = keys * rounds
    while (left := remaining()) >= written and time.monotonic() < deadline:
        for p in range(PARTITIONS):  # roll the active segments so that the cleaner can take them
            producer.produce(topic, key="roll", value=b"x", partition=p)
        producer.flush(30)
        written += PARTITIONS
        time.sleep(2)
    return left


def read_and_settle(bootstrap: str, topic: str, visible: int, cycles: int, redelivery_seconds: float,
                    db: Path) -> dict[str, Any]:
    """The trigger's events, each settled by a run; ``cycles`` redelivery periods later, the state of the group."""
    from confluent_kafka import TopicPartition
    from sqlalchemy import create_engine, func, select

    from event_streams.kafka_offsets import commit_settled, kafka_settled
    from event_streams.triggers import StreamingKafkaTrigger

    group = f"bench-{topic}"
    os.environ["AIRFLOW_CONN_KAFKA_BENCH"] = json.dumps(
        {"conn_type": "kafka", "extra": {"bootstrap.servers": bootstrap, "group.id": group}})
    trigger = StreamingKafkaTrigger(topics=[topic], kafka_config_id="kafka_bench", linger_seconds=0,
                                    redelivery_seconds=redelivery_seconds, max_messages_per_event=500)
    engine = create_engine(f"sqlite:///{db}")
    consumer = trigger._consumer = trigger._open()
    carried: Counter[tuple[int, int]] = Counter()
    events = 0

    def drain() -> None:
        nonlocal events
        quiet = 0
        while quiet < 3:
            batch = trigger.gather()
            if not batch:
                quiet += 1
                continue
            quiet = 0
            events += 1
            carried.update((r["partition"], r["offset"]) for r in batch)
            commit_settled(engine, consumer, group, [Settled(r) for r in batch])

    try:
        trigger._assign(consumer, set())
        started = time.monotonic()
        drain()
        now = time.monotonic()
        trigger.redeliver(now)
        for _ in range(cycles):  # the trigger's clock moved on by one redelivery period each time
            now += redelivery_seconds + 1
            trigger.redeliver(now)
            drain()
            trigger.redeliver(now)
        took = time.monotonic() - started
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        committed = {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=30)}
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(PARTITIONS)}
        with engine.connect() as conn:
            rows = conn.execute(select(func.count()).select_from(kafka_settled)).scalar_one()
    finally:
        consumer.close()
    per_record = Counter(carried.values())
    return {"topic": topic, "visible": visible, "delivered_distinct": len(carried),
            "deliveries": sum(carried.values()), "events": events, "events_per_record": dict(sorted(per_record.items())),
            "committed": committed, "end": ends, "settled_rows": rows, "seconds": round(took, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.bench_kafka_topics", description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=1000)
    parser.add_argument("--per", type=int, default=5, help="records per transaction (default 5)")
    parser.add_argument("--abort-every", type=int, default=10, help="every n-th transaction aborted (default 10)")
    parser.add_argument("--cycles", type=int, default=3, help="redelivery periods that pass after the read (3)")
    parser.add_argument("--skip-compacted", action="store_true")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "kafka_topics.json")
    args = parser.parse_args(argv)

    cache = Path(os.environ.get("DEVSTACK_CACHE", ROOT / ".devstack" / "cache"))
    brokers.install(cache)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-kafka-") as tmp:
        data = Path(tmp)
        port, controller = _free_port(), _free_port()
        bootstrap = f"127.0.0.1:{port}"
        brokers.start_kafka(cache, data, port, controller)
        try:
            brokers.wait_kafka_ready(bootstrap, 120)
            brokers.warm_group_coordinator(bootstrap, 60)
            tx = f"tx-{uuid.uuid4().hex[:6]}"
            visible = transactional_topic(bootstrap, tx, args.transactions, args.per, args.abort_every)
            results.append({"kind": f"transactional, {args.transactions} tx", **read_and_settle(
                bootstrap, tx, visible, args.cycles, 120.0, data / "tx.db")})
            if not args.skip_compacted:
                compact = f"compact-{uuid.uuid4().hex[:6]}"
                left = compacted_topic(bootstrap, compact)
                results.append({"kind": "compacted", **read_and_settle(
                    bootstrap, compact, left, args.cycles, 120.0, data / "compact.db")})
        finally:
            brokers.stop_pid(data / "kafka.pid")
    print(f"{'topic':<24} {'part':>4} {'committed':>9} {'end':>6} {'lag':>5}")
    for r in results:
        for p in sorted(r["end"]):
            c, e = r["committed"][p], r["end"][p]
            print(f"{r['kind']:<24} {p:>4} {c:>9} {e:>6} {e - max(c, 0):>5}")
    print()
    print(f"{'topic':<24} {'visible':>7} {'delivered':>9} {'deliveries':>10} {'events':>6} "
          f"{'asset events per record':<28} {'kafka_settled rows':>18}")
    for r in results:
        spread = ", ".join(f"{n}x: {c}" for n, c in r["events_per_record"].items())
        print(f"{r['kind']:<24} {r['visible']:>7} {r['delivered_distinct']:>9} {r['deliveries']:>10} {r['events']:>6} "
              f"{spread:<28} {r['settled_rows']:>18}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\n{args.cycles} redelivery periods of 120 s passed after the read (on the trigger's clock); "
          f"written to {args.json}")
    ok = all(r["committed"][p] == r["end"][p] for r in results for p in r["end"])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
