"""Property tests: whatever a message holds, the IoT and inference pipelines never raise for its content, and
every message is either processed or dead-lettered with a reason."""

from __future__ import annotations

import base64
import json
import math
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.pool import StaticPool

from event_streams.pipelines import db
from event_streams.pipelines.messages import Envelope, PoisonMessage, decode
from include.inference_execution import tables as inference_tables
from include.inference_execution.pipeline import answer_requests
from include.inference_execution.schemas import InferenceRequest
from include.iot_alerting import tables as iot_tables
from include.iot_alerting.pipeline import process_readings
from include.iot_alerting.schemas import SensorReading

NOW = datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HUGE_INT_BODY = '{"value": 1' + "0" * 5000 + "}"  # json.loads raises ValueError (int digit limit) for it


def fresh_engine() -> Engine:
    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    db.ensure_schema(engine)
    return engine


# --- building blocks -------------------------------------------------------------------------------------------------
offsets = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))
any_aware = st.datetimes(timezones=offsets)  # datetime.min .. datetime.max, any offset
near_now = st.builds(lambda s, tz: (NOW + timedelta(seconds=s)).astimezone(tz),
                     st.integers(min_value=-8 * 24 * 3600, max_value=3600), offsets)
timestamps = st.one_of(
    near_now.map(datetime.isoformat),
    any_aware.map(datetime.isoformat),
    st.sampled_from(["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "9999-12-31T23:59:59+00:00",
                     "2026-11-24T08:00:00", "2026-13-01T00:00:00Z", "yesterday", ""]),
    st.datetimes().map(datetime.isoformat),  # naive
    st.integers(), st.floats(),
)
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-100, max_value=600),
    st.sampled_from([0.0, 9.0, 12.0, 75.0, 80.0, 85.0, 90.0, 95.0, 1e308, -1e308, 2**64]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(), st.text(max_size=5), st.none(),
)
junk = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20), st.lists(st.integers(), max_size=2),
                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def json_dumps(obj: Any) -> str:
    return json.dumps(obj, allow_nan=True)  # NaN / Infinity as Python writes them


def mutated(valid: st.SearchStrategy[dict[str, Any]], wild: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[str]:
    """A valid JSON object (about half the time as it is), or with fields dropped, replaced by anything or added."""
    change = st.one_of(
        st.tuples(st.just("drop"), st.sampled_from(sorted(wild)), st.none()),
        st.sampled_from(sorted(wild)).flatmap(lambda k: st.tuples(st.just("set"), st.just(k), wild[k])),
        st.tuples(st.just("set"), st.sampled_from(["extra", "Value"]), junk),
    )

    def apply(obj: dict[str, Any], changes: list[tuple[str, str, Any]]) -> str:
        obj = dict(obj)
        for op, key, value in changes:
            if op == "drop":
                obj.pop(key, None)
            else:
                obj[key] = value
        return json_dumps(obj)

    return st.builds(apply, valid, st.one_of(st.just([]), st.lists(change, min_size=1, max_size=3)))


def bodies(valid_object: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Envelope fields: mostly JSON objects (two in three), also any text, any bytes, oversize markers."""
    others = [
        st.text().map(lambda b: {"body": b}),
        st.binary().map(lambda b: {"body_b64": base64.b64encode(b).decode()}),
        st.recursive(junk, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
                     max_leaves=8).map(lambda o: {"body": json_dumps(o)}),
        st.just({"body": HUGE_INT_BODY}),
        st.just({"body_omitted_bytes": 300_000}),
        st.just({}),
    ]
    return st.integers(min_value=0, max_value=2 * len(others) - 1).flatmap(
        lambda i: others[i] if i < len(others) else valid_object.map(lambda b: {"body": b}))


def envelopes(fields_list: list[dict[str, Any]], source: str) -> list[Envelope]:
    return [Envelope(source=source, message_id=f"m-{i}", **f) for i, f in enumerate(fields_list)]


SENSORS = {"temperature": ("C", 60.0, 100.0), "humidity": ("%", 70.0, 100.0), "pressure": ("kPa", 80.0, 110.0),
           "vibration": ("mm/s", 0.0, 20.0)}
valid_reading = st.sampled_from(sorted(SENSORS)).flatmap(lambda sensor: st.fixed_dictionaries({
    "device_id": st.sampled_from(["pump-1", "pump-2", "fan-1"]),
    "sensor": st.just(sensor),
    "value": st.floats(min_value=SENSORS[sensor][1], max_value=SENSORS[sensor][2]),
    "unit": st.just(SENSORS[sensor][0]),
    "ts": near_now.map(datetime.isoformat),
}))
reading_body = mutated(valid_reading, {
    "device_id": st.one_of(junk, st.text(max_size=3)),
    "sensor": st.one_of(junk, st.sampled_from(sorted(SENSORS))),
    "value": numbers,
    "unit": st.one_of(junk, st.sampled_from(["C", "%", "kPa", "mm/s"])),
    "ts": timestamps,
})

valid_features = st.fixed_dictionaries({
    "temperature_c": st.sampled_from([55.0, 95.0]), "vibration_mm_s": st.sampled_from([3.0, 18.0]),
    "pressure_kpa": st.just(101.0), "rpm": st.sampled_from([2500, 4200]),
})
valid_request = st.fixed_dictionaries({
    "request_id": st.sampled_from(["req-1", "req-2", "req-3"]),
    "submitted_at": near_now.map(datetime.isoformat),
    "features": valid_features,
})
request_body = mutated(valid_request, {
    "request_id": st.one_of(junk, st.text(max_size=3)),
    "submitted_at": timestamps,
    "features": st.one_of(junk, valid_features.flatmap(lambda f: st.fixed_dictionaries(
        {}, optional={k: st.one_of(st.just(v), numbers) for k, v in f.items()}))),
})
probabilities = st.one_of(
    st.floats(min_value=0, max_value=1), st.floats(min_value=0, max_value=1),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, 1, 2, -1, True, False, "0.5", None, 1.5, -0.1]),
)


# --- schemas alone ---------------------------------------------------------------------------------------------------
@SETTINGS
@given(fields=st.one_of(bodies(reading_body), bodies(request_body)),
       model=st.sampled_from([SensorReading, InferenceRequest]))
def test_decode_returns_a_model_or_raises_poison_message(fields: dict[str, Any], model: type) -> None:
    if fields.get("body") == HUGE_INT_BODY:
        return  # see test_decode_of_a_huge_json_integer_is_poison
    env = Envelope(source="kafka", message_id="m", **fields)
    try:
        result = decode(env, model)
    except PoisonMessage as exc:
        assert exc.message_id == "m" and exc.reason.strip()
    else:
        assert isinstance(result, model)
        assert result.model_dump(mode="json") == model.model_validate_json(env.body).model_dump(mode="json")


def test_decode_of_a_huge_json_integer_is_poison() -> None:
    with pytest.raises(PoisonMessage):
        decode(Envelope(source="kafka", message_id="m", body=HUGE_INT_BODY), SensorReading)


# --- IoT -------------------------------------------------------------------------------------------------------------
class AlertRecorder:
    def __init__(self) -> None:
        self.alerts: list[Any] = []

    def __call__(self, alerts: Any) -> None:
        self.alerts.extend(alerts)


@SETTINGS
@given(fields=st.lists(bodies(reading_body), max_size=12), split=st.integers(min_value=0, max_value=12))
def test_iot_processes_or_dead_letters_every_reading_and_never_raises(fields: list[dict[str, Any]], split: int) -> None:
    engine, published = fresh_engine(), AlertRecorder()
    msgs = envelopes(fields, "kafka")
    processed: list[str] = []
    dead: dict[str, str] = {}
    for run in (msgs[:split], msgs[split:]):  # two runs: state carries over between them
        out = process_readings(run, engine, published, now=NOW)
        run_dead = {str(d["message_id"]): str(d["reason"]) for d in out.dead_letters}
        assert out.readings == len(out.message_ids)
        assert len(out.message_ids) + len(out.dead_letters) == len(run)
        assert set(out.message_ids) | set(run_dead) == {e.message_id for e in run}
        assert not set(out.message_ids) & set(run_dead)
        assert all(reason.strip() for reason in run_dead.values())
        processed += out.message_ids
        dead.update(run_dead)
    with engine.connect() as conn:
        stored = dict(conn.execute(select(iot_tables.iot_readings.c.message_id, iot_tables.iot_readings.c.ts)).all())
        recorded = set(conn.execute(select(db.dead_letters.c.message_id)).scalars())
        states = conn.execute(select(iot_tables.iot_device_state)).mappings().all()
    assert sorted(stored) == sorted(processed) and recorded == set(dead)
    for ts in stored.values():  # every stored reading is recent and in UTC
        assert ts.utcoffset() == timedelta(0) and NOW - timedelta(days=7) <= ts <= NOW + timedelta(seconds=300)
    assert all(st["last_ts"] <= NOW + timedelta(seconds=300) for st in states)  # no device is muted by the future
    assert {a.source_message_id for a in published.alerts} <= set(processed)
    event(f"iot: {min(len(processed), 3)}+ stored, {min(len(published.alerts), 2)}+ alerts")


# --- inference -------------------------------------------------------------------------------------------------------
class DrawingPredictor:
    """Answers each row with a drawn value: a probability or something that is not one."""

    version = "prop/1"

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def predict_proba(self, rows: Any) -> list[Any]:
        return self.data.draw(st.lists(probabilities, min_size=len(rows), max_size=len(rows)))


@SETTINGS
@given(fields=st.lists(bodies(request_body), max_size=12), split=st.integers(min_value=0, max_value=12),
       data=st.data())
def test_inference_answers_or_dead_letters_every_request_and_never_raises(
    fields: list[dict[str, Any]], split: int, data: st.DataObject
) -> None:
    engine = fresh_engine()
    msgs = envelopes(fields, "sqs")
    dead: dict[str, str] = {}
    all_replied: set[str] = set()
    for run in (msgs[:split], msgs[split:]):
        replies: list[Any] = []
        out = answer_requests(run, engine, DrawingPredictor(data), replies.extend)
        run_dead = {str(d["message_id"]): str(d["reason"]) for d in out.dead_letters}
        assert len(out.message_ids) + len(out.dead_letters) == len(run)
        assert set(out.message_ids) | set(run_dead) == {e.message_id for e in run}
        assert not set(out.message_ids) & set(run_dead)
        assert all(reason.strip() for reason in run_dead.values())
        # every answered message's request got exactly one reply over both runs (a request the first run replied
        # to is not replied to again), with a valid probability
        by_id = {e.message_id: e for e in run}
        replied = [r.correlation_id for r in replies]
        assert len(replied) == len(set(replied)) == out.replies == out.requests - out.already_replied
        answered_ids = {decode(by_id[m], InferenceRequest).request_id for m in out.message_ids}
        assert set(replied) <= answered_ids and not set(replied) & all_replied
        assert answered_ids <= set(replied) | all_replied
        all_replied.update(replied)
        assert all(math.isfinite(r.probability) and 0 <= r.probability <= 1 for r in replies)
        dead.update(run_dead)
        event(f"inference: {min(out.replies, 2)}+ replies")
    for reason in dead.values():
        event("inference dead letter: " + ("model answered" if "model answered" in reason else
                                           "duplicate" if "duplicate" in reason else "other"))
    with engine.connect() as conn:
        stored = conn.execute(select(inference_tables.predictions)).mappings().all()
        recorded = set(conn.execute(select(db.dead_letters.c.message_id)).scalars())
    assert recorded == set(dead)
    for row in stored:  # nothing invalid is ever stored
        assert isinstance(row["probability"], float) and 0 <= row["probability"] <= 1
        assert row["submitted_at"] is None or row["submitted_at"].utcoffset() == timedelta(0)
