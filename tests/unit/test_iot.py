from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, select

from include.event_pipelines import db
from include.event_pipelines.iot.pipeline import process_readings
from include.event_pipelines.iot.rules import RULES, Rule, evaluate
from include.event_pipelines.iot.schemas import AlertEvent
from include.event_pipelines.messages import Envelope

T0 = datetime(2026, 11, 24, 8, 0, tzinfo=timezone.utc)


def transitions(rule: Rule, values: list[float]) -> list[str | None]:
    state, out = None, []
    for i, v in enumerate(values):
        state, t = evaluate(rule, state, v, T0 + timedelta(seconds=i))
        out.append(t)
    return out


def test_hysteresis_raises_once_and_clears_only_past_the_clear_threshold() -> None:
    temp = RULES["temperature"]  # raise at >= 80, clear at <= 75
    assert transitions(temp, [79, 80, 79.9, 80.1, 78, 76, 75, 79, 80]) == [
        None, "raised", None, None, None, None, "cleared", None, "raised"]


def test_a_value_hovering_at_the_threshold_does_not_flap() -> None:
    assert transitions(RULES["temperature"], [80, 79.9, 80, 79.8, 80.2, 79.9]).count("raised") == 1
    assert transitions(RULES["temperature"], [80, 79.9, 80, 79.8, 80.2, 79.9]).count("cleared") == 0


def test_low_side_rules_trip_below() -> None:
    assert transitions(RULES["pressure"], [101, 90, 92, 94.9, 95]) == [None, "raised", None, None, "cleared"]


def test_a_replayed_or_late_reading_changes_nothing() -> None:
    rule = RULES["vibration"]
    state, t = evaluate(rule, None, 13, T0)
    assert t == "raised"
    assert evaluate(rule, state, 1, T0) == (state, None)  # same timestamp: a replay
    assert evaluate(rule, state, 1, T0 - timedelta(seconds=5)) == (state, None)  # older: late


def test_rules_reject_a_band_on_the_wrong_side() -> None:
    with pytest.raises(ValueError, match="safe side"):
        Rule("temperature", "C", "above", raise_at=80, clear_at=85, valid_min=0, valid_max=100)


def reading(offset: int, device: str, sensor: str, value, unit: str, second: int, **extra) -> Envelope:
    body = {"device_id": device, "sensor": sensor, "value": value, "unit": unit,
            "ts": (T0 + timedelta(seconds=second)).isoformat(), **extra}
    return Envelope(source="kafka", message_id=f"iot-readings/0/{offset}", body=json.dumps(body),
                    topic="iot-readings", partition=0, offset=offset)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[list[AlertEvent]] = []

    def __call__(self, alerts) -> None:
        self.calls.append(list(alerts))


def test_a_run_publishes_transitions_and_state_survives_to_the_next_run(engine: Engine) -> None:
    published = Recorder()
    run1 = [reading(0, "pump-1", "temperature", 70.0, "C", 0), reading(1, "pump-1", "temperature", 85.5, "C", 1),
            reading(2, "pump-2", "humidity", 50, "%", 1)]
    out1 = process_readings(run1, engine, published)
    assert (out1.readings, out1.alerts_raised, out1.alerts_cleared) == (3, 1, 0)
    [[alert]] = published.calls
    assert (alert.kind, alert.device_id, alert.value, alert.source_message_id) == ("raised", "pump-1", 85.5, "iot-readings/0/1")
    assert alert.dedup_key.startswith("pump-1:temperature:raised:")

    # next run: 77 is inside the band (no clear), 74 clears
    run2 = [reading(4, "pump-1", "temperature", 74.0, "C", 3), reading(3, "pump-1", "temperature", 77.0, "C", 2)]
    out2 = process_readings(run2, engine, published)
    assert (out2.alerts_raised, out2.alerts_cleared) == (0, 1)
    assert [a.kind for a in published.calls[-1]] == ["cleared"]
    with engine.connect() as conn:
        state = conn.execute(select(db.iot_device_state).where(db.iot_device_state.c.device_id == "pump-1")).mappings().one()
        alerts = conn.execute(select(db.iot_alerts.c.kind).order_by(db.iot_alerts.c.ts)).scalars().all()
        readings = conn.execute(select(db.iot_readings.c.message_id)).scalars().all()
    assert (state["alerting"], state["last_value"]) == (False, 74.0)
    assert alerts == ["raised", "cleared"] and len(readings) == 5


def test_replaying_a_run_publishes_nothing_new_and_writes_nothing_twice(engine: Engine) -> None:
    published = Recorder()
    run = [reading(0, "fan-1", "vibration", 20.0, "mm/s", 0), reading(1, "fan-1", "vibration", 5.0, "mm/s", 1)]
    process_readings(run, engine, published)
    process_readings(run, engine, published)  # redelivered: e.g. the task was retried or the run cleared
    assert len(published.calls) == 1 and [a.kind for a in published.calls[0]] == ["raised", "cleared"]
    with engine.connect() as conn:
        assert len(conn.execute(select(db.iot_readings)).all()) == 2
        assert len(conn.execute(select(db.iot_alerts)).all()) == 2


def test_readings_that_trip_nothing_publish_nothing(engine: Engine) -> None:
    published = Recorder()
    process_readings([reading(i, f"d-{i}", "humidity", 40 + i, "%", i) for i in range(20)], engine, published)
    assert published.calls == []


def test_bad_readings_are_dead_lettered_and_good_ones_still_flow(engine: Engine) -> None:
    published = Recorder()
    bad = [
        reading(0, "d", "temperature", 500.0, "C", 0),  # out of range
        reading(1, "d", "temperature", 90.0, "F", 1),  # wrong unit
        reading(2, "d", "torque", 1.0, "Nm", 2),  # unknown sensor
        reading(3, "d", "temperature", "hot", "C", 3),  # wrong type
        Envelope(source="kafka", message_id="iot-readings/0/4", body_b64="//79"),  # not UTF-8
    ]
    out = process_readings([*bad, reading(5, "d", "temperature", 90.0, "C", 5)], engine, published)
    assert out.readings == 1 and out.alerts_raised == 1
    with engine.connect() as conn:
        letters = dict(conn.execute(select(db.dead_letters.c.message_id, db.dead_letters.c.reason)).all())
    assert set(letters) == {f"iot-readings/0/{i}" for i in range(5)}
    assert "outside [-60, 200]" in letters["iot-readings/0/0"]
    assert "unit 'F' is wrong for temperature" in letters["iot-readings/0/1"]
    assert "sensor: Input should be" in letters["iot-readings/0/2"]
    assert "value: Input should be a valid number" in letters["iot-readings/0/3"]
    assert letters["iot-readings/0/4"] == "body is not valid UTF-8"


def test_a_failed_publish_leaves_state_untouched_so_the_retry_publishes_again(engine: Engine) -> None:
    def broken(alerts) -> None:
        raise RuntimeError("broker down")

    run = [reading(0, "p", "temperature", 99.0, "C", 0)]
    with pytest.raises(RuntimeError):
        process_readings(run, engine, broken)
    published = Recorder()
    process_readings(run, engine, published)
    assert [a.kind for a in published.calls[0]] == ["raised"]
