"""Smoke test of the native brokers: a real Kafka (KRaft) and a real ElasticMQ, started by ``devstack.brokers``.

Both run on free ports of their own (never 9092/9324, so a running ``make up`` stack is left alone) from a
throwaway data dir; the jars come from ``.devstack/cache`` (fetched once by ``devstack.brokers.install``).
ElasticMQ runs ``devstack/elasticmq.conf`` itself with a few keys appended (ports, loopback binding, no stats
endpoint, no persistence, ``maxReceiveCount = 2`` on ``data-deliveries`` so the redrive check is quick).

Needs ``java`` (17+) and ``mvn``: without them the test is skipped, and fails under CI.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import uuid
from pathlib import Path

import pytest

from devstack import brokers

ROOT = Path(__file__).resolve().parents[3]

MAX_RECEIVE_COUNT = 2  # in the test's ElasticMQ conf; devstack/elasticmq.conf itself says 10
CACHE_DIR = Path(os.environ.get("DEVSTACK_CACHE", ROOT / ".devstack" / "cache"))


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the native broker smoke test", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _test_conf(path: Path, port: int) -> Path:
    """The project's ElasticMQ conf with the test's overrides appended (later HOCON keys win, objects merge)."""
    base = (ROOT / "devstack" / "elasticmq.conf").read_text()
    path.write_text(
        base
        + f"""
# ---- overrides of tests/stack/integration/test_brokers_smoke.py
node-address {{ host = "*", port = {port} }}
rest-sqs {{ enabled = true, bind-port = {port}, bind-hostname = "127.0.0.1" }}
rest-stats.enabled = false
messages-storage.enabled = false
queues-storage.enabled = false
queues {{
  data-deliveries {{ deadLettersQueue {{ name = "data-deliveries-dlq", maxReceiveCount = {MAX_RECEIVE_COUNT} }} }}
  data-deliveries-dlq {{}}
}}
"""
    )
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory, report_line):
    for tool in ("java", "mvn"):
        if shutil.which(tool) is None:
            _missing(f"`{tool}` is not installed")
    for module in ("confluent_kafka", "boto3"):
        try:
            __import__(module)
        except ImportError:
            _missing(f"python package {module} is not installed")

    data = tmp_path_factory.mktemp("brokers")
    kafka_port, controller_port, sqs_port = _free_port(), _free_port(), _free_port()
    conf = _test_conf(data / "elasticmq-test.conf", sqs_port)
    bootstrap, endpoint = f"127.0.0.1:{kafka_port}", f"http://127.0.0.1:{sqs_port}"

    t0 = time.monotonic()
    brokers.install(CACHE_DIR)
    t_install = time.monotonic() - t0
    try:
        t0 = time.monotonic()
        kafka_pid = brokers.start_kafka(CACHE_DIR, data, kafka_port, controller_port)
        sqs_pid = brokers.start_elasticmq(CACHE_DIR, data, conf, sqs_port)
        try:
            brokers.wait_kafka_ready(bootstrap, 120)
            t_kafka = time.monotonic() - t0
            brokers.wait_sqs_ready(endpoint, 120, brokers.elasticmq_queue_names(conf))
            t_sqs = time.monotonic() - t0
        except brokers.BrokerError as exc:
            pytest.fail(
                f"{exc}\n--- kafka.log ---\n{brokers.log_tail(data / 'kafka.log')}"
                f"\n--- elasticmq.log ---\n{brokers.log_tail(data / 'elasticmq.log')}",
                pytrace=False,
            )
        report_line(
            f"native brokers: install {t_install:.1f}s; ready after start (both launched together): "
            f"kafka {t_kafka:.1f}s, elasticmq {t_sqs:.1f}s; RSS kafka {brokers.rss_kib(kafka_pid) // 1024} MiB, "
            f"elasticmq {brokers.rss_kib(sqs_pid) // 1024} MiB",
        )
        yield {"bootstrap": bootstrap, "sqs": endpoint, "data": data}
    finally:
        brokers.stop_pid(data / "elasticmq.pid")
        brokers.stop_pid(data / "kafka.pid")
    assert brokers.running_pid(data / "kafka.pid") is None
    assert brokers.running_pid(data / "elasticmq.pid") is None


def test_kafka_topics_and_round_trip(stack):
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient

    bootstrap = stack["bootstrap"]
    # The project's topics, created idempotently: a second call creates nothing and raises nothing.
    assert sorted(brokers.create_topics(bootstrap, brokers.TOPICS)) == sorted(brokers.TOPICS)
    assert brokers.create_topics(bootstrap, brokers.TOPICS) == []
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    assert {t: len(md.topics[t].partitions) for t in brokers.TOPICS} == brokers.TOPICS

    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    brokers.create_topics(bootstrap, {topic: 3})
    sent = {f"key-{i}": f"value-{i}-{uuid.uuid4().hex}" for i in range(10)}
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    errors: list = []
    for key, value in sent.items():
        producer.produce(topic, key=key, value=value, on_delivery=lambda err, _msg: err and errors.append(err))
    assert producer.flush(30) == 0
    assert errors == []

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"smoke-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    received: dict[str, str] = {}
    deadline = time.monotonic() + 60
    try:
        while len(received) < len(sent) and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            assert msg.key().decode() not in received, "message delivered twice"
            received[msg.key().decode()] = msg.value().decode()
        extra = consumer.poll(2.0)  # nothing beyond the 10
        assert extra is None or extra.error() is not None
    finally:
        consumer.close()
    assert received == sent


def test_sqs_visibility_timeout_and_redrive(stack):
    import boto3

    sqs = boto3.client(
        "sqs", endpoint_url=stack["sqs"], region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    queue = sqs.get_queue_url(QueueName="data-deliveries")["QueueUrl"]
    dlq = sqs.get_queue_url(QueueName="data-deliveries-dlq")["QueueUrl"]
    bodies = {f"delivery-{i}-{uuid.uuid4().hex}" for i in range(3)}
    for body in bodies:
        sqs.send_message(QueueUrl=queue, MessageBody=body)

    def receive(url: str, want: int, wait: float = 5.0) -> list[dict]:
        got: list[dict] = []
        deadline = time.monotonic() + wait
        while len(got) < want and time.monotonic() < deadline:
            got += sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                VisibilityTimeout=1,
                WaitTimeSeconds=1,
                AttributeNames=["ApproximateReceiveCount"],
            ).get("Messages", [])
        return got

    first = receive(queue, 3)
    assert {m["Body"] for m in first} == bodies
    # Not deleted and still inside their 1 s visibility timeout: nobody else gets them.
    assert sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", []) == []
    time.sleep(2)
    second = receive(queue, 3)
    assert {m["Body"] for m in second} == bodies
    assert {m["MessageId"] for m in second} == {m["MessageId"] for m in first}
    assert {m["Attributes"]["ApproximateReceiveCount"] for m in second} == {"2"}

    # Received MAX_RECEIVE_COUNT times without a delete: the next receive moves them to the DLQ.
    receives = 2
    while receives < MAX_RECEIVE_COUNT:
        time.sleep(1.5)
        assert len(receive(queue, 3)) == 3
        receives += 1
    time.sleep(1.5)
    assert receive(queue, 1, wait=3) == []
    moved = receive(dlq, 3)
    assert {m["Body"] for m in moved} == bodies
    for m in moved:
        sqs.delete_message(QueueUrl=dlq, ReceiptHandle=m["ReceiptHandle"])


def _transactional_topic(bootstrap: str, topic: str, transactions: int, per: int, abort_every: int) -> set[str]:
    """``transactions`` transactions of ``per`` records each on one partition, every ``abort_every``-th aborted;
    returns the values a ``read_committed`` consumer can see."""
    from confluent_kafka import Producer

    brokers.create_topics(bootstrap, {topic: 1})
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"tx-{topic}", "acks": "all"})
    producer.init_transactions(30)
    visible: set[str] = set()
    for t in range(transactions):
        producer.begin_transaction()
        values = [f"tx{t}-r{i}" for i in range(per)]
        for v in values:
            producer.produce(topic, key=f"dev-{t % 3}", value=v.encode())
        if abort_every and t % abort_every == abort_every - 1:
            assert producer.flush(30) == 0  # written to the log, then aborted (unflushed ones would just be purged)
            producer.abort_transaction(30)
        else:
            producer.commit_transaction(30)
            visible |= set(values)
    return visible


def _committed(bootstrap: str, group: str, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        [committed] = probe.committed([TopicPartition(topic, 0)], timeout=30)
    finally:
        probe.close()
    return committed.offset


def test_streaming_trigger_settles_a_transactional_topic_to_the_end_of_the_partition(stack, tmp_path, monkeypatch):
    """Transaction markers and aborted records hold offsets no consumer receives: settling every record the trigger
    delivered must still commit the end of the partition (lag 0), not stop at the first marker."""
    import json

    from confluent_kafka import TopicPartition
    from sqlalchemy import create_engine, select

    from event_streams.kafka_offsets import LAST_COMMIT, commit_settled, kafka_settled, settled_intervals
    from event_streams.pipelines.messages import Envelope
    from event_streams.triggers import StreamingKafkaTrigger

    bootstrap, topic, group = stack["bootstrap"], f"tx-{uuid.uuid4().hex[:8]}", f"tx-group-{uuid.uuid4().hex[:8]}"
    brokers.warm_group_coordinator(bootstrap, 60)  # as `make up` does: a fresh broker answers NOT_COORDINATOR first
    visible = _transactional_topic(bootstrap, topic, transactions=40, per=5, abort_every=4)
    monkeypatch.setenv("AIRFLOW_CONN_KAFKA_TX", json.dumps(
        {"conn_type": "kafka", "extra": {"bootstrap.servers": bootstrap, "group.id": group}}))
    trigger = StreamingKafkaTrigger(topics=[topic], kafka_config_id="kafka_tx", redelivery_seconds=3600,
                                    linger_seconds=0, max_messages_per_event=30)
    trigger._consumer = trigger._open()
    engine = create_engine(f"sqlite:///{tmp_path / 'events.db'}")
    try:
        trigger._assign(trigger._consumer, set())
        events: list[list[Envelope]] = []
        deadline = time.monotonic() + 60
        while sum(map(len, events)) < len(visible) and time.monotonic() < deadline:
            batch = trigger.gather()
            if batch:
                events.append([Envelope.model_validate(r) for r in batch])
        assert {e.body for ev in events for e in ev} == visible  # 30 committed transactions x 5, none aborted
        for ev in events:  # one run per event, each settling its records
            commit_settled(engine, trigger._consumer, group, ev)
        _, end = trigger._consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        assert end == 40 * 6  # 5 records and one marker per transaction
        # the trigger reads on, nothing more to deliver: its position moves past the last marker and aborted records
        assert trigger.gather() == [] and trigger.gather() == []
        trigger.redeliver(time.monotonic())  # the trigger's own check: the last marker is committed too
        committed = _committed(bootstrap, group, topic)
        assert committed == end, f"committed {committed}, end of partition {end}"
        later = time.monotonic() + 3601  # a redelivery period on: nothing settled is read again
        assert trigger.redeliver(later) == [] and trigger.redeliver(later + 3601) == [] and trigger.gather() == []
        with engine.connect() as conn:  # settled ranges pruned as the watermark passed them; the last commit kept
            rows = conn.execute(select(kafka_settled.c.start_offset, kafka_settled.c.end_offset)).all()
        assert rows == [(LAST_COMMIT, 233)]  # what the runs committed; the trigger committed the last stretch
        # the group's offsets deleted behind the pipeline's back, as retention does to an idle group: the trigger
        # commits them back at its next check, and reads nothing again
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": bootstrap})  # kept referenced until its futures are done
        [deleted] = admin.delete_consumer_groups([group], request_timeout=20).values()
        deleted.result(30)
        assert _committed(bootstrap, group, topic) < 0
        assert trigger.redeliver(time.monotonic()) == [] and _committed(bootstrap, group, topic) == end
        assert trigger.gather() == []
        # before: a range per record run between markers, and the watermark stopped at the first marker (offset 5)
        assert len(settled_intervals(e for ev in events for e in ev)[(topic, 0)]) == 1
    finally:
        trigger._consumer.close()


def _plain_topic(bootstrap: str, topic: str, count: int) -> None:
    from confluent_kafka import Producer

    brokers.create_topics(bootstrap, {topic: 1})
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    for i in range(count):
        producer.produce(topic, key=f"dev-{i % 3}", value=f"r{i}".encode())
    assert producer.flush(30) == 0


def _watcher(monkeypatch, bootstrap: str, topic: str, group: str | None, **kwargs):
    """A streaming trigger on ``topic`` in consumer group ``group``, on a connection whose own group.id is 'shared';
    its consumer open and assigned."""
    import json

    from event_streams.triggers import StreamingKafkaTrigger

    monkeypatch.setenv("AIRFLOW_CONN_KAFKA_SHARED", json.dumps(
        {"conn_type": "kafka", "extra": {"bootstrap.servers": bootstrap, "group.id": "shared"}}))
    trigger = StreamingKafkaTrigger(topics=[topic], kafka_config_id="kafka_shared", group_id=group, linger_seconds=0,
                                    **kwargs)
    trigger._consumer = trigger._open()
    trigger._assign(trigger._consumer, set())
    return trigger


def _gather(trigger, want: int, timeout: float = 60) -> list:
    from event_streams.pipelines.messages import Envelope

    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += [Envelope.model_validate(r) for r in trigger.gather()]
    return got


def test_two_watchers_on_one_topic_commit_in_their_own_groups(stack, tmp_path, monkeypatch):
    """A copy of a DAG on the same topic and connection: each watcher's settled records move only its own group's
    committed offset, and what one of them did not settle is read again by it alone."""
    from sqlalchemy import create_engine

    from event_streams.kafka_offsets import commit_settled

    bootstrap, topic = stack["bootstrap"], f"shared-{uuid.uuid4().hex[:8]}"
    brokers.warm_group_coordinator(bootstrap, 60)
    _plain_topic(bootstrap, topic, 20)
    first = _watcher(monkeypatch, bootstrap, topic, f"airflow.first-{topic}", redelivery_seconds=10)
    second = _watcher(monkeypatch, bootstrap, topic, f"airflow.second-{topic}", redelivery_seconds=10)
    engine = create_engine(f"sqlite:///{tmp_path / 'events.db'}")
    try:
        assert first.group != second.group and "shared" not in (first.group, second.group)
        a, b = _gather(first, 20), _gather(second, 20)
        assert [e.offset for e in a] == [e.offset for e in b] == list(range(20))
        commit_settled(engine, first._consumer, first.group, a)  # the first DAG's run settles all
        commit_settled(engine, second._consumer, second.group, b[:10])  # the second's last run fails for good
        assert (_committed(bootstrap, first.group, topic), _committed(bootstrap, second.group, topic)) == (20, 10)
        assert _committed(bootstrap, "shared", topic) < 0  # the connection's group is not touched
        now = time.monotonic()
        assert first.redeliver(now) == [] and second.redeliver(now) == []  # the clock starts for the second
        assert first.redeliver(now + 11) == [] and second.redeliver(now + 11) == [(topic, 0, 10)]
        assert first.gather() == []
        again = _gather(second, 10)
        assert [e.offset for e in again] == list(range(10, 20))
        commit_settled(engine, second._consumer, second.group, again)
        assert _committed(bootstrap, second.group, topic) == 20
    finally:
        first._consumer.close()
        second._consumer.close()


def test_a_live_member_in_the_watchers_group_is_an_error_naming_the_group(stack, tmp_path, monkeypatch, capsys):
    """Another application joins the watcher's group: the trigger says so and reads nothing; the run's commit is
    refused with an error that names the group (nothing is skipped: the offset stays)."""
    from confluent_kafka import Consumer
    from sqlalchemy import create_engine

    from event_streams.kafka_offsets import commit_settled

    bootstrap, topic = stack["bootstrap"], f"busy-{uuid.uuid4().hex[:8]}"
    group = f"airflow.busy-{topic}"
    brokers.warm_group_coordinator(bootstrap, 60)
    _plain_topic(bootstrap, topic, 5)
    trigger = _watcher(monkeypatch, bootstrap, topic, group)
    engine = create_engine(f"sqlite:///{tmp_path / 'events.db'}")
    other = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "client.id": "other-app",
                      "enable.auto.commit": False, "auto.offset.reset": "latest"})
    try:
        assert trigger.group_in_use() == []
        records = _gather(trigger, 5)
        other.subscribe([topic])
        deadline = time.monotonic() + 60
        while not other.assignment() and time.monotonic() < deadline:
            other.poll(0.5)
        assert other.assignment(), "the other application never joined the group"
        capsys.readouterr()
        members = trigger.group_in_use()
        assert len(members) == 1 and members[0].startswith("other-app@")
        logged = capsys.readouterr().out  # Airflow's structlog writes the trigger's log lines to stdout
        assert f"Kafka consumer group '{group}'" in logged and "other-app@" in logged and "error" in logged
        with pytest.raises(RuntimeError, match=f"consumer group '{group}'"):
            commit_settled(engine, trigger._consumer, group, records)
        assert _committed(bootstrap, group, topic) == 0  # the start the trigger committed; nothing skipped
    finally:
        other.close()
        trigger._consumer.close()
    assert trigger.group_in_use() == []  # it left: the watcher reads again


def _settle_all(trigger, engine, want: int | None, timeout: float = 90) -> list[list]:
    """Gather until ``want`` records came (``None``: until the group's committed offset is the end of every
    partition), one settling run per event; then let the trigger read on and check."""
    from event_streams.kafka_offsets import commit_settled
    from event_streams.pipelines.messages import Envelope

    def done() -> bool:
        if want is not None:
            return sum(map(len, events)) >= want
        parts = trigger._consumer.committed(trigger._consumer.assignment(), timeout=10)
        return bool(parts) and all(
            p.offset == trigger._consumer.get_watermark_offsets(p, timeout=10)[1] for p in parts)

    events: list[list] = []
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        batch = trigger.gather()
        if batch:
            events.append(batch)
            commit_settled(engine, trigger._consumer, trigger.group, [Envelope.model_validate(r) for r in batch])
    assert trigger.gather() == [] and trigger.gather() == []
    trigger.redeliver(time.monotonic())  # the trigger's own check: a trailing stretch without records
    later = time.monotonic() + trigger.redelivery_seconds + 1  # a redelivery period on: nothing settled is re-read
    assert trigger.redeliver(later) == [] and trigger.redeliver(later + trigger.redelivery_seconds + 1) == []
    assert trigger.gather() == []
    return events


def test_a_compacted_topic_is_settled_through_its_holes_to_the_end(stack, tmp_path, monkeypatch):
    """``cleanup.policy=compact`` (every device-state topic): the log cleaner removes superseded records and leaves
    holes in the offsets. Every record still there is delivered once, and the committed offset reaches the end."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic
    from sqlalchemy import create_engine

    bootstrap, topic = stack["bootstrap"], f"compact-{uuid.uuid4().hex[:8]}"
    brokers.warm_group_coordinator(bootstrap, 60)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    [created] = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1, config={
        "cleanup.policy": "compact", "segment.ms": "100", "min.cleanable.dirty.ratio": "0.001",
        "min.compaction.lag.ms": "0", "delete.retention.ms": "0"})]).values()
    created.result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    for rnd in range(4):  # 10 devices, 4 states each; a new segment every round
        for d in range(10):
            producer.produce(topic, key=f"dev-{d}", value=f"state-{rnd}".encode())
        assert producer.flush(30) == 0
        time.sleep(0.3)

    def visible() -> list[int]:
        probe = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4().hex}",
                          "enable.auto.commit": False, "enable.partition.eof": True})
        probe.assign([TopicPartition(topic, 0, 0)])
        offsets: list[int] = []
        try:
            while (m := probe.poll(5)) is not None and m.error() is None:
                offsets.append(m.offset())
        finally:
            probe.close()
        return offsets

    deadline, written = time.monotonic() + 120, 40
    while len(offsets := visible()) >= written and time.monotonic() < deadline:
        producer.produce(topic, key="roll", value=b"x")  # rolls the active segment so that the cleaner can take it
        producer.flush(30)
        written += 1
        time.sleep(2)
    assert len(offsets) < written, "the log cleaner never compacted the topic"
    holes = [o for o in range(max(offsets)) if o not in set(offsets)]
    assert holes, offsets
    trigger = _watcher(monkeypatch, bootstrap, topic, f"airflow.compact-{topic}", redelivery_seconds=3600,
                       max_messages_per_event=7)
    engine = create_engine(f"sqlite:///{tmp_path / 'events.db'}")
    try:
        events = _settle_all(trigger, engine, None)  # the cleaner may go on removing records meanwhile
        delivered = sorted(r["offset"] for ev in events for r in ev)
        assert len(delivered) == len(set(delivered)), delivered  # each once
        still_there = visible()
        assert set(still_there) <= set(delivered) <= set(offsets), (still_there, delivered, offsets)
        assert len(still_there) >= 10  # every device's last state is never compacted away, and was delivered
        _, end = trigger._consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        assert _committed(bootstrap, trigger.group, topic) == end
    finally:
        trigger._consumer.close()


def test_records_with_large_keys_make_events_under_the_byte_bound(stack, tmp_path, monkeypatch):
    from confluent_kafka import Producer, TopicPartition
    from sqlalchemy import create_engine

    from event_streams.triggers import kafka_body_bytes

    bootstrap, topic = stack["bootstrap"], f"bigkeys-{uuid.uuid4().hex[:8]}"
    brokers.warm_group_coordinator(bootstrap, 60)
    brokers.create_topics(bootstrap, {topic: 1})
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for i in range(12):
        producer.produce(topic, key=f"{i:02d}".encode() * 100_000, value=b'{"v": 1}')  # 200 KB keys, 8-byte bodies
    assert producer.flush(30) == 0
    trigger = _watcher(monkeypatch, bootstrap, topic, f"airflow.bigkeys-{topic}", redelivery_seconds=3600)
    engine = create_engine(f"sqlite:///{tmp_path / 'events.db'}")
    try:
        events = _settle_all(trigger, engine, 12)
        sizes = [sum(map(kafka_body_bytes, ev)) for ev in events]
        assert sum(map(len, events)) == 12 and max(sizes) <= trigger.max_event_bytes, sizes  # 5 fit in 1 MiB
        assert max(map(len, events)) <= 5 and len(events) >= 3
        assert _committed(bootstrap, trigger.group, topic) == 12
        assert trigger._consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1] == 12
    finally:
        trigger._consumer.close()


def test_a_dead_letter_copy_keeps_the_records_key_bytes_and_headers(stack, tmp_path, monkeypatch):
    """The run's settle step on the real broker: a dead letter goes to the DLQ topic with the original key bytes and
    headers (then ``reason`` and ``source_message_id``), and the offsets commit in the event's own group."""
    import json

    from confluent_kafka import Consumer, Producer, TopicPartition

    from event_streams.pipelines import db, kafka_source
    from event_streams.pipelines.messages import envelopes_from_asset_events

    bootstrap, topic = stack["bootstrap"], f"headers-{uuid.uuid4().hex[:8]}"
    dlq = f"{topic}-dlq"
    brokers.warm_group_coordinator(bootstrap, 60)
    brokers.create_topics(bootstrap, {topic: 1, dlq: 1})
    headers = [("traceparent", b"00-4bf92f-01"), ("bin", b"\xff\x00\x01"), ("empty", None), ("traceparent", b"2")]
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    producer.produce(topic, key=b"\xffdev\x00", value=b"not json", headers=headers)
    producer.produce(topic, key=b"dev-2", value=b'{"ok": true}')
    assert producer.flush(30) == 0
    trigger = _watcher(monkeypatch, bootstrap, topic, f"airflow.headers-{topic}", redelivery_seconds=3600)
    monkeypatch.setenv("AIRFLOW_CONN_KAFKA_DEFAULT", json.dumps(
        {"conn_type": "kafka", "extra": {"bootstrap.servers": bootstrap, "group.id": "shared"}}))
    monkeypatch.setenv("AIRFLOW_CONN_EVENTS_DB", f"sqlite:///{tmp_path / 'events.db'}")
    db.engine.cache_clear()
    try:
        records = []
        deadline = time.monotonic() + 60
        while len(records) < 2 and time.monotonic() < deadline:
            records += trigger.gather()
        envelopes = envelopes_from_asset_events([{"payload": {"source": "kafka_batch", "group_id": trigger.group,
                                                              "records": records}}])
        bad = envelopes[0]
        kafka_source.settle_kafka(dlq, envelopes, [{"message_id": bad.message_id, "reason": "body is not JSON"}])
        assert _committed(bootstrap, trigger.group, topic) == 2 and _committed(bootstrap, "shared", topic) < 0
        reader = Consumer({"bootstrap.servers": bootstrap, "group.id": f"r-{uuid.uuid4().hex}",
                           "enable.auto.commit": False})
        reader.assign([TopicPartition(dlq, 0, 0)])
        try:
            copy = reader.poll(30)
        finally:
            reader.close()
        assert copy is not None and copy.error() is None
        assert (copy.key(), copy.value()) == (b"\xffdev\x00", b"not json")
        assert copy.headers() == [*headers, ("reason", b"body is not JSON"),
                                  ("source_message_id", bad.message_id.encode())]
    finally:
        db.engine.cache_clear()
        trigger._consumer.close()


def test_a_restart_after_the_broker_dropped_the_offsets_resumes_where_the_runs_committed(stack, tmp_path,
                                                                                      monkeypatch):
    """The triggerer was down longer than offsets.retention.minutes: the broker has no committed offset for the
    group any more. The new trigger resumes at the offset the runs committed last (the events database), not at
    auto.offset.reset=earliest: nothing is read again."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient
    from sqlalchemy import create_engine

    bootstrap, topic = stack["bootstrap"], f"expired-{uuid.uuid4().hex[:8]}"
    group = f"airflow.expired-{topic}"
    brokers.warm_group_coordinator(bootstrap, 60)
    _plain_topic(bootstrap, topic, 10)
    url = f"sqlite:///{tmp_path / 'events.db'}"
    monkeypatch.setenv("AIRFLOW_CONN_EVENTS_DB", url)
    engine = create_engine(url)
    before = _watcher(monkeypatch, bootstrap, topic, group, settled_conn_id="events_db", redelivery_seconds=3600)
    try:
        _settle_all(before, engine, 10)
    finally:
        before._consumer.close()  # the triggerer stops
    assert _committed(bootstrap, group, topic) == 10
    admin = AdminClient({"bootstrap.servers": bootstrap})  # retention, as the broker applies it to an idle group
    [deleted] = admin.delete_consumer_groups([group], request_timeout=20).values()
    deleted.result(30)
    assert _committed(bootstrap, group, topic) < 0
    after = _watcher(monkeypatch, bootstrap, topic, group, settled_conn_id="events_db", redelivery_seconds=3600)
    try:
        assert _committed(bootstrap, group, topic) == 10  # resumed, and committed at once
        assert after.gather() == [] and after.gather() == []
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
        producer.produce(topic, key=b"dev-1", value=b"r10")
        assert producer.flush(30) == 0
        assert [r["offset"] for r in _settle_all(after, engine, 1)[0]] == [10]
        assert _committed(bootstrap, group, topic) == 11
    finally:
        after._consumer.close()


def test_sqs_dead_letters_cannot_fail_on_their_content(stack, monkeypatch):
    """The run's settle step on the real ElasticMQ: a reason carrying a control character and a NUL, and five poison
    bodies of 200 KB (together far over a batch's 256 KiB) are all dead-lettered with their original bodies and a
    reason SQS accepts, a body too large for a copy as a stand-in naming it; nothing raises, and the source
    messages are deleted. Before: the control character failed
    the send (InvalidMessageContents) and the run, and the large bodies exceeded the batch limit."""
    import json

    import boto3

    from event_streams import sqs as event_sqs
    from event_streams.pipelines import sqs_source
    from event_streams.pipelines.messages import Envelope

    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps({
        "conn_type": "aws", "login": "x", "password": "x",
        "extra": {"endpoint_url": stack["sqs"], "region_name": "us-east-1"}}))
    client = boto3.client("sqs", endpoint_url=stack["sqs"], region_name="us-east-1", aws_access_key_id="x",
                          aws_secret_access_key="x")
    queue = client.get_queue_url(QueueName="inference-requests")["QueueUrl"]
    dlq = client.get_queue_url(QueueName="inference-requests-dlq")["QueueUrl"]
    bodies = ['{"request_id": "r-1", "\\u0007": 1}'] + [json.dumps({"pad": f"{i}" * 200_000}) for i in range(5)]
    bodies.append("y" * 262_100)  # the queue took it; with its reason and ids the copy is over SQS's limit
    for body in bodies:
        client.send_message(QueueUrl=queue, MessageBody=body)
    received: list[dict] = []
    while len(received) < len(bodies):
        received += client.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=2,
                                           VisibilityTimeout=60).get("Messages", [])
    envelopes = [Envelope.from_sqs(m) for m in received]
    reasons = {e.message_id: ("does not match InferenceRequest: \x07: Extra inputs are not permitted \x00"
                              if e.body == bodies[0] else "body is not a request") for e in envelopes}
    event_sqs._clients.clear()
    try:
        sqs_source.settle_sqs(queue, dlq, envelopes, [{"message_id": m, "reason": r} for m, r in reasons.items()])
    finally:
        event_sqs._clients.clear()
    copies: list[dict] = []
    deadline = time.monotonic() + 30
    while len(copies) < len(bodies) and time.monotonic() < deadline:
        copies += client.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                         MessageAttributeNames=["All"]).get("Messages", [])
    for m in copies:
        client.delete_message(QueueUrl=dlq, ReceiptHandle=m["ReceiptHandle"])
    by_source = {m["MessageAttributes"]["source_message_id"]["StringValue"]: m for m in copies}
    assert set(by_source) == set(reasons) and len(copies) == len(bodies)  # each dead letter once
    for e in envelopes:
        copy = by_source[e.message_id]
        if e.body == bodies[-1]:  # a stand-in naming it; its body is kept in the dead_letters table
            assert json.loads(copy["Body"]) == {"dead_letter": e.message_id, "body_bytes": 262_100,
                                                "body_kept_in": "dead_letters"}
            assert copy["MessageAttributes"]["body_kept_in"]["StringValue"] == "dead_letters"
        else:
            assert copy["Body"] == e.body  # the original content
    odd = next(by_source[e.message_id] for e in envelopes if e.body == bodies[0])
    assert odd["MessageAttributes"]["reason"]["StringValue"] == \
        "does not match InferenceRequest: \\x07: Extra inputs are not permitted \\x00"
    assert client.receive_message(QueueUrl=queue, WaitTimeSeconds=1).get("Messages", []) == []  # deleted


def test_dead_letters_and_replies_reach_fifo_queues(stack, monkeypatch):
    """A FIFO dead-letter queue and a FIFO reply queue (``.fifo``): every send carries a group id and a
    deduplication id, so it is taken (before: every send was refused for want of MessageGroupId)."""
    import json

    import boto3

    from event_streams import sqs as event_sqs
    from event_streams.pipelines import sqs_source
    from event_streams.pipelines.messages import Envelope

    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps({
        "conn_type": "aws", "login": "x", "password": "x",
        "extra": {"endpoint_url": stack["sqs"], "region_name": "us-east-1"}}))
    client = boto3.client("sqs", endpoint_url=stack["sqs"], region_name="us-east-1", aws_access_key_id="x",
                          aws_secret_access_key="x")
    suffix = uuid.uuid4().hex[:6]
    source = client.create_queue(QueueName=f"requests-{suffix}")["QueueUrl"]
    dlq = client.create_queue(QueueName=f"requests-{suffix}-dlq.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    replies = client.create_queue(QueueName=f"replies-{suffix}.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    client.send_message(QueueUrl=source, MessageBody="not json")
    [message] = client.receive_message(QueueUrl=source, WaitTimeSeconds=2).get("Messages", [])
    envelope = Envelope.from_sqs(message)
    event_sqs._clients.clear()
    try:
        sqs_source.settle_sqs(source, dlq, [envelope], [{"message_id": envelope.message_id, "reason": "not JSON"}])
        sqs_source.send_sqs_messages(replies, [(f"reply-{i}", json.dumps({"i": i}), {"correlation_id": f"c{i}"})
                                              for i in range(12)])
        sqs_source.send_sqs_messages(replies, [("reply-0", json.dumps({"i": 0}), {"correlation_id": "c0"})])  # again
    finally:
        event_sqs._clients.clear()

    def drain(url: str) -> list[dict]:
        got: list[dict] = []
        while batch := client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                              MessageAttributeNames=["All"]).get("Messages", []):
            got += batch
            for m in batch:
                client.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        return got

    [dead] = drain(dlq)
    assert dead["Body"] == "not json" and dead["MessageAttributes"]["reason"]["StringValue"] == "not JSON"
    assert sorted(json.loads(m["Body"])["i"] for m in drain(replies)) == list(range(12))  # the re-send deduplicated


def test_an_oversize_sqs_body_is_kept_by_the_trigger_and_dead_lettered_whole(stack, tmp_path, monkeypatch):
    """No content is lost (issue 17): two multi-byte bodies the queue took but over the trigger's bound (a 300 KiB
    one, over SQS's 256 KiB too, and a 100 KiB one against a 64 KiB ``max_message_bytes``) are kept, byte for byte,
    in ``kept_bodies`` of the events database before their event goes out, and the event carries only the marker.
    The run's dead-lettering puts the original bytes in each ``dead_letters`` row, sends the 100 KiB body itself as
    the DLQ copy and the 300 KiB one as a stand-in, both with the message's original attributes (ours win on a
    clash), and deletes the source messages. Before: the bodies were dropped, the rows had NULL bodies, and every
    copy was a stand-in without the original attributes."""
    import asyncio
    import json

    import boto3
    from airflow.providers.amazon.aws.hooks.sqs import SqsHook
    from sqlalchemy import create_engine, select

    from event_streams import kept_bodies, payload
    from event_streams import sqs as event_sqs
    from event_streams.pipelines import db, sqs_source
    from event_streams.pipelines.messages import dead_letter_row, envelopes_from_asset_events
    from event_streams.triggers import StreamingSqsTrigger

    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps({
        "conn_type": "aws", "login": "x", "password": "x",
        "extra": {"endpoint_url": stack["sqs"], "region_name": "us-east-1"}}))
    url = f"sqlite:///{tmp_path / 'events.db'}"
    monkeypatch.setenv("AIRFLOW_CONN_EVENTS_DB", url)
    client = boto3.client("sqs", endpoint_url=stack["sqs"], region_name="us-east-1", aws_access_key_id="x",
                          aws_secret_access_key="x")
    suffix = uuid.uuid4().hex[:6]
    source = client.create_queue(QueueName=f"oversize-{suffix}")["QueueUrl"]
    dlq = client.create_queue(QueueName=f"oversize-{suffix}-dlq")["QueueUrl"]
    huge = "é€😀" * (300 * 1024 // 9)  # 300 KiB of UTF-8; ElasticMQ counts its UTF-16 units (133 Ki) and takes it
    large = "é€😀" * (100 * 1024 // 9)  # 100 KiB: over this trigger's 64 KiB bound, small enough for a DLQ copy
    originals = {"trace": {"DataType": "String", "StringValue": "t-1"},
                 "priority": {"DataType": "Number", "StringValue": "7"},
                 "reason": {"DataType": "String", "StringValue": "the producer's own"}}
    for body in (huge, large):
        client.send_message(QueueUrl=source, MessageBody=body, MessageAttributes=originals)
    trigger = StreamingSqsTrigger(sqs_queue=source, aws_conn_id="aws_default", region_name="us-east-1",
                                  kept_conn_id="events_db", max_message_bytes=64 * 1024, linger_seconds=0.5,
                                  wait_time_seconds=2, visibility_timeout=60)

    async def gather(want: int) -> list[dict]:
        got: list[dict] = []
        hook = SqsHook(aws_conn_id="aws_default", region_name="us-east-1")
        async with await hook.get_async_conn() as sqs_client:
            deadline = time.monotonic() + 30
            while len(got) < want and time.monotonic() < deadline:
                got += await trigger.gather(sqs_client)
        return got

    batch = asyncio.run(gather(2))
    assert len(batch) == 2
    for m in batch:  # the marker, not the body; the original attributes ride along
        assert "Body" not in m and m[payload.BODY_KEPT_IN] == "kept_bodies"
        assert m[payload.MESSAGE_ATTRIBUTES] == originals
    t = kept_bodies.kept_bodies
    with create_engine(url).connect() as conn:
        kept = {mid: (queue, body, size) for mid, queue, body, size in
                conn.execute(select(t.c.message_id, t.c.source_queue, t.c.body, t.c.body_bytes))}
    by_size = {m[payload.BODY_OMITTED_BYTES]: m["MessageId"] for m in batch}
    huge_id, large_id = by_size[len(huge.encode("utf-8"))], by_size[len(large.encode("utf-8"))]
    assert kept[huge_id] == (source, huge, len(huge.encode("utf-8")))
    assert kept[large_id][1].encode("utf-8") == large.encode("utf-8")

    db.engine.cache_clear()
    event_sqs._clients.clear()
    try:
        envelopes = envelopes_from_asset_events([{"payload": {"status": "success", payload.MESSAGE_BATCH: batch}}])
        letters = [dead_letter_row(e, f"body is {e.body_omitted_bytes} bytes, over the limit") for e in envelopes]
        with db.engine().begin() as conn:
            db.record_dead_letters(conn, "smoke", letters)
        sqs_source.settle_sqs(source, dlq, envelopes, letters)
        with db.engine().connect() as conn:
            rows = dict(conn.execute(select(db.dead_letters.c.message_id, db.dead_letters.c.body)).all())
    finally:
        db.engine.cache_clear()
        event_sqs._clients.clear()
    assert rows[huge_id].encode("utf-8") == huge.encode("utf-8")
    assert rows[large_id].encode("utf-8") == large.encode("utf-8")

    copies: list[dict] = []
    deadline = time.monotonic() + 30
    while len(copies) < 2 and time.monotonic() < deadline:
        copies += client.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                         MessageAttributeNames=["All"]).get("Messages", [])
    by_source = {m["MessageAttributes"]["source_message_id"]["StringValue"]: m for m in copies}
    assert set(by_source) == {huge_id, large_id} and len(copies) == 2
    assert by_source[large_id]["Body"].encode("utf-8") == large.encode("utf-8")  # the original bytes
    assert json.loads(by_source[huge_id]["Body"]) == {"dead_letter": huge_id, "body_bytes": len(huge.encode("utf-8")),
                                                      "body_kept_in": "dead_letters"}
    assert by_source[huge_id]["MessageAttributes"]["body_kept_in"]["StringValue"] == "dead_letters"
    for copy in by_source.values():
        attributes = copy["MessageAttributes"]
        assert attributes["reason"]["StringValue"].startswith("body is ")  # ours, not the producer's
        assert attributes["source_queue"]["StringValue"] == source
        assert attributes["trace"] == {"DataType": "String", "StringValue": "t-1"}
        assert attributes["priority"] == {"DataType": "Number", "StringValue": "7"}
    assert client.receive_message(QueueUrl=source, WaitTimeSeconds=1).get("Messages", []) == []  # deleted
