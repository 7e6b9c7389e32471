"""What a pipeline exposes to the lab in ``include/<dag_id>/samples.py``: its sample messages and its sink check.

Each pipeline's ``samples.py`` defines ``SAMPLES``, a ``PipelineSamples``; the lab (``devstack``) finds them by
discovery and sends, records and summarizes without naming any pipeline. Data only: nothing here sends a message,
imports Airflow or needs a broker; a sink check reads a broker only through the ``SinkReader`` the lab passes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, Protocol

from sqlalchemy import Engine, select

from event_streams.pipelines import db
from event_streams.pipelines.messages import MAX_BODY_BYTES

Broker = Literal["sqs", "kafka"]
Record = Mapping[str, Any]  # one line of the publisher's records file: pipeline, id, message_id, published_at, expect
PRODUCER = "devstack-publisher"
DEAD_LETTER = "dead_letter_reason_contains"
QUARANTINE = "quarantine_reason_contains"


@dataclass(frozen=True)
class Sample:
    """One message to publish and what the pipeline must make of it (``expect``, written to the records file)."""

    id: str
    body: bytes
    expect: dict[str, Any]
    key: str | None = None  # Kafka record key


@dataclass
class SinkCheck:
    """What a pipeline's sinks hold for the published records: rows written, named counts, and what is missing."""

    rows: int = 0
    outputs: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


class SinkReader(Protocol):
    """The lab's read access to the brokers, for outputs that leave through a broker."""

    def topic(self, topic: str) -> list[bytes]:
        """The value of every record now on a Kafka topic."""
        ...

    def take(self, queue: str, field: str, wanted: set[str]) -> Mapping[str, int]:
        """Receive the JSON messages of an SQS queue and take (delete) those whose ``field`` is in ``wanted``;
        returns, per value of ``field``, how many copies were taken so far (taken messages are gone from the
        queue, so the count is kept across calls)."""
        ...


@dataclass(frozen=True)
class Option:
    """A pipeline-specific keyword of ``messages`` that the publisher's CLI offers as ``--<name with dashes>``."""

    name: str
    type: Callable[[str], Any]
    default: Any
    help: str | None = None
    minimum: int | None = None  # the CLI refuses a smaller value
    env: str | None = None  # the environment variable the default comes from (the runner sets it for its stack)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class DemoLoad:
    """Traffic ``make demo`` publishes to the pipeline (``count`` is multiplied by ``--scale``)."""

    count: int
    rate: float
    options: Mapping[str, Any] = field(default_factory=dict)
    label: str | None = None  # printed instead of the pipeline's name (a second load of the same pipeline)
    run_suffix: str = ""  # appended to the run id, so a second load's ids differ


@dataclass(frozen=True)
class PipelineSamples:
    """A pipeline as the lab sees it.

    ``messages(run_id, count, *, seed=None, **options)`` yields the good samples (ids carry ``run_id``);
    ``poison(run_id, **options)`` the poison set, each with the reason it must produce; ``check(events, records,
    reader)`` what the pipeline's sinks hold for its published records. ``describe(records)``, if given, is a line
    saying what the good records must produce (the publisher prints it).
    """

    name: str  # short name on the publisher's CLI and in the records
    dag_id: str
    broker: Broker
    source: str  # the queue or topic it consumes
    dlq: str  # its dead-letter queue or topic
    messages: Callable[..., Iterable[Sample]]
    poison: Callable[..., list[Sample]]
    check: Callable[[Engine, Sequence[Record], SinkReader], SinkCheck]
    options: tuple[Option, ...] = ()
    demo: tuple[DemoLoad, ...] = ()
    describe: Callable[[Sequence[Record]], str] | None = None


# --------------------------------------------------------------------------------------------------- helpers


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(ts: datetime) -> str:
    """UTC ISO-8601 with a ``Z``, as producers usually write it."""
    return ts.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def to_json(model: Any) -> bytes:
    return model.model_dump_json().encode("utf-8")


def good_records(records: Iterable[Record]) -> list[Record]:
    """The records expected to be processed (neither dead-lettered nor quarantined)."""
    return [r for r in records if not ({DEAD_LETTER, QUARANTINE} & set(r["expect"]))]


def present(events: Engine, column: Any, values: Sequence[str]) -> set[str]:
    """Which of ``values`` are in ``column`` (read in chunks)."""
    found: set[str] = set()
    with events.connect() as conn:
        for chunk in db.chunked(values):
            found |= set(conn.execute(select(column).where(column.in_(chunk))).scalars())
    return found


# --------------------------------------------------------------------------------------------------- poison


def poison_id(run_id: str, kind: str) -> str:
    return f"poison-{run_id}-{kind}"


def dead(substring: str) -> dict[str, str]:
    return {DEAD_LETTER: substring}


def poison_set(
    run_id: str, broker: Broker, *, model: str, wrong_type: tuple[dict[str, Any], str],
    out_of_range: tuple[dict[str, Any], str], extra: Iterable[Sample] = (),
) -> list[Sample]:
    """One message per poison kind that the broker lets through, each with the reason ``decode`` gives it.

    ``wrong_type`` / ``out_of_range``: a body of the pipeline's model with one field of the wrong type / out of its
    bounds, and the reason; ``extra``: the pipeline's own poison (appended). On Kafka every message is keyed
    ``poison-<run_id>``.
    """

    def pid(kind: str) -> str:
        return poison_id(run_id, kind)

    msgs = [
        Sample(pid("not_json"), f"this is not JSON ({pid('not_json')})".encode(), dead("body is not JSON")),
        Sample(pid("not_object"), json.dumps(["poison", run_id]).encode(), dead("expected an object")),
        Sample(pid("wrong_schema"), json.dumps({"poison": pid("wrong_schema"), "hello": "world"}).encode(),
               dead(f"does not match {model}")),
        # SQS refuses an empty MessageBody: a blank one is what a producer can send, and decode calls it empty.
        Sample(pid("empty"), b" " if broker == "sqs" else b"", dead("empty body")),
        Sample(pid("wrong_type"), json.dumps(wrong_type[0]).encode(), dead(wrong_type[1])),
        Sample(pid("out_of_range"), json.dumps(out_of_range[0]).encode(), dead(out_of_range[1])),
    ]
    if broker == "kafka":
        # SQS refuses > 256 KiB and non-UTF-8 bodies itself; Kafka's default max.message.bytes (~1 MB) lets 300 KB by.
        pad = "x" * (MAX_BODY_BYTES + 40_000)
        msgs.append(Sample(pid("oversize"), json.dumps({"poison": pid("oversize"), "pad": pad}).encode(),
                           dead(f"over the {MAX_BODY_BYTES}-byte limit")))
        msgs.append(Sample(pid("invalid_utf8"), b"\xff\xfe{\"poison\": \"" + pid("invalid_utf8").encode() + b"\"}",
                           dead("body is not valid UTF-8")))
    msgs.extend(extra)
    key = f"poison-{run_id}"
    return [Sample(m.id, m.body, m.expect, key=key if broker == "kafka" else None) for m in msgs]
