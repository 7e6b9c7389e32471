"""Publish test messages to the pipelines' brokers: our local ones (ElasticMQ, the native Kafka) or real AWS/Kafka.

    python -m devstack.publish etl       --count 20 --rows 5 --record .devstack/expect.jsonl
    python -m devstack.publish iot       --count 100 --devices 5 --rate 50
    python -m devstack.publish inference --count 50 --seed 7
    python -m devstack.publish iot       --poison --record .devstack/expect.jsonl

Messages are built with the project's own pydantic schemas, so they are valid by construction. Every id carries
``--run-id`` (default: random), so repeated runs never collide. ``--record FILE`` appends one JSON line per
published message -- ``{"pipeline", "id", "message_id", "published_at", "expect"}`` -- where ``expect`` says what
the pipeline must produce for it:

- etl: ``{"orders": [order ids]}``; iot: ``{"transition": "raised" | "cleared" | null}``;
  inference: ``{"request_id": ...}``;
- ``--poison`` (the poison set instead of good messages): ``{"dead_letter_reason_contains": ...}``, or for the
  ETL's file problems ``{"quarantine_reason_contains": ...}``.

Record ids: etl ``d-<run>-<i>`` (the delivery id), iot ``dev-<run>-<k>#<j>`` (device ``dev-<run>-<k>``, its j-th
reading), inference ``req-<run>-<i>``, poison ``poison-<run>-<kind>`` (the ETL's file cases: ``d-<run>-missing-file``
and ``d-<run>-truncated-file``, their delivery ids). ``message_id``: the SQS MessageId, or ``topic/partition/offset``.

The functions (``publish_etl``, ``publish_iot``, ``publish_inference``) are importable and return the records;
they take an optional ready-made client (``sqs_client`` / ``producer``) so tests can run them without a broker.
No Airflow import here: this runs on any machine with boto3 / confluent_kafka.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

from include.data_delivery_etl.pipeline import render_csv
from include.data_delivery_etl.schemas import CSV_HEADER, DeliveryNotice
from include.event_pipelines.messages import MAX_BODY_BYTES
from include.inference_execution.schemas import InferenceRequest, MachineFeatures
from include.iot_alerting.rules import RULES, DeviceState, evaluate
from include.iot_alerting.schemas import SensorReading

Pipeline = Literal["etl", "iot", "inference"]
Broker = Literal["sqs", "kafka"]
PIPELINES: tuple[Pipeline, ...] = ("etl", "iot", "inference")
BROKER_OF: dict[Pipeline, Broker] = {"etl": "sqs", "iot": "kafka", "inference": "sqs"}

PRODUCER = "devstack-publisher"
LOCAL_SQS_ENDPOINT = "http://127.0.0.1:9324"
LOCAL_QUEUE_URL_PREFIX = "http://127.0.0.1:9324/000000000000"
LOCAL_BOOTSTRAP = "127.0.0.1:9092"
LOCAL_CREDENTIALS = ("local-emulator-key", "local-emulator-secret")  # ElasticMQ accepts any; never real ones
DEFAULT_LANDING_DIR = ".devstack/data/landing"

SQS_BATCH_MAX = 10  # entries per SendMessageBatch
SQS_BATCH_MAX_BYTES = 256 * 1024  # total payload of one SendMessageBatch
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,40}$")  # fits every id pattern of the schemas
SQS_BATCH_PACED_RATE = 20.0  # messages/s from which paced SQS sends go 10 per SendMessageBatch (one client thread)
MAX_PACING_LAG_S = 1.0  # behind schedule by more than this: restart the schedule instead of bursting to catch up
KAFKA_FLUSH_TIMEOUT_S = 60.0

# Temperature bands relative to the rule (raise at >= 80, clear at <= 75): where a value lands decides the
# transition, and the seed only moves it inside its band.
_TEMP_BANDS: dict[str, tuple[float, float]] = {"low": (62.0, 74.5), "mid": (75.5, 79.5), "high": (80.5, 92.0)}
_TEMP_CYCLE = ("low", "high", "mid", "low")  # e.g. 70, 82, 78, 74, 70, ...: raise, hold, clear, ...


class PublishError(RuntimeError):
    """Some messages could not be published; ``records`` are the ones that were."""

    def __init__(self, message: str, records: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.records = records


@dataclass(frozen=True)
class OutMessage:
    """One message to publish and what the pipeline must make of it."""

    id: str
    body: bytes
    expect: dict[str, Any]
    key: str | None = None  # Kafka record key


# --------------------------------------------------------------------------------------------------- helpers


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(ts: datetime) -> str:
    """UTC ISO-8601 with a ``Z``, as producers usually write it."""
    return ts.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def new_run_id() -> str:
    return secrets.token_hex(4)


def check_run_id(run_id: str) -> str:
    if not RUN_ID_PATTERN.match(run_id):
        raise ValueError(f"run id {run_id!r} must match {RUN_ID_PATTERN.pattern}")
    return run_id


def _json(model: Any) -> bytes:
    return model.model_dump_json().encode("utf-8")


def landing_uri_prefix_for(landing_dir: Path) -> str:
    return Path(landing_dir).resolve().as_uri()


def _join_uri(prefix: str, name: str) -> str:
    return f"{prefix.rstrip('/')}/{name}"


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


def _record(pipeline: Pipeline, msg: OutMessage, message_id: str, published_at: datetime) -> dict[str, Any]:
    """``body_sha256``: how a trigger that gives only the body (Airflow 3.3's shared stream) names the message."""
    body = msg.body if isinstance(msg.body, bytes) else str(msg.body).encode("utf-8")
    return {"pipeline": pipeline, "id": msg.id, "message_id": message_id, "published_at": iso(published_at),
            "body_sha256": hashlib.sha256(body).hexdigest(), "expect": msg.expect}


# --------------------------------------------------------------------------------------------------- messages


def etl_messages(
    run_id: str, count: int, rows: int, landing_dir: Path, landing_uri_prefix: str | None = None,
    seed: int | None = None, now: Callable[[], datetime] = utcnow,
) -> Iterator[OutMessage]:
    """Write each delivery's CSV into ``landing_dir`` and yield its ``DeliveryNotice`` (built when consumed)."""
    rng = random.Random(seed)
    landing_dir = Path(landing_dir)
    landing_dir.mkdir(parents=True, exist_ok=True)
    prefix = landing_uri_prefix or landing_uri_prefix_for(landing_dir)
    for i in range(count):
        delivery_id = f"d-{run_id}-{i}"
        orders = [_order_row(rng, f"o-{run_id}-{i}-{j}", now()) for j in range(rows)]
        data = render_csv(orders)
        name = f"{delivery_id}.csv"
        (landing_dir / name).write_bytes(data)
        notice = DeliveryNotice(
            delivery_id=delivery_id, uri=_join_uri(prefix, name), sha256=hashlib.sha256(data).hexdigest(),
            row_count=len(orders), producer=PRODUCER, delivered_at=now(),
        )
        yield OutMessage(delivery_id, _json(notice), {"orders": [o["order_id"] for o in orders]})


def _order_row(rng: random.Random, order_id: str, now: datetime) -> dict[str, str]:
    """One CSV row (keys: ``CSV_HEADER``) that ``OrderRow`` accepts."""
    ordered_at = (now - timedelta(minutes=rng.randint(1, 600))).replace(microsecond=0)
    values = (
        order_id,
        f"c-{rng.randint(1, 500)}",
        f"{rng.randint(100, 50_000) / 100:.2f}",
        rng.choice(("EUR", "USD", "GBP")),
        ordered_at.isoformat(),
    )
    return dict(zip(CSV_HEADER, values, strict=True))


def iot_values(devices: int, per_device: int, seed: int | None = None) -> list[list[float]]:
    """Per device, a temperature sequence cycling low/high/mid/low bands (from a seeded phase) with seeded jitter."""
    rng = random.Random(seed)
    out: list[list[float]] = []
    for _ in range(devices):
        phase = rng.randrange(len(_TEMP_CYCLE))
        seq = []
        for j in range(per_device):
            lo, hi = _TEMP_BANDS[_TEMP_CYCLE[(phase + j) % len(_TEMP_CYCLE)]]
            seq.append(round(rng.uniform(lo, hi), 1))
        out.append(seq)
    return out


def iot_messages(
    run_id: str, count: int, devices: int, seed: int | None = None, start: datetime | None = None,
) -> Iterator[OutMessage]:
    """``count`` temperature readings round-robin over ``devices`` devices, 1 s apart per device from ``start``.

    The expected transition of each reading is computed with the project's own rules, sequentially per device in
    timestamp order (what ``process_readings`` does).
    """
    if devices < 1:
        raise ValueError("devices must be >= 1")
    start = (start or utcnow()).astimezone(timezone.utc).replace(microsecond=0)
    values = iot_values(devices, -(-count // devices), seed)
    rule = RULES["temperature"]
    states: dict[str, DeviceState | None] = {}
    for i in range(count):
        k, j = i % devices, i // devices
        device_id = f"dev-{run_id}-{k}"
        reading = SensorReading(device_id=device_id, sensor="temperature", value=values[k][j], unit=rule.unit,
                                ts=start + timedelta(seconds=j))
        states[device_id], transition = evaluate(rule, states.get(device_id), reading.value, reading.ts)
        yield OutMessage(f"{device_id}#{j}", _json(reading), {"transition": transition}, key=device_id)


# Feature ranges of a machine about to fail ("hot") and a healthy one ("cool"), all inside the schema bounds.
_HOT = {"temperature_c": (85.0, 120.0), "vibration_mm_s": (10.0, 25.0), "pressure_kpa": (70.0, 92.0), "rpm": (4000.0, 9000.0)}
_COOL = {"temperature_c": (35.0, 70.0), "vibration_mm_s": (0.5, 6.0), "pressure_kpa": (98.0, 110.0), "rpm": (900.0, 3500.0)}


def inference_messages(
    run_id: str, count: int, seed: int | None = None, now: Callable[[], datetime] = utcnow,
) -> Iterator[OutMessage]:
    """Requests ``req-<run_id>-<i>``, alternating hot and cool machines (features drawn with the seed)."""
    rng = random.Random(seed)
    for i in range(count):
        ranges = _HOT if i % 2 == 0 else _COOL
        features = MachineFeatures(**{f: round(rng.uniform(lo, hi), 2) for f, (lo, hi) in ranges.items()})
        request = InferenceRequest(request_id=f"req-{run_id}-{i}", submitted_at=now(), features=features)
        yield OutMessage(request.request_id, _json(request), {"request_id": request.request_id})


# --------------------------------------------------------------------------------------------------- poison


def _dead(substring: str) -> dict[str, str]:
    return {"dead_letter_reason_contains": substring}


def poison_messages(
    pipeline: Pipeline, run_id: str, landing_dir: Path | None = None, landing_uri_prefix: str | None = None,
    now: Callable[[], datetime] = utcnow,
) -> list[OutMessage]:
    """One message per poison kind that applies to the pipeline's broker, each with the reason it must produce."""
    broker = BROKER_OF[pipeline]
    ts = iso(now())
    model = {"etl": "DeliveryNotice", "iot": "SensorReading", "inference": "InferenceRequest"}[pipeline]

    def pid(kind: str) -> str:
        return f"poison-{run_id}-{kind}"

    if pipeline == "etl":
        good: dict[str, Any] = {"delivery_id": pid("x"), "uri": "file:///nonexistent/poison.csv", "sha256": "0" * 64,
                                "row_count": 1, "producer": PRODUCER, "delivered_at": ts}
        wrong_type = {**good, "delivery_id": pid("wrong_type"), "row_count": "5"}
        out_of_range = {**good, "delivery_id": pid("out_of_range"), "row_count": -1}
        type_reason, range_reason = "row_count: Input should be a valid integer", "row_count: Input should be greater than or equal to 0"
    elif pipeline == "iot":
        good = {"device_id": pid("x"), "sensor": "temperature", "value": 70.0, "unit": "C", "ts": ts}
        wrong_type = {**good, "device_id": pid("wrong_type"), "value": "hot"}
        out_of_range = {**good, "device_id": pid("out_of_range"), "value": 500.0}
        type_reason, range_reason = "value: Input should be a valid number", "temperature value 500.0 is outside [-60, 200]"
    else:
        features = {"temperature_c": 70.0, "vibration_mm_s": 3.0, "pressure_kpa": 101.0, "rpm": 3000.0}
        good = {"request_id": pid("x"), "submitted_at": ts, "features": features}
        wrong_type = {**good, "request_id": pid("wrong_type"), "features": {**features, "rpm": "fast"}}
        out_of_range = {**good, "request_id": pid("out_of_range"), "features": {**features, "rpm": 50_000.0}}
        type_reason, range_reason = "features.rpm: Input should be a valid number", "features.rpm: Input should be less than or equal to 20000"

    msgs = [
        OutMessage(pid("not_json"), f"this is not JSON ({pid('not_json')})".encode(), _dead("body is not JSON")),
        OutMessage(pid("not_object"), json.dumps(["poison", run_id]).encode(), _dead("expected an object")),
        OutMessage(pid("wrong_schema"), json.dumps({"poison": pid("wrong_schema"), "hello": "world"}).encode(),
                   _dead(f"does not match {model}")),
        # SQS refuses an empty MessageBody: a blank one is what a producer can send, and decode calls it empty.
        OutMessage(pid("empty"), b" " if broker == "sqs" else b"", _dead("empty body")),
        OutMessage(pid("wrong_type"), json.dumps(wrong_type).encode(), _dead(type_reason)),
        OutMessage(pid("out_of_range"), json.dumps(out_of_range).encode(), _dead(range_reason)),
    ]
    if broker == "kafka":
        # SQS refuses > 256 KiB and non-UTF-8 bodies itself; Kafka's default max.message.bytes (~1 MB) lets 300 KB by.
        pad = "x" * (MAX_BODY_BYTES + 40_000)
        msgs.append(OutMessage(pid("oversize"), json.dumps({"poison": pid("oversize"), "pad": pad}).encode(),
                               _dead(f"over the {MAX_BODY_BYTES}-byte limit")))
        msgs.append(OutMessage(pid("invalid_utf8"), b"\xff\xfe{\"poison\": \"" + pid("invalid_utf8").encode() + b"\"}",
                               _dead("body is not valid UTF-8")))
    if pipeline == "etl":
        if landing_dir is None:
            raise ValueError("the ETL poison set writes files: landing_dir is required")
        msgs.extend(_etl_file_poison(run_id, Path(landing_dir), landing_uri_prefix, now))
    key = f"poison-{run_id}"
    return [OutMessage(m.id, m.body, m.expect, key=key if broker == "kafka" else None) for m in msgs]


def _etl_file_poison(
    run_id: str, landing_dir: Path, landing_uri_prefix: str | None, now: Callable[[], datetime]
) -> list[OutMessage]:
    """Valid notices whose files are bad: one never written (quarantined), one truncated after its checksum was
    taken (dead-lettered as a checksum mismatch, the file left in place)."""
    landing_dir.mkdir(parents=True, exist_ok=True)
    prefix = landing_uri_prefix or landing_uri_prefix_for(landing_dir)
    rng = random.Random(run_id)
    out = []
    for kind, reason in (("missing_file", "does not exist"), ("truncated_file", "checksum mismatch")):
        delivery_id = f"d-{run_id}-{kind.replace('_', '-')}"
        orders = [_order_row(rng, f"o-{run_id}-{kind.replace('_', '-')}-{j}", now()) for j in range(4)]
        data = render_csv(orders)
        name = f"{delivery_id}.csv"
        if kind == "truncated_file":
            (landing_dir / name).write_bytes(data[: len(data) // 2])  # the upload broke off half way
        notice = DeliveryNotice(delivery_id=delivery_id, uri=_join_uri(prefix, name),
                                sha256=hashlib.sha256(data).hexdigest(), row_count=len(orders), producer=PRODUCER,
                                delivered_at=now())
        # a truncated file's checksum is not the notice's: dead-lettered, the file left in place (never moved)
        key = "dead_letter_reason_contains" if kind == "truncated_file" else "quarantine_reason_contains"
        out.append(OutMessage(delivery_id, _json(notice), {key: reason}))
    return out


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


def _sqs_batches(messages: Iterable[OutMessage]) -> Iterator[list[OutMessage]]:
    """Up to 10 messages and 256 KiB per batch, built lazily (timestamps are taken close to the send)."""
    batch: list[OutMessage] = []
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
    pipeline: Pipeline, client: Any, queue_url: str, messages: Iterable[OutMessage], rate: float = 0.0,
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


def _publish_sqs(
    pipeline: Pipeline, queue: str, messages: Iterable[OutMessage], target: SqsTarget, rate: float,
    record: Path | str | None, sqs_client: Any,
) -> list[dict[str, Any]]:
    client = sqs_client if sqs_client is not None else make_sqs_client(target.endpoint, target.region)
    try:
        records = send_sqs(pipeline, client, target.queue_url(queue), messages, rate)
    except PublishError as exc:
        write_records(record, exc.records)
        raise
    write_records(record, records)
    return records


def publish_etl(
    count: int = 10, *, rows: int = 5, run_id: str | None = None, seed: int | None = None, rate: float = 0.0,
    poison: bool = False, record: Path | str | None = None,
    landing_dir: Path | str | None = None, landing_uri_prefix: str | None = None,
    target: SqsTarget | None = None, queue: str | None = None, sqs_client: Any = None,
) -> list[dict[str, Any]]:
    """Write delivery files and send their notices to ``DELIVERY_QUEUE``; returns the records."""
    run_id = check_run_id(run_id or new_run_id())
    queue = queue or os.environ.get("DELIVERY_QUEUE", "data-deliveries")
    landing_dir = Path(landing_dir or os.environ.get("LANDING_DIR", DEFAULT_LANDING_DIR))
    if poison:
        messages: Iterable[OutMessage] = poison_messages("etl", run_id, landing_dir, landing_uri_prefix)
    else:
        messages = etl_messages(run_id, count, rows, landing_dir, landing_uri_prefix, seed)
    return _publish_sqs("etl", queue, messages, target or SqsTarget(), rate, record, sqs_client)


def publish_inference(
    count: int = 10, *, run_id: str | None = None, seed: int | None = None, rate: float = 0.0, poison: bool = False,
    record: Path | str | None = None, target: SqsTarget | None = None, queue: str | None = None,
    sqs_client: Any = None,
) -> list[dict[str, Any]]:
    """Send inference requests to ``INFERENCE_REQUEST_QUEUE``; returns the records."""
    run_id = check_run_id(run_id or new_run_id())
    queue = queue or os.environ.get("INFERENCE_REQUEST_QUEUE", "inference-requests")
    messages = poison_messages("inference", run_id) if poison else inference_messages(run_id, count, seed)
    return _publish_sqs("inference", queue, messages, target or SqsTarget(), rate, record, sqs_client)


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
    pipeline: Pipeline, producer: Any, topic: str, messages: Iterable[OutMessage], rate: float = 0.0,
    flush_timeout: float = KAFKA_FLUSH_TIMEOUT_S,
) -> list[dict[str, Any]]:
    """Produce every message (key = its key), flush, and raise ``PublishError`` if any delivery failed.

    Records are in produce order; each ``message_id`` is ``topic/partition/offset`` from the delivery report.
    """
    produced: list[tuple[OutMessage, datetime]] = []
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


def publish_iot(
    count: int = 10, *, devices: int = 5, run_id: str | None = None, seed: int | None = None, rate: float = 0.0,
    poison: bool = False, record: Path | str | None = None,
    bootstrap: str | None = None, topic: str | None = None, kafka_config: Mapping[str, str] | None = None,
    producer: Any = None, start: datetime | None = None,
) -> list[dict[str, Any]]:
    """Produce temperature readings (key: device id) to ``IOT_READINGS_TOPIC``; returns the records."""
    run_id = check_run_id(run_id or new_run_id())
    topic = topic or os.environ.get("IOT_READINGS_TOPIC", "iot-readings")
    if producer is None:
        producer = make_producer(bootstrap or os.environ.get("KAFKA_BOOTSTRAP", LOCAL_BOOTSTRAP), kafka_config)
    messages = poison_messages("iot", run_id) if poison else iot_messages(run_id, count, devices, seed, start)
    try:
        records = send_kafka("iot", producer, topic, messages, rate)
    except PublishError as exc:
        write_records(record, exc.records)
        raise
    write_records(record, records)
    return records


def expected_alerts(records: Iterable[Mapping[str, Any]]) -> tuple[int, int]:
    """(raised, cleared) the IoT pipeline must produce for these records."""
    kinds = [r["expect"].get("transition") for r in records]
    return kinds.count("raised"), kinds.count("cleared")


# --------------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m devstack.publish", description=__doc__.split("\n\n")[0])
    p.add_argument("pipeline", choices=PIPELINES)
    p.add_argument("--count", type=int, default=10, help="messages to publish (default 10; ignored with --poison)")
    p.add_argument("--rate", type=float, default=0.0, help="messages per second (default 0: as fast as possible)")
    p.add_argument("--run-id", type=str, default=None, help="goes into every id (default: random hex)")
    p.add_argument("--seed", type=int, default=None, help="seed for the generated values")
    p.add_argument("--record", type=Path, default=None, help="append one JSON line per published message")
    p.add_argument("--poison", action="store_true", help="publish the poison set instead")
    sqs = p.add_argument_group("SQS (etl, inference)")
    sqs.add_argument("--sqs-endpoint", default=os.environ.get("SQS_ENDPOINT_URL", LOCAL_SQS_ENDPOINT),
                     help="'' or 'none' for real AWS")
    sqs.add_argument("--queue-url-prefix", default=os.environ.get("SQS_QUEUE_URL_PREFIX", LOCAL_QUEUE_URL_PREFIX))
    sqs.add_argument("--region", default=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    kafka = p.add_argument_group("Kafka (iot)")
    kafka.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", LOCAL_BOOTSTRAP))
    kafka.add_argument("--topic", default=os.environ.get("IOT_READINGS_TOPIC", "iot-readings"))
    kafka.add_argument("--kafka-config", action="append", default=[], metavar="KEY=VALUE",
                       help="extra producer setting, repeatable (e.g. security.protocol=SASL_SSL)")
    kafka.add_argument("--devices", type=int, default=5)
    etl = p.add_argument_group("etl")
    etl.add_argument("--rows", type=int, default=5, help="orders per delivered file (default 5)")
    etl.add_argument("--landing-dir", type=Path, default=Path(os.environ.get("LANDING_DIR", DEFAULT_LANDING_DIR)))
    etl.add_argument("--landing-uri-prefix", default=None,
                     help="URI of the landing dir as Airflow sees it (default: its file:// URI here)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run_id = args.run_id or new_run_id()
    try:
        check_run_id(run_id)
        kafka_config = parse_kafka_config(args.kafka_config)
    except ValueError as exc:
        parser.error(str(exc))
    if args.count < 0 or args.rows < 0 or args.devices < 1 or args.rate < 0:
        parser.error("--count and --rows must be >= 0, --devices >= 1, --rate >= 0")

    common: dict[str, Any] = {"run_id": run_id, "seed": args.seed, "rate": args.rate, "poison": args.poison,
                              "record": args.record}
    target = SqsTarget(parse_endpoint(args.sqs_endpoint), args.queue_url_prefix, args.region)
    started = time.monotonic()
    try:
        if args.pipeline == "etl":
            records = publish_etl(args.count, rows=args.rows, landing_dir=args.landing_dir,
                                  landing_uri_prefix=args.landing_uri_prefix, target=target, **common)
        elif args.pipeline == "inference":
            records = publish_inference(args.count, target=target, **common)
        else:
            records = publish_iot(args.count, devices=args.devices, bootstrap=args.bootstrap, topic=args.topic,
                                  kafka_config=kafka_config, **common)
    except PublishError as exc:
        print(f"error: {exc} ({len(exc.records)} published before the failure)", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    print(f"run id {run_id}", file=sys.stderr)
    print(f"published {len(records)} {args.pipeline} messages in {elapsed:.2f}s "
          f"({len(records) / elapsed if elapsed > 0 else 0.0:.1f} msg/s)")
    if args.pipeline == "iot" and not args.poison:
        raised, cleared = expected_alerts(records)
        print(f"expected alerts: {raised} raised, {cleared} cleared")
    return 0


if __name__ == "__main__":
    sys.exit(main())
