"""The SQS streaming trigger keeps an oversize body in the events database before any event names its message.

The aiobotocore client is a scripted stand-in (this is about the trigger's own logic); the events database is a real
SQLite file reached through an Airflow connection (``AIRFLOW_CONN_EVENTS_DB``), as the triggerer reaches it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, func, select

from event_streams import payload
from event_streams.triggers import StreamingSqsTrigger, sqs_body_bytes

QUEUE = "http://sqs.local/000000000000/inference-requests"
BIG = "é€😀" * (300 * 1024 // 9)  # 300 KiB of 2-, 3- and 4-byte characters
ATTRIBUTES = {
    "trace": {"DataType": "String", "StringValue": "t-1"},
    "priority": {"DataType": "Number", "StringValue": "7"},
    "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},  # not carried
}


class Sqs:
    """``receive_message`` answers each call with the next list of ``(id, body)``, then nothing; records the
    calls' arguments."""

    def __init__(self, *answers: list[tuple[str, str]]) -> None:
        self.answers = list(answers)
        self.calls: list[dict[str, Any]] = []

    async def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        got = self.answers.pop(0) if self.answers else []
        return {"Messages": [{"MessageId": i, "ReceiptHandle": f"rh-{i}-{len(self.calls)}", "Body": b,
                              "MessageAttributes": ATTRIBUTES} for i, b in got]}

    async def change_message_visibility_batch(self, **kwargs: Any) -> dict[str, Any]:
        return {"Successful": [{"Id": e["Id"]} for e in kwargs["Entries"]]}


class Hook:
    """Stands in for ``SqsHook``: its async connection is the scripted client."""

    client: Sqs

    def __init__(self, **kwargs: Any) -> None:
        pass

    async def get_async_conn(self) -> Any:
        client = self.client

        class Conn:
            async def __aenter__(self) -> Sqs:
                return client

            async def __aexit__(self, *exc: Any) -> None:
                return None

        return Conn()


def _kb() -> Any:
    """``event_streams.kept_bodies``, imported by each test (so that each one fails on its own without it)."""
    import importlib

    return importlib.import_module("event_streams.kept_bodies")


@pytest.fixture
def events_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Engine:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    monkeypatch.setenv("AIRFLOW_CONN_EVENTS_DB", url)
    return create_engine(url)


def _kept(engine: Engine) -> list[tuple[str, str, str, int]]:
    t = _kb().kept_bodies
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(t.c.message_id, t.c.source_queue, t.c.body, t.c.body_bytes))]


def _trigger(**kwargs: Any) -> StreamingSqsTrigger:
    return StreamingSqsTrigger(sqs_queue=QUEUE, kept_conn_id="events_db", linger_seconds=0, **kwargs)


def test_an_oversize_body_is_kept_with_its_exact_bytes_before_its_event_is_yielded(
        events_db: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    import airflow.providers.amazon.aws.hooks.sqs as sqs_hooks

    Hook.client = Sqs([("big", BIG), ("small", '{"a": 1}')])
    monkeypatch.setattr(sqs_hooks, "SqsHook", Hook)
    trigger = _trigger()

    async def first_event() -> Any:
        events = trigger.run()
        try:
            event = await events.__anext__()
            return event, _kept(events_db)  # what the database held when the event was yielded
        finally:
            await events.aclose()

    event, kept_then = asyncio.run(first_event())
    assert kept_then == [("big", QUEUE, BIG, len(BIG.encode("utf-8")))]
    assert kept_then[0][2].encode("utf-8") == BIG.encode("utf-8") and len(BIG.encode("utf-8")) > 256 * 1024
    big, small = event.payload[payload.MESSAGE_BATCH]
    assert "Body" not in big  # the marker, not the body
    assert (big[payload.BODY_OMITTED_BYTES], big[payload.BODY_KEPT_IN]) == (len(BIG.encode("utf-8")), "kept_bodies")
    assert small["Body"] == '{"a": 1}' and payload.BODY_KEPT_IN not in small
    assert Hook.client.calls[0]["MessageAttributeNames"] == ["All"]


def test_a_redelivered_oversize_body_is_kept_once(events_db: Engine) -> None:
    trigger = _trigger()
    client = Sqs([("big", BIG)], [("big", BIG)])
    first = asyncio.run(trigger.gather(client))
    again = asyncio.run(trigger.gather(client))
    assert [m["MessageId"] for m in first + again] == ["big", "big"]
    assert all(m[payload.BODY_KEPT_IN] == "kept_bodies" for m in first + again)
    with events_db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(_kb().kept_bodies)).scalar_one() == 1


def test_a_database_failure_holds_the_oversize_message_back_until_it_can_be_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "no-such-dir").write_text("")  # down: the database's folder is a file, so it cannot be opened or made
    monkeypatch.setenv("AIRFLOW_CONN_EVENTS_DB", f"sqlite:///{tmp_path / 'no-such-dir' / 'events.db'}")
    trigger = _trigger()
    client = Sqs([("big", BIG), ("small", "{}")], [], [("big", BIG)])
    batch = asyncio.run(trigger.gather(client))
    assert [m["MessageId"] for m in batch] == ["small"]  # not handed on: it comes back after the visibility timeout
    assert not trigger._carry  # nor carried into a later event
    trigger.handed(batch)
    assert [h for _, hs in trigger._handed for _, h in hs] == ["rh-small-1"]  # never extended to the run's budget

    (tmp_path / "no-such-dir").unlink()  # the database is back; SQS delivers the message again
    engine = create_engine(f"sqlite:///{tmp_path / 'no-such-dir' / 'events.db'}")
    (again,) = asyncio.run(trigger.gather(client))
    assert (again["MessageId"], again[payload.BODY_KEPT_IN]) == ("big", "kept_bodies")
    assert [(m, b) for m, _, b, _ in _kept(engine)] == [("big", BIG)]


def test_without_a_connection_the_body_is_left_out_as_before() -> None:
    trigger = StreamingSqsTrigger(sqs_queue=QUEUE, linger_seconds=0)
    (message,) = asyncio.run(trigger.gather(Sqs([("big", BIG)])))
    assert message[payload.BODY_OMITTED_BYTES] == len(BIG.encode("utf-8")) and payload.BODY_KEPT_IN not in message


def test_string_and_number_attributes_ride_in_the_event_and_count_toward_its_bytes() -> None:
    trigger = StreamingSqsTrigger(sqs_queue=QUEUE, linger_seconds=0, max_event_bytes=60)
    client = Sqs([("m1", "x" * 20), ("m2", "y" * 20)])
    first = asyncio.run(trigger.gather(client))
    assert [m["MessageId"] for m in first] == ["m1"]  # bodies alone (40) fit 60 bytes; with attributes they do not
    assert first[0][payload.MESSAGE_ATTRIBUTES] == {k: v for k, v in ATTRIBUTES.items() if k != "blob"}
    assert sqs_body_bytes(first[0]) == 20 + len("trace" "String" "t-1") + len("priority" "Number" "7")
    assert [m["MessageId"] for m in asyncio.run(trigger.gather(client))] == ["m2"]  # carried into the next event


def test_serialize_round_trips_the_kept_connection() -> None:
    trigger = _trigger()
    path, kwargs = trigger.serialize()
    assert path == "event_streams.triggers.StreamingSqsTrigger" and kwargs["kept_conn_id"] == "events_db"
    assert StreamingSqsTrigger(**kwargs).serialize() == trigger.serialize()
    from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger

    stored = MessageQueueTrigger(scheme="sqs+stream", sqs_queue=QUEUE, kept_conn_id="events_db").serialize()
    assert stored[1]["kept_conn_id"] == "events_db"


def test_kept_bodies_are_found_by_message_id_in_bounded_queries(engine: Engine,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    kept_bodies = _kb()
    assert kept_bodies.bodies(engine, ["m0"]) == {}  # no table yet: nothing kept, nothing raised
    monkeypatch.setattr(kept_bodies, "LOOKUP_CHUNK", 3)
    assert kept_bodies.keep(engine, QUEUE, [(f"m{i}", f"body {i} é") for i in range(7)]) == 7
    assert kept_bodies.keep(engine, QUEUE, [("m0", "other")]) == 0  # a redelivery changes nothing
    assert kept_bodies.bodies(engine, [f"m{i}" for i in range(8)]) == {f"m{i}": f"body {i} é" for i in range(7)}


def test_handed_over_messages_stay_invisible_until_their_run_takes_them(events_db: Engine) -> None:
    """A run queued behind ``max_active_runs`` outlives the budget: the trigger extends its messages again on each
    beat until the run marks them taken; then only the task's heartbeat extends them. A deleted message drops out,
    and so does one handed out longer ago than ``handover_max_seconds``."""
    from event_streams import taken_messages

    Hook.client = Sqs()
    trigger = StreamingSqsTrigger(sqs_queue=QUEUE, kept_conn_id="events_db", handover_after_seconds=0,
                                  handover_visibility_timeout=300, handover_heartbeat_seconds=0.05,
                                  handover_max_seconds=60)
    extended: list[list[str]] = []

    async def change(**kwargs: Any) -> dict[str, Any]:
        extended.append([e["ReceiptHandle"] for e in kwargs["Entries"]])
        return {"Successful": [{"Id": e["Id"]} for e in kwargs["Entries"] if e["ReceiptHandle"] != "rh-gone"]}

    Hook.client.change_message_visibility_batch = change  # type: ignore[method-assign]
    trigger.handed([{"MessageId": m, "ReceiptHandle": f"rh-{m}"} for m in ("queued", "taken", "gone")])
    assert asyncio.run(trigger.hand_over(Hook.client)) == 2 and sorted(trigger._untaken) == ["queued", "taken"]
    assert asyncio.run(trigger.keep_untaken(Hook.client)) == 0  # the beat is not due yet
    taken_messages.mark(events_db, QUEUE, ["taken"])
    time.sleep(0.06)
    assert asyncio.run(trigger.keep_untaken(Hook.client)) == 1
    assert extended[-1] == ["rh-queued"] and list(trigger._untaken) == ["queued"]
    assert taken_messages.taken(events_db, QUEUE, ["taken"]) == set()  # its row is forgotten once seen
    time.sleep(0.06)
    assert asyncio.run(trigger.keep_untaken(Hook.client)) == 1 and extended[-1] == ["rh-queued"]
    trigger.handover_max_seconds = 0  # handed out too long ago: no longer kept
    time.sleep(0.06)
    assert asyncio.run(trigger.keep_untaken(Hook.client)) == 0 and trigger._untaken == {}
