"""No content is lost: an SQS body too large for an asset event, kept by the trigger, reaches the dead letters whole.

The ``dead_letters`` row of such a message gets the kept body (``db.record_dead_letters``, for every pipeline), its
DLQ copy carries the original body when SQS can take it, and every DLQ copy keeps the original String/Number
attributes next to ours (``reason``, ``source_message_id``, ``source_queue``), never more than 10.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from event_streams import payload
from event_streams import sqs as event_sqs
from event_streams.pipelines import db, sqs_source
from event_streams.pipelines.messages import Envelope, dead_letter_row, envelopes_from_asset_events

QUEUE = "http://sqs.local/000000000000/inference-requests"
DLQ = f"{QUEUE}-dlq"
HUGE = "é€😀" * (300 * 1024 // 9)  # 300 KiB: over the 256 KiB an event or a DLQ copy may carry
LARGE = "é€😀" * (100 * 1024 // 9)  # 100 KiB: over a MAX_MESSAGE_BYTES of 64 KiB, fits a DLQ copy


def _keep(engine: Engine, messages: list[tuple[str, str]]) -> None:
    """What the streaming trigger did on receiving them (imported here, so that each test fails on its own
    without it)."""
    from event_streams import kept_bodies

    kept_bodies.keep(engine, QUEUE, messages)


def _attribute(name: str, data_type: str, value: str) -> Any:
    from event_streams.pipelines.messages import SqsAttribute

    return SqsAttribute(name=name, data_type=data_type, value=value)


def _omitted(message_id: str, body: str, attributes: dict[str, dict[str, str]] | None = None) -> Envelope:
    """The envelope of an event message whose body the streaming trigger kept (as the trigger writes it)."""
    message: dict[str, Any] = {"MessageId": message_id, "ReceiptHandle": f"rh-{message_id}",
                               payload.BODY_OMITTED_BYTES: len(body.encode("utf-8")),
                               payload.BODY_KEPT_IN: payload.KEPT_BODIES_TABLE}
    if attributes:
        message[payload.MESSAGE_ATTRIBUTES] = attributes
    [envelope] = envelopes_from_asset_events([{"payload": {"status": "success", payload.MESSAGE_BATCH: [message]}}])
    return envelope


def _dead_letter_bodies(engine: Engine) -> dict[str, str | None]:
    with engine.connect() as conn:
        return dict(conn.execute(select(db.dead_letters.c.message_id, db.dead_letters.c.body)).all())


def test_the_dead_letter_row_of_a_body_omitted_envelope_gets_the_kept_body(engine: Engine) -> None:
    _keep(engine, [("big", HUGE)])
    big, lost = _omitted("big", HUGE), _omitted("lost", "x" * 300_000)  # "lost": kept by no trigger
    assert big.body is None and big.body_kept_in == "kept_bodies"
    with engine.begin() as conn:
        db.record_dead_letters(conn, "p", [dead_letter_row(big, "too big"), dead_letter_row(lost, "too big")])
    bodies = _dead_letter_bodies(engine)
    assert bodies["big"].encode("utf-8") == HUGE.encode("utf-8")  # the exact bytes
    assert bodies["lost"] is None


class Predictor:
    version = "stub"

    def predict_proba(self, rows: list[Any]) -> list[float]:
        return [0.5] * len(rows)


def _inference(envelopes: list[Envelope], engine: Engine, tmp_path: Path) -> None:
    from include.inference_execution.pipeline import answer_requests

    answer_requests(envelopes, engine, Predictor(), lambda replies: None)


def _etl(envelopes: list[Envelope], engine: Engine, tmp_path: Path) -> None:
    from include.data_delivery_etl import pipeline

    pipeline.process_batch(envelopes, engine, Path, tmp_path / "quarantine")


@pytest.mark.parametrize("run", [_inference, _etl])
def test_the_pipelines_dead_letter_an_oversize_message_with_its_kept_body(run: Any, engine: Engine,
                                                                          tmp_path: Path) -> None:
    _keep(engine, [("big", HUGE)])
    run([_omitted("big", HUGE)], engine, tmp_path)
    assert _dead_letter_bodies(engine) == {"big": HUGE}


class FakeSqs:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.deleted: list[str] = []

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.sent += Entries
        return {"Successful": [{"Id": e["Id"]} for e in Entries]}

    def delete_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.deleted += [e["ReceiptHandle"] for e in Entries]
        return {"Successful": [{"Id": e["Id"]} for e in Entries]}


ORIGINALS = {"trace": {"DataType": "String", "StringValue": "t-1"},
             "priority": {"DataType": "Number", "StringValue": "7"},
             "reason": {"DataType": "String", "StringValue": "the producer's own"}}


def test_settle_sends_the_kept_body_when_it_fits_else_a_stand_in(engine: Engine,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeSqs()
    monkeypatch.setattr(event_sqs, "client", lambda *a, **k: fake)
    monkeypatch.setattr(db, "engine", lambda *a: engine)
    _keep(engine, [("large", LARGE), ("huge", HUGE)])
    envelopes = [_omitted("large", LARGE, ORIGINALS), _omitted("huge", HUGE, ORIGINALS)]
    sqs_source.settle_sqs(QUEUE, DLQ, envelopes, [{"message_id": e.message_id, "reason": "too big"}
                                                  for e in envelopes])
    copies = {e["MessageAttributes"]["source_message_id"]["StringValue"]: e for e in fake.sent}
    assert copies["large"]["MessageBody"] == LARGE  # the original content, not a stand-in
    assert copies["large"]["MessageAttributes"] == {
        "reason": {"DataType": "String", "StringValue": "too big"},  # ours win on a clash
        "source_message_id": {"DataType": "String", "StringValue": "large"},
        "source_queue": {"DataType": "String", "StringValue": QUEUE},
        "trace": {"DataType": "String", "StringValue": "t-1"},
        "priority": {"DataType": "Number", "StringValue": "7"},  # its type kept
    }
    assert json.loads(copies["huge"]["MessageBody"]) == {"dead_letter": "huge", "body_bytes": len(HUGE.encode()),
                                                         "body_kept_in": "dead_letters"}
    assert copies["huge"]["MessageAttributes"]["body_kept_in"]["StringValue"] == "dead_letters"
    assert copies["huge"]["MessageAttributes"]["priority"] == {"DataType": "Number", "StringValue": "7"}
    assert sorted(fake.deleted) == ["rh-huge", "rh-large"]


def test_a_dlq_copy_keeps_the_original_attributes_ours_win_and_never_more_than_ten() -> None:
    originals = tuple(_attribute(f"a{i}", "Number.int" if i % 2 else "String", str(i))
                      for i in range(12))
    clash = (_attribute("source_queue", "String", "elsewhere"),)
    envelope = Envelope(source="sqs", message_id="m-1", body='{"x": 1}', receipt_handle="rh",
                        sqs_attributes=clash + originals)
    mid, body, attributes = sqs_source._dlq_copy(QUEUE, envelope, "does not match")
    assert (mid, body) == ("m-1", '{"x": 1}')
    assert len(attributes) == 10
    assert list(attributes)[:3] == ["reason", "source_message_id", "source_queue"]
    assert attributes["source_queue"] == QUEUE and attributes["reason"] == "does not match"
    assert {k: v for k, v in attributes.items() if k.startswith("a")} == {
        f"a{i}": ("Number.int", str(i)) if i % 2 else ("String", str(i)) for i in range(7)}  # the first that fit
    stand_in = sqs_source._stand_in(QUEUE, envelope, "does not match")[2]
    assert len(stand_in) == 10 and stand_in["body_kept_in"] == "dead_letters" and "a5" in stand_in
    assert "a6" not in stand_in  # one more of ours, one fewer of theirs


def test_original_attributes_that_would_push_the_copy_over_sqs_limit_are_left_out() -> None:
    body = "b" * (event_sqs.MAX_BATCH_BYTES - 400)
    envelope = Envelope(source="sqs", message_id="m-1", body=body, sqs_attributes=(
        _attribute("big", "String", "v" * 1000),
        _attribute("small", "String", "v")))
    _, sent, attributes = sqs_source._dlq_copy(QUEUE, envelope, "r")
    assert sent == body and "big" not in attributes and attributes["small"] == ("String", "v")
    assert event_sqs.message_bytes(sent, attributes) <= event_sqs.MAX_BATCH_BYTES


def test_attributes_survive_the_trip_through_xcom() -> None:
    envelope = _omitted("big", HUGE, {**ORIGINALS, "blob": {"DataType": "Binary", "BinaryValue": "AAE="}})
    assert [a.name for a in envelope.sqs_attributes or ()] == ["trace", "priority", "reason"]  # Binary not carried
    assert Envelope.model_validate(json.loads(json.dumps(envelope.model_dump(exclude_none=True)))) == envelope
