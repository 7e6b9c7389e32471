"""Sample readings and the sink check of IoT alerting, for the lab (``devstack``), which finds ``SAMPLES``.

``messages`` yields temperature readings whose expected transition is computed with the pipeline's own rules;
``check`` counts the stored readings and compares the alerts on the alert topic (read through the lab's reader)
with those transitions, reading by reading. No Airflow, no broker: the lab sends the bodies.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Engine

from event_streams.pipelines.samples_api import (
    DemoLoad,
    Option,
    PipelineSamples,
    Record,
    Sample,
    SinkCheck,
    SinkReader,
    good_records,
    iso,
    poison_id,
    poison_set,
    present,
    to_json,
    utcnow,
)
from include.iot_alerting import settings, tables
from include.iot_alerting.rules import RULES, DeviceState, evaluate
from include.iot_alerting.schemas import SensorReading

# Temperature bands relative to the rule (raise at >= 80, clear at <= 75): where a value lands decides the
# transition, and the seed only moves it inside its band.
_TEMP_BANDS: dict[str, tuple[float, float]] = {"low": (62.0, 74.5), "mid": (75.5, 79.5), "high": (80.5, 92.0)}
_TEMP_CYCLE = ("low", "high", "mid", "low")  # e.g. 70, 82, 78, 74, 70, ...: raise, hold, clear, ...


def values(devices: int, per_device: int, seed: int | None = None) -> list[list[float]]:
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


def messages(
    run_id: str, count: int, *, seed: int | None = None, devices: int = 5, start: datetime | None = None,
) -> Iterator[Sample]:
    """``count`` temperature readings round-robin over ``devices`` devices ``dev-<run_id>-<k>``, 1 s apart per
    device from ``start``; ids ``dev-<run_id>-<k>#<j>`` (its j-th reading), key: the device id.

    ``expect``: ``{"transition": "raised" | "cleared" | None}``, computed with the project's own rules,
    sequentially per device in timestamp order (what ``process_readings`` does).
    """
    if devices < 1:
        raise ValueError("devices must be >= 1")
    start = (start or utcnow()).astimezone(timezone.utc).replace(microsecond=0)
    temps = values(devices, -(-count // devices), seed)
    rule = RULES["temperature"]
    states: dict[str, DeviceState | None] = {}
    for i in range(count):
        k, j = i % devices, i // devices
        device_id = f"dev-{run_id}-{k}"
        reading = SensorReading(device_id=device_id, sensor="temperature", value=temps[k][j], unit=rule.unit,
                                ts=start + timedelta(seconds=j))
        states[device_id], transition = evaluate(rule, states.get(device_id), reading.value, reading.ts)
        yield Sample(f"{device_id}#{j}", to_json(reading), {"transition": transition}, key=device_id)


def poison(run_id: str, *, now: Callable[[], datetime] = utcnow, **_: Any) -> list[Sample]:
    """The common poison set on Kafka (with the oversize and non-UTF-8 bodies SQS would refuse itself)."""
    good = {"device_id": poison_id(run_id, "x"), "sensor": "temperature", "value": 70.0, "unit": "C", "ts": iso(now())}
    return poison_set(
        run_id, "kafka", model="SensorReading",
        wrong_type=({**good, "device_id": poison_id(run_id, "wrong_type"), "value": "hot"},
                    "value: Input should be a valid number"),
        out_of_range=({**good, "device_id": poison_id(run_id, "out_of_range"), "value": 500.0},
                      "temperature value 500.0 is outside [-60, 200]"),
    )


def expected_alerts(records: Iterable[Record]) -> tuple[int, int]:
    """(raised, cleared) the pipeline must produce for these records."""
    kinds = [r["expect"].get("transition") for r in records]
    return kinds.count("raised"), kinds.count("cleared")


def describe(records: Sequence[Record]) -> str:
    raised, cleared = expected_alerts(records)
    return f"expected alerts: {raised} raised, {cleared} cleared"


def compare_alerts(good: Sequence[Record], alerts: list[dict[str, Any]]) -> tuple[dict[str, int], list[str]]:
    """The alerts on the topic against the readings published: counts, and what is wrong. Per-device order is checked
    through the reading each transition came from: applied in order, a device's readings raise and clear exactly at
    the readings the publisher computed (``expect.transition``); a reading applied early or late moves a transition
    to another reading. Repeats of a dedup key (a retried run publishing again) are counted, not errors."""
    expected = Counter(r["expect"]["transition"] for r in good if r["expect"].get("transition"))
    distinct = {a["dedup_key"]: a["kind"] for a in alerts}
    got = Counter(distinct.values())
    want = {(r["message_id"], r["expect"]["transition"]) for r in good if r["expect"].get("transition")}
    at = {(a["source_message_id"], a["kind"]) for a in alerts}
    outputs = {"alerts_raised": got["raised"], "alerts_cleared": got["cleared"],
               "alert_duplicates": len(alerts) - len(distinct), "alerts_out_of_order": len(want ^ at)}
    if got != expected:
        return outputs, [f"alerts {dict(got)} != expected {dict(expected)}"]
    if want != at:
        return outputs, [f"{len(want ^ at)} alerts at other readings than per-device order gives"]
    return outputs, []


def check(events: Engine, records: Sequence[Record], reader: SinkReader) -> SinkCheck:
    """Every good reading stored, and the alerts on ``IOT_ALERTS_TOPIC`` for these devices as ``compare_alerts``
    wants them."""
    out = SinkCheck()
    good = good_records(records)
    ids = [r["message_id"] for r in good]
    found = present(events, tables.iot_readings.c.message_id, ids)
    out.rows = len(found)
    if len(found) < len(ids):
        out.missing.append(f"{len(ids) - len(found)} of {len(ids)} readings not stored")
    devices = ({json.loads(r["body"])["device_id"] for r in good if "body" in r}
               or {r["id"].rsplit("#", 1)[0] for r in good})
    alerts = [json.loads(v) for v in reader.topic(settings.IOT_ALERTS_TOPIC)]
    outputs, problems = compare_alerts(good, [a for a in alerts if a.get("device_id") in devices])
    out.outputs.update(outputs)
    out.missing += problems
    return out


SAMPLES = PipelineSamples(
    name="iot",
    dag_id="iot_alerting",
    broker="kafka",
    source=settings.IOT_READINGS_TOPIC,
    dlq=settings.IOT_DLQ_TOPIC,
    messages=messages,
    poison=poison,
    check=check,
    options=(Option("devices", int, 5, "devices the readings go round-robin over (default 5)", minimum=1),),
    demo=(DemoLoad(30, 5, {"devices": 3}),),
    describe=describe,
)
