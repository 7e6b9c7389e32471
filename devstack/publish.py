"""Publish test messages to the pipelines' brokers: our local ones (ElasticMQ, the native Kafka) or real AWS/Kafka.

    python -m devstack.publish etl       --count 20 --rows 5 --record .devstack/expect.jsonl
    python -m devstack.publish iot       --count 100 --devices 5 --rate 50
    python -m devstack.publish inference --count 50 --seed 7
    python -m devstack.publish iot       --poison --record .devstack/expect.jsonl

The pipelines are found, not named here (``devstack.pipelines``): each ``include/<dag_id>/samples.py`` gives its
short name, broker and source, its sample messages (built with the pipeline's own pydantic schemas, so valid by
construction), its poison set and its options (``--rows``, ``--devices``, ...). This module sends them. Every id
carries ``--run-id`` (default: random), so repeated runs never collide. ``--record FILE`` appends one JSON line per
published message -- ``{"pipeline", "id", "message_id", "published_at", "body_sha256", "expect"}`` -- where
``expect`` says what the pipeline must produce for it:

- etl: ``{"orders": [order ids]}``; iot: ``{"transition": "raised" | "cleared" | null}``;
  inference: ``{"request_id": ...}``;
- ``--poison`` (the poison set instead of good messages): ``{"dead_letter_reason_contains": ...}``, or for the
  ETL's file problems ``{"quarantine_reason_contains": ...}``.

Record ids: etl ``d-<run>-<i>`` (the delivery id), iot ``dev-<run>-<k>#<j>`` (device ``dev-<run>-<k>``, its j-th
reading), inference ``req-<run>-<i>``, poison ``poison-<run>-<kind>`` (the ETL's file cases: ``d-<run>-missing-file``
and ``d-<run>-truncated-file``, their delivery ids). ``message_id``: the SQS MessageId, or ``topic/partition/offset``.

``publish(pipeline, count, ...)`` is importable and returns the records; it takes an optional ready-made client
(``sqs_client`` / ``producer``) so tests can run it without a broker. No Airflow import here: this runs on any
machine with boto3 / confluent_kafka.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from devstack import pipelines
from event_streams.pipelines.samples_api import PRODUCER, Sample, iso, utcnow

LOCAL_SQS_ENDPOINT = "http://127.0.0.1:9324"
LOCAL_QUEUE_URL_PREFIX = "http://127.0.0.1:9324/000000000000"
LOCAL_BOOTSTRAP = "127.0.0.1:9092"
LOCAL_CREDENTIALS = ("local-emulator-key", "local-emulator-secret")  # ElasticMQ accepts any; never real ones

SQS_BATCH_MAX = 10  # entries per SendMessageBatch
SQS_BATCH_MAX_BYTES = 256 * 1024  # total payload of one SendMessageBatch
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,40}$")  # fits every id pattern of the schemas
SQS_BATCH_PACED_RATE = 20.0  # messages/s from which paced SQS sends go 10 per SendMessageBatch (one client thread)
MAX_PACING_LAG_S = 1.0  # behind schedule by more than this: restart the schedule instead of bursting to catch up
KAFKA_FLUSH_TIMEOUT_S = 60.0


class PublishError(RuntimeError):
    """Some messages could not be published; ``records`` are the ones that were."""

    def __init__(self, message: str, records: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.records = records


# --------------------------------------------------------------------------------------------------- helpers


def new_run_id() -> str:
    return secrets.token_hex(4)


def check_run_id(run_id: str) -> str:
    if not RUN_ID_PATTERN.match(run_id):
        raise ValueError(f"run id {run_id!r} must match {RUN_ID_PATTERN.pattern}")
    return run_id


class Pacer:
    """Spaces calls ``1/rate`` s apart on a monotonic clock. ``rate <= 0``: no pacing.

    Bounded: a sleep never exceeds one interval, and when the caller has fallen more than ``MAX_PACING_LAG_S``
    behind (a slow broker), the schedule restarts from now instead of bursting to catch up.
    """

    def __init__(self, rate: float, clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], None] | None = None) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._clock = clock or time.monotonic
        self._sleep = sleep or time.sleep
        self._next: float | None = None

    def wait(self) -> None:
        if self.interval <= 0:
            return
        now = self._clock()
        if self._next is None or now - self._next > MAX_PACING_LAG_S:
            self._next = now
        delay = min(self._next - now, self.interval)
        if delay > 0:
            self._sleep(delay)
        self._next += self.interval


def write_records(path: Path | str | None, records: Iterable[Mapping[str, Any]]) -> None:
    """Append one JSON line per record."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=False) + "\n")


def _record(pipeline: str, msg: Sample, message_id: str, published_at: datetime) -> dict[str, Any]:
    """``body_sha256``: how a trigger that gives only the body (Airflow 3.3's shared stream) names the message."""
    body = msg.body if isinstance(msg.body, bytes) else str(msg.body).encode("utf-8")
    return {"pipeline": pipeline, "id": msg.id, "message_id": message_id, "published_at": iso(published_at),
            "body_sha256": hashlib.sha256(body).hexdigest(), "expect": msg.expect}


# --------------------------------------------------------------------------------------------------- SQS


def parse_endpoint(value: str | None) -> str | None:
    """``''`` / ``none`` (any case) means real AWS: boto3's default endpoint."""
    if value is None or value.strip().lower() in ("", "none"):
        return None
    return value.strip()


def make_sqs_client(endpoint: str | None, region: str) -> Any:
    import boto3

    kwargs: dict[str, Any] = {"region_name": region}
    if endpoint:
        kwargs["endpoint_url"] = endpoint
        if not (os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE")):
            kwargs["aws_access_key_id"], kwargs["aws_secret_access_key"] = LOCAL_CREDENTIALS
    return boto3.client("sqs", **kwargs)


def _sqs_batches(messages: Iterable[Sample]) -> Iterator[list[Sample]]:
    """Up to 10 messages and 256 KiB per batch, built lazily (timestamps are taken close to the send)."""
    batch: list[Sample] = []
    size = 0
    for m in messages:
        if batch and (len(batch) == SQS_BATCH_MAX or size + len(m.body) > SQS_BATCH_MAX_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(m)
        size += len(m.body)
    if batch:
        yield batch


def send_sqs(
    pipeline: str, client: Any, queue_url: str, messages: Iterable[Sample], rate: float = 0.0,
) -> list[dict[str, Any]]:
    """``SendMessageBatch`` (10 per call) when ``rate`` is 0 or at least ``SQS_BATCH_PACED_RATE`` (then the batches
    are paced at ``rate / 10``), else one paced ``SendMessage`` each."""
    records: list[dict[str, Any]] = []
    if rate <= 0 or rate >= SQS_BATCH_PACED_RATE:
        batch_pacer = Pacer(rate / 10)
        for batch in _sqs_batches(messages):
            batch_pacer.wait()
            entries = [{"Id": str(n), "MessageBody": m.body.decode("utf-8")} for n, m in enumerate(batch)]
            try:
                resp = client.send_message_batch(QueueUrl=queue_url, Entries=entries)
            except Exception as exc:
                raise PublishError(f"SendMessageBatch to {queue_url} failed: {exc}", records) from exc
            sent_at = utcnow()
            ok = {s["Id"]: s["MessageId"] for s in resp.get("Successful", [])}
            for n, m in enumerate(batch):
                if str(n) in ok:
                    records.append(_record(pipeline, m, ok[str(n)], sent_at))
            failed = resp.get("Failed", [])
            if failed:
                detail = "; ".join(f"{batch[int(f['Id'])].id}: {f.get('Code')} {f.get('Message', '')}" for f in failed)
                raise PublishError(f"{len(failed)} message(s) refused by {queue_url}: {detail}", records)
        return records
    pacer = Pacer(rate)
    for m in messages:
        pacer.wait()
        try:
            resp = client.send_message(QueueUrl=queue_url, MessageBody=m.body.decode("utf-8"))
        except Exception as exc:
            raise PublishError(f"SendMessage {m.id} to {queue_url} failed: {exc}", records) from exc
        records.append(_record(pipeline, m, resp["MessageId"], utcnow()))
    return records


@dataclass(frozen=True)
class SqsTarget:
    endpoint: str | None = field(default_factory=lambda: parse_endpoint(os.environ.get("SQS_ENDPOINT_URL", LOCAL_SQS_ENDPOINT)))
    queue_url_prefix: str = field(default_factory=lambda: os.environ.get("SQS_QUEUE_URL_PREFIX", LOCAL_QUEUE_URL_PREFIX))
    region: str = field(default_factory=lambda: os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))

    def queue_url(self, queue: str) -> str:
        return f"{self.queue_url_prefix.rstrip('/')}/{queue}"


# --------------------------------------------------------------------------------------------------- Kafka


def parse_kafka_config(items: Sequence[str]) -> dict[str, str]:
    """``["security.protocol=SASL_SSL", ...]`` -> a librdkafka config dict."""
    config: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--kafka-config expects key=value, got {item!r}")
        config[key.strip()] = value
    return config


def make_producer(bootstrap: str, extra: Mapping[str, str] | None = None) -> Any:
    from confluent_kafka import Producer

    config: dict[str, Any] = {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                              "linger.ms": 5, "client.id": PRODUCER}
    config.update(extra or {})
    return Producer(config)


def send_kafka(
    pipeline: str, producer: Any, topic: str, messages: Iterable[Sample], rate: float = 0.0,
    flush_timeout: float = KAFKA_FLUSH_TIMEOUT_S,
) -> list[dict[str, Any]]:
    """Produce every message (key = its key), flush, and raise ``PublishError`` if any delivery failed.

    Records are in produce order; each ``message_id`` is ``topic/partition/offset`` from the delivery report.
    """
    produced: list[tuple[Sample, datetime]] = []
    delivered: dict[int, str] = {}
    errors: dict[int, str] = {}

    def on_delivery(index: int) -> Callable[[Any, Any], None]:
        def report(err: Any, msg: Any) -> None:
            if err is not None:
                errors[index] = str(err)
            else:
                delivered[index] = f"{msg.topic()}/{msg.partition()}/{msg.offset()}"
        return report

    pacer = Pacer(rate)
    for m in messages:
        pacer.wait()
        index = len(produced)
        while True:
            try:
                producer.produce(topic, value=m.body, key=m.key.encode("utf-8") if m.key is not None else None,
                                 on_delivery=on_delivery(index))
                break
            except BufferError:  # local queue full: serve delivery reports, then retry
                producer.poll(0.5)
        produced.append((m, utcnow()))
        producer.poll(0)
    remaining = producer.flush(flush_timeout)

    records = [_record(pipeline, m, delivered[n], at) for n, (m, at) in enumerate(produced) if n in delivered]
    if errors or remaining or len(records) != len(produced):
        first = "; ".join(f"{produced[n][0].id}: {e}" for n, e in list(errors.items())[:5])
        raise PublishError(
            f"{len(produced) - len(records)} of {len(produced)} message(s) not delivered to {topic}"
            f" ({remaining} still queued after {flush_timeout:g}s){': ' + first if first else ''}",
            records,
        )
    return records


# --------------------------------------------------------------------------------------------------- publish


def publish(
    pipeline: str, count: int = 10, *, run_id: str | None = None, seed: int | None = None, rate: float = 0.0,
    poison: bool = False, record: Path | str | None = None,
    target: SqsTarget | None = None, queue: str | None = None, sqs_client: Any = None,
    bootstrap: str | None = None, topic: str | None = None, kafka_config: Mapping[str, str] | None = None,
    producer: Any = None, **options: Any,
) -> list[dict[str, Any]]:
    """Send ``count`` sample messages of ``pipeline`` (its short name), or its poison set, to its source; returns the
    records (also appended to ``record``).

    ``options`` go to the pipeline's ``messages`` / ``poison`` (e.g. ``rows``, ``landing_dir``, ``devices``,
    ``start``). SQS pipelines: ``target``, ``queue`` (default: the pipeline's), ``sqs_client``; Kafka ones:
    ``bootstrap`` (default ``$KAFKA_BOOTSTRAP``, else the local broker), ``topic``, ``kafka_config``, ``producer``.
    """
    spec = pipelines.get(pipeline)
    run_id = check_run_id(run_id or new_run_id())
    if spec.broker == "kafka" and producer is None:
        producer = make_producer(bootstrap or os.environ.get("KAFKA_BOOTSTRAP", LOCAL_BOOTSTRAP), kafka_config)
    messages: Iterable[Sample] = (spec.poison(run_id, **options) if poison
                                  else spec.messages(run_id, count, seed=seed, **options))
    try:
        if spec.broker == "sqs":
            target = target or SqsTarget()
            client = sqs_client if sqs_client is not None else make_sqs_client(target.endpoint, target.region)
            records = send_sqs(spec.name, client, target.queue_url(queue or spec.source), messages, rate)
        else:
            records = send_kafka(spec.name, producer, topic or spec.source, messages, rate)
    except PublishError as exc:
        write_records(record, exc.records)
        raise
    write_records(record, records)
    return records


# --------------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m devstack.publish", description=__doc__.split("\n\n")[0])
    p.add_argument("pipeline", choices=pipelines.names())
    p.add_argument("--count", type=int, default=10, help="messages to publish (default 10; ignored with --poison)")
    p.add_argument("--rate", type=float, default=0.0, help="messages per second (default 0: as fast as possible)")
    p.add_argument("--run-id", type=str, default=None, help="goes into every id (default: random hex)")
    p.add_argument("--seed", type=int, default=None, help="seed for the generated values")
    p.add_argument("--record", type=Path, default=None, help="append one JSON line per published message")
    p.add_argument("--poison", action="store_true", help="publish the poison set instead")
    on = {b: ", ".join(x.name for x in pipelines.pipelines() if x.broker == b) for b in ("sqs", "kafka")}
    sqs = p.add_argument_group(f"SQS ({on['sqs']})")
    sqs.add_argument("--sqs-endpoint", default=os.environ.get("SQS_ENDPOINT_URL", LOCAL_SQS_ENDPOINT),
                     help="'' or 'none' for real AWS")
    sqs.add_argument("--queue-url-prefix", default=os.environ.get("SQS_QUEUE_URL_PREFIX", LOCAL_QUEUE_URL_PREFIX))
    sqs.add_argument("--region", default=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    kafka = p.add_argument_group(f"Kafka ({on['kafka']})")
    kafka.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", LOCAL_BOOTSTRAP))
    kafka.add_argument("--topic", default=None, help="default: the pipeline's source topic")
    kafka.add_argument("--kafka-config", action="append", default=[], metavar="KEY=VALUE",
                       help="extra producer setting, repeatable (e.g. security.protocol=SASL_SSL)")
    flags: dict[str, str] = {}  # an option two pipelines share is added once
    for spec in pipelines.pipelines():
        mine = [o for o in spec.options if flags.setdefault(o.flag, spec.name) == spec.name]
        if mine:
            group = p.add_argument_group(spec.name)
            for o in mine:
                group.add_argument(o.flag, type=o.type, default=o.default, help=o.help)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    spec = pipelines.get(args.pipeline)
    run_id = args.run_id or new_run_id()
    try:
        check_run_id(run_id)
        kafka_config = parse_kafka_config(args.kafka_config)
    except ValueError as exc:
        parser.error(str(exc))
    bounded = [o for x in pipelines.pipelines() for o in x.options if o.minimum is not None]
    if args.count < 0 or args.rate < 0 or any(getattr(args, o.name) < o.minimum for o in bounded):
        parser.error(", ".join(["--count must be >= 0", "--rate >= 0", *(f"{o.flag} >= {o.minimum}" for o in bounded)]))

    options = {o.name: getattr(args, o.name) for o in spec.options}
    target = SqsTarget(parse_endpoint(args.sqs_endpoint), args.queue_url_prefix, args.region)
    started = time.monotonic()
    try:
        records = publish(spec.name, args.count, run_id=run_id, seed=args.seed, rate=args.rate, poison=args.poison,
                          record=args.record, target=target, bootstrap=args.bootstrap, topic=args.topic,
                          kafka_config=kafka_config, **options)
    except PublishError as exc:
        print(f"error: {exc} ({len(exc.records)} published before the failure)", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    print(f"run id {run_id}", file=sys.stderr)
    print(f"published {len(records)} {args.pipeline} messages in {elapsed:.2f}s "
          f"({len(records) / elapsed if elapsed > 0 else 0.0:.1f} msg/s)")
    if spec.describe is not None and not args.poison:
        print(spec.describe(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
