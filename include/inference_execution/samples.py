"""Sample requests and the sink check of inference execution, for the lab (``devstack``), which finds ``SAMPLES``.

``messages`` yields requests alternating machines about to fail and healthy ones; ``check`` counts the stored
predictions and takes the replies off the reply queue (through the lab's reader). No Airflow, no broker: the lab
sends the bodies.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from event_streams.pipelines.samples_api import (
    DemoLoad,
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
from include.inference_execution import settings, tables
from include.inference_execution.schemas import InferenceRequest, MachineFeatures

# Feature ranges of a machine about to fail ("hot") and a healthy one ("cool"), all inside the schema bounds.
_HOT = {"temperature_c": (85.0, 120.0), "vibration_mm_s": (10.0, 25.0), "pressure_kpa": (70.0, 92.0),
        "rpm": (4000.0, 9000.0)}
_COOL = {"temperature_c": (35.0, 70.0), "vibration_mm_s": (0.5, 6.0), "pressure_kpa": (98.0, 110.0),
         "rpm": (900.0, 3500.0)}


def messages(
    run_id: str, count: int, *, seed: int | None = None, now: Callable[[], datetime] = utcnow,
) -> Iterator[Sample]:
    """Requests ``req-<run_id>-<i>``, alternating hot and cool machines (features drawn with the seed);
    ``expect``: ``{"request_id": ...}``."""
    rng = random.Random(seed)
    for i in range(count):
        ranges = _HOT if i % 2 == 0 else _COOL
        features = MachineFeatures(**{f: round(rng.uniform(lo, hi), 2) for f, (lo, hi) in ranges.items()})
        request = InferenceRequest(request_id=f"req-{run_id}-{i}", submitted_at=now(), features=features)
        yield Sample(request.request_id, to_json(request), {"request_id": request.request_id})


def poison(run_id: str, *, now: Callable[[], datetime] = utcnow, **_: Any) -> list[Sample]:
    """The common poison set on SQS."""
    features = {"temperature_c": 70.0, "vibration_mm_s": 3.0, "pressure_kpa": 101.0, "rpm": 3000.0}
    good = {"request_id": poison_id(run_id, "x"), "submitted_at": iso(now()), "features": features}
    return poison_set(
        run_id, "sqs", model="InferenceRequest",
        wrong_type=({**good, "request_id": poison_id(run_id, "wrong_type"), "features": {**features, "rpm": "fast"}},
                    "features.rpm: Input should be a valid number"),
        out_of_range=({**good, "request_id": poison_id(run_id, "out_of_range"),
                       "features": {**features, "rpm": 50_000.0}},
                      "features.rpm: Input should be less than or equal to 20000"),
    )


def check(events: Engine, records: Sequence[Record], reader: SinkReader) -> SinkCheck:
    """A prediction stored and a reply on ``INFERENCE_REPLY_QUEUE`` (correlation id: the request id) for every good
    request; repeated replies counted."""
    out = SinkCheck()
    wanted = {r["expect"]["request_id"] for r in good_records(records)}
    found = present(events, tables.predictions.c.request_id, sorted(wanted))
    out.rows = len(found)
    replies = reader.take(settings.INFERENCE_REPLY_QUEUE, "correlation_id", wanted)
    out.outputs["replies"] = len(wanted & set(replies))
    out.outputs["reply_duplicates"] = sum(replies[c] - 1 for c in wanted & set(replies))
    if len(found) < len(wanted):
        out.missing.append(f"{len(wanted) - len(found)} of {len(wanted)} predictions not stored")
    if wanted - set(replies):
        out.missing.append(f"{len(wanted - set(replies))} of {len(wanted)} replies not received")
    return out


SAMPLES = PipelineSamples(
    name="inference",
    dag_id="inference_execution",
    broker="sqs",
    source=settings.INFERENCE_REQUEST_QUEUE,
    dlq=settings.INFERENCE_REQUEST_DLQ,
    messages=messages,
    poison=poison,
    check=check,
    demo=(DemoLoad(50, 10), DemoLoad(100, 0, label="burst", run_suffix="0")),  # a burst the scheduler coalesces
)
