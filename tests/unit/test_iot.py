from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, select

from event_streams.pipelines import db
from event_streams.pipelines.messages import Envelope
from include.iot_alerting import settings as iot_settings
from include.iot_alerting import tables as iot_tables
from include.iot_alerting.pipeline import process_readings
from include.iot_alerting.rules import RULES, Rule, evaluate
from include.iot_alerting.schemas import AlertEvent

T0 = datetime(2026, 11, 24, 8, 0, tzinfo=timezone.utc)
NOW = T0 + timedelta(hours=1)  # the processing time of every run here: readings near T0 are recent


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
    out1 = process_readings(run1, engine, published, now=NOW)
    assert (out1.readings, out1.alerts_raised, out1.alerts_cleared) == (3, 1, 0)
    [[alert]] = published.calls
    assert (alert.kind, alert.device_id, alert.value, alert.source_message_id) == ("raised", "pump-1", 85.5, "iot-readings/0/1")
    assert alert.dedup_key.startswith("pump-1:temperature:raised:")

    # next run: 77 is inside the band (no clear), 74 clears
    run2 = [reading(4, "pump-1", "temperature", 74.0, "C", 3), reading(3, "pump-1", "temperature", 77.0, "C", 2)]
    out2 = process_readings(run2, engine, published, now=NOW)
    assert (out2.alerts_raised, out2.alerts_cleared) == (0, 1)
    assert [a.kind for a in published.calls[-1]] == ["cleared"]
    with engine.connect() as conn:
        state = conn.execute(select(iot_tables.iot_device_state).where(iot_tables.iot_device_state.c.device_id == "pump-1")).mappings().one()
        alerts = conn.execute(select(iot_tables.iot_alerts.c.kind).order_by(iot_tables.iot_alerts.c.ts)).scalars().all()
        readings = conn.execute(select(iot_tables.iot_readings.c.message_id)).scalars().all()
    assert (state["alerting"], state["last_value"]) == (False, 74.0)
    assert alerts == ["raised", "cleared"] and len(readings) == 5


def test_replaying_a_run_publishes_nothing_new_and_writes_nothing_twice(engine: Engine) -> None:
    published = Recorder()
    run = [reading(0, "fan-1", "vibration", 20.0, "mm/s", 0), reading(1, "fan-1", "vibration", 5.0, "mm/s", 1)]
    process_readings(run, engine, published, now=NOW)
    process_readings(run, engine, published, now=NOW)  # redelivered: e.g. the task was retried or the run cleared
    assert len(published.calls) == 1 and [a.kind for a in published.calls[0]] == ["raised", "cleared"]
    with engine.connect() as conn:
        assert len(conn.execute(select(iot_tables.iot_readings)).all()) == 2
        assert len(conn.execute(select(iot_tables.iot_alerts)).all()) == 2


def test_an_alert_is_published_only_once_its_state_change_is_stored(engine: Engine) -> None:
    """The outbox: a publisher that is down fails the attempt after the state is committed, and nothing is on the
    topic; the retry (the same readings, now "not newer") publishes the stored alerts, in order, exactly once."""
    def down(alerts) -> None:
        raise RuntimeError("alerts topic unavailable")

    run = [reading(0, "fan-2", "vibration", 20.0, "mm/s", 0), reading(1, "fan-2", "vibration", 5.0, "mm/s", 1)]
    with pytest.raises(RuntimeError, match="unavailable"):
        process_readings(run, engine, down, now=NOW)
    with engine.connect() as conn:  # state and alerts stored together; both alerts still waiting in the outbox
        assert conn.execute(select(iot_tables.iot_device_state.c.alerting)).scalars().all() == [False]
        waiting = conn.execute(select(iot_tables.iot_alert_outbox.c.event).order_by(iot_tables.iot_alert_outbox.c.id))
        assert [json.loads(e)["kind"] for e in waiting.scalars()] == ["raised", "cleared"]
    published = Recorder()
    retry = process_readings(run, engine, published, now=NOW)
    assert (retry.alerts_raised, retry.published) == (0, 2)  # nothing new evaluated; the stored ones published
    assert [[(a.kind, a.source_message_id) for a in call] for call in published.calls] == [
        [("raised", "iot-readings/0/0"), ("cleared", "iot-readings/0/1")]]
    with engine.connect() as conn:
        assert conn.execute(select(iot_tables.iot_alert_outbox)).all() == []
    process_readings([reading(2, "fan-2", "vibration", 4.0, "mm/s", 2)], engine, published, now=NOW)
    assert len(published.calls) == 1  # an empty outbox publishes nothing


def test_two_overlapping_runs_publish_each_stored_alert_once(engine: Engine) -> None:
    """Runs overlap (max_active_runs > 1) and each drains the outbox: the drains take turns (the database's write lock
    on SQLite), so an alert stored once is published once, however the two runs interleave. Before the lock, both
    read the same rows while the first was publishing, and both published them."""
    import threading
    import time

    from include.iot_alerting.pipeline import publish_outbox

    with pytest.raises(RuntimeError, match="unavailable"):  # stored, and left in the outbox
        process_readings([reading(0, "fan-2", "vibration", 20.0, "mm/s", 0),
                          reading(1, "fan-2", "vibration", 5.0, "mm/s", 1)], engine, _down, now=NOW)
    published: list[str] = []

    def slow(alerts) -> None:  # a publish and flush that takes a while, as over the network
        time.sleep(0.5)
        published.extend(a.dedup_key for a in alerts)

    drains = [threading.Thread(target=publish_outbox, args=(engine, slow)) for _ in range(2)]
    for d in drains:
        d.start()
    for d in drains:
        d.join()
    with engine.connect() as conn:
        stored = conn.execute(select(iot_tables.iot_alerts.c.dedup_key).order_by(iot_tables.iot_alerts.c.ts)).scalars()
        assert published == list(stored) and len(published) == 2  # raised, cleared: once each, in order
        assert conn.execute(select(iot_tables.iot_alert_outbox)).all() == []


def _down(alerts) -> None:
    raise RuntimeError("alerts topic unavailable")


@pytest.mark.parametrize(("point", "republished"), [("iot.before_commit", 0), ("iot.after_commit", 0),
                                                    ("iot.after_publish", 1)])
def test_a_crash_at_each_point_ends_with_the_state_and_the_alerts_of_one_run(engine: Engine, point: str,
                                                                            republished: int) -> None:
    def crash(at: str) -> None:
        if at == point:
            raise RuntimeError(f"killed at {at}")

    published = Recorder()
    run = [reading(0, "fan-3", "vibration", 20.0, "mm/s", 0)]
    with pytest.raises(RuntimeError, match=point):
        process_readings(run, engine, published, now=NOW, after_effect=crash)
    assert len(published.calls) == republished  # before the commit nothing may leave; after it, only what is stored
    process_readings(run, engine, published, now=NOW)
    assert [a.kind for call in published.calls for a in call] == ["raised"] * (1 + republished)  # same dedup key
    assert len({a.dedup_key for call in published.calls for a in call}) == 1
    with engine.connect() as conn:
        assert conn.execute(select(iot_tables.iot_device_state.c.alerting)).scalars().all() == [True]
        assert conn.execute(select(iot_tables.iot_alert_outbox)).all() == []


def test_readings_that_trip_nothing_publish_nothing(engine: Engine) -> None:
    published = Recorder()
    process_readings([reading(i, f"d-{i}", "humidity", 40 + i, "%", i) for i in range(20)], engine, published, now=NOW)
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
    out = process_readings([*bad, reading(5, "d", "temperature", 90.0, "C", 5)], engine, published, now=NOW)
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
        process_readings(run, engine, broken, now=NOW)
    published = Recorder()
    process_readings(run, engine, published, now=NOW)
    assert [a.kind for a in published.calls[0]] == ["raised"]


def reading_at(offset: int, ts: str, value: float = 90.0, device: str = "d") -> Envelope:
    body = {"device_id": device, "sensor": "temperature", "value": value, "unit": "C", "ts": ts}
    return Envelope(source="kafka", message_id=f"iot-readings/0/{offset}", body=json.dumps(body),
                    topic="iot-readings", partition=0, offset=offset)


def dead_letter_reasons(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(select(db.dead_letters.c.message_id, db.dead_letters.c.reason)).all())


def test_timestamps_out_of_range_are_dead_lettered_and_the_rest_of_the_run_flows(engine: Engine) -> None:
    published = Recorder()
    run = [reading_at(0, "0001-01-01T00:00:00+01:00"), reading_at(1, "9999-12-31T23:59:59-01:00"),
           reading_at(2, "9999-12-31T23:59:59+00:00"), reading_at(3, "0001-01-01T00:00:00+00:00"),
           reading(4, "d", "temperature", 90.0, "C", 0)]
    out = process_readings(run, engine, published, now=NOW)
    assert (out.readings, out.message_ids, out.alerts_raised) == (1, ["iot-readings/0/4"], 1)
    letters = dead_letter_reasons(engine)
    assert letters["iot-readings/0/0"] == "ts 0001-01-01T00:00:00+01:00 is outside the range of representable UTC times"
    assert letters["iot-readings/0/1"] == "ts 9999-12-31T23:59:59-01:00 is outside the range of representable UTC times"
    assert letters["iot-readings/0/2"].startswith("ts 9999-12-31T23:59:59+00:00 is 251606789999 s")
    skew, age = iot_settings.IOT_MAX_CLOCK_SKEW_SECONDS, iot_settings.IOT_MAX_READING_AGE_SECONDS  # the defaults
    assert f" s in the future (processed at 2026-11-24T09:00:00+00:00; at most {skew:g} s" in letters["iot-readings/0/2"]
    assert letters["iot-readings/0/3"].startswith("ts 0001-01-01T00:00:00+00:00 is 63931107600 s old")
    assert f"older than {age:g} s are not evaluated" in letters["iot-readings/0/3"]
    assert [d["message_id"] for d in out.dead_letters] == [f"iot-readings/0/{i}" for i in range(4)]


def test_the_time_window_is_set_by_now_and_both_bounds(engine: Engine) -> None:
    published = Recorder()
    run = [reading_at(0, (NOW + timedelta(seconds=61)).isoformat(), 50.0),  # 61 s ahead
           reading_at(1, (NOW + timedelta(seconds=59)).isoformat(), 50.0, device="e"),  # 59 s ahead
           reading_at(2, (NOW - timedelta(seconds=3601)).isoformat(), 50.0, device="f"),  # 3601 s old
           reading_at(3, (NOW - timedelta(seconds=3599)).isoformat(), 50.0, device="g")]  # 3599 s old
    out = process_readings(run, engine, published, now=NOW, max_age_seconds=3600, max_skew_seconds=60)
    assert sorted(out.message_ids) == ["iot-readings/0/1", "iot-readings/0/3"]
    letters = dead_letter_reasons(engine)
    assert set(letters) == {"iot-readings/0/0", "iot-readings/0/2"}
    assert "is 61 s in the future" in letters["iot-readings/0/0"] and "at most 60 s of clock skew" in letters["iot-readings/0/0"]
    assert "is 3601 s old" in letters["iot-readings/0/2"] and "older than 3600 s" in letters["iot-readings/0/2"]
    with pytest.raises(ValueError, match="naive"):
        process_readings(run, engine, published, now=NOW.replace(tzinfo=None))


def test_a_reading_from_the_far_future_does_not_mute_its_device(engine: Engine) -> None:
    published = Recorder()
    future = reading_at(0, "2030-01-01T00:00:00+00:00", 95.0)  # a device clock years ahead
    out = process_readings([future], engine, published, now=NOW)
    assert out.readings == 0 and [d["message_id"] for d in out.dead_letters] == ["iot-readings/0/0"]
    assert published.calls == []
    # a normal reading afterwards is evaluated: it raises the alert the future one would have hidden
    out = process_readings([reading(1, "d", "temperature", 95.0, "C", 10)], engine, published, now=NOW)
    assert (out.readings, out.alerts_raised) == (1, 1)
    assert [(a.kind, a.source_message_id) for a in published.calls[0]] == [("raised", "iot-readings/0/1")]
    # and in one run: the future reading is dead-lettered, the normal one raises
    out = process_readings([reading_at(2, "2031-01-01T00:00:00Z", 95.0, "d2"), reading_at(3, T0.isoformat(), 95.0, "d2")],
                           engine, published, now=NOW)
    assert (out.message_ids, out.alerts_raised) == (["iot-readings/0/3"], 1)
    assert [d["message_id"] for d in out.dead_letters] == ["iot-readings/0/2"]


def test_an_offset_timestamp_is_stored_and_compared_as_the_same_instant(engine: Engine) -> None:
    """SQLite keeps no offset: a time stored as its wall clock would be 13:00 UTC here, and the second run's
    09:00 UTC reading (one hour *later*) would look older than the state and be ignored."""
    published = Recorder()
    first = reading_at(0, "2026-11-24T13:00:00+05:00", 90.0)  # 08:00 UTC: raises
    process_readings([first], engine, published, now=NOW)
    later = reading_at(1, "2026-11-24T09:00:00+00:00", 70.0)  # 09:00 UTC: later, yet an earlier wall clock
    out = process_readings([later], engine, published, now=NOW)
    assert out.alerts_cleared == 1
    assert [a.kind for batch in published.calls for a in batch] == ["raised", "cleared"]
    earlier = reading_at(2, "2026-11-24T12:30:00+04:00", 95.0)  # 08:30 UTC: older than the state, ignored
    out = process_readings([earlier], engine, published, now=NOW)
    assert (out.readings, out.alerts_raised) == (1, 0)
    with engine.connect() as conn:
        stored = dict(conn.execute(select(iot_tables.iot_readings.c.message_id, iot_tables.iot_readings.c.ts)).all())
        state = conn.execute(select(iot_tables.iot_device_state)).mappings().one()
    assert stored["iot-readings/0/0"] == datetime(2026, 11, 24, 8, 0, tzinfo=timezone.utc)
    assert stored["iot-readings/0/0"].utcoffset() == timedelta(0)
    assert stored["iot-readings/0/2"] == datetime(2026, 11, 24, 8, 30, tzinfo=timezone.utc)
    assert (state["alerting"], state["last_value"], state["last_ts"]) == (False, 70.0, T0 + timedelta(hours=1))
    assert published.calls[0][0].ts == T0 and published.calls[0][0].ts.utcoffset() == timedelta(0)


def test_a_content_error_while_evaluating_one_reading_dead_letters_only_that_reading(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from include.iot_alerting import pipeline

    def fragile(rule, state, value, ts):
        if value == 13.0:
            raise ZeroDivisionError("float division by zero")
        return evaluate(rule, state, value, ts)

    monkeypatch.setattr(pipeline, "evaluate", fragile)
    published = Recorder()
    run = [reading(0, "a", "temperature", 13.0, "C", 0), reading(1, "a", "temperature", 85.0, "C", 1),
           reading(2, "b", "temperature", 85.0, "C", 0)]
    out = process_readings(run, engine, published, now=NOW)
    assert sorted(out.message_ids) == ["iot-readings/0/1", "iot-readings/0/2"] and out.alerts_raised == 2
    assert dead_letter_reasons(engine) == {"iot-readings/0/0": "reading iot-readings/0/0: ZeroDivisionError: float division by zero"}
    with engine.connect() as conn:
        assert sorted(conn.execute(select(iot_tables.iot_readings.c.message_id)).scalars()) == ["iot-readings/0/1", "iot-readings/0/2"]
