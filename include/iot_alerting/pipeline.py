"""IoT alerting: evaluate every reading of a run against its rule and the device's remembered state.

Order of effects (a transactional outbox: an alert leaves only with the state change that caused it):
1. in one transaction: readings, new device state, the alerts (``iot_alerts``, and ``iot_alert_outbox`` to be
   published) and any dead letters;
2. then every alert in the outbox is published in the order stored (each with a dedup key derived from the reading
   that caused it), flushed, and deleted from the outbox.
A run that fails before 1 has published nothing and is read again; one that fails between 1 and 2 leaves its alerts
in the outbox, and the next attempt (or the next run) publishes them; one that fails after publishing and before
the delete publishes them again with the same dedup keys, which consumers drop. A reading whose content cannot be
handled (bad JSON, a timestamp out of range or too far from the processing time, ...) is dead-lettered; the rest of
the run goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine, delete, select, text, tuple_

from event_streams.pipelines import db
from event_streams.pipelines.messages import CONTENT_ERRORS, Envelope, PoisonMessage, dead_letter_row, decode
from include.iot_alerting import settings, tables
from include.iot_alerting.rules import RULES, DeviceState, evaluate
from include.iot_alerting.schemas import AlertEvent, SensorReading

log = logging.getLogger(__name__)

PIPELINE = "iot_alerting"
Publisher = Callable[[Sequence[AlertEvent]], None]


@dataclass
class IotOutcome:
    readings: int = 0
    alerts_raised: int = 0
    alerts_cleared: int = 0
    dead_letters: list[dict[str, object]] = field(default_factory=list)
    message_ids: list[str] = field(default_factory=list)  # the readings stored (not dead-lettered)
    published: int = 0  # alerts published from the outbox (this run's, and any an earlier attempt left there)

    def as_dict(self) -> dict[str, object]:
        return {
            "readings": self.readings,
            "alerts_raised": self.alerts_raised,
            "alerts_cleared": self.alerts_cleared,
            "alerts_published": self.published,
            "dead_lettered": [d["message_id"] for d in self.dead_letters],
        }


def _load_states(engine: Engine, keys: set[tuple[str, str]]) -> dict[tuple[str, str], DeviceState]:
    if not keys:
        return {}
    t = tables.iot_device_state
    states: dict[tuple[str, str], DeviceState] = {}
    with engine.connect() as conn:
        for chunk in db.chunked(sorted(keys)):
            rows = conn.execute(select(t).where(tuple_(t.c.device_id, t.c.sensor).in_(chunk))).mappings()
            for r in rows:
                states[(r["device_id"], r["sensor"])] = DeviceState(
                    alerting=bool(r["alerting"]),
                    last_value=r["last_value"],
                    last_ts=db.as_utc(r["last_ts"]).astimezone(timezone.utc),
                    changed_at=db.as_utc(r["changed_at"]).astimezone(timezone.utc),
                )
    return states


def _admit(env: Envelope, now: datetime, max_age_s: float, max_skew_s: float) -> SensorReading:
    """The reading with its ``ts`` in UTC, or ``PoisonMessage`` if it cannot be used."""
    reading = decode(env, SensorReading)
    raw = reading.ts.isoformat()
    try:
        ts = reading.ts.astimezone(timezone.utc)
    except OverflowError:
        raise PoisonMessage(env.message_id, f"ts {raw} is outside the range of representable UTC times") from None
    ahead = (ts - now).total_seconds()
    if ahead > max_skew_s:
        raise PoisonMessage(
            env.message_id,
            f"ts {raw} is {ahead:.0f} s in the future (processed at {now.isoformat()}; "
            f"at most {max_skew_s:g} s of clock skew is allowed): check the device clock",
        )
    if -ahead > max_age_s:
        raise PoisonMessage(
            env.message_id,
            f"ts {raw} is {-ahead:.0f} s old (processed at {now.isoformat()}; readings older than "
            f"{max_age_s:g} s are not evaluated)",
        )
    return reading.model_copy(update={"ts": ts})


def _dead_letter(outcome: IotOutcome, env: Envelope, exc: Exception) -> None:
    reason = exc.reason if isinstance(exc, PoisonMessage) else f"reading {env.message_id}: {type(exc).__name__}: {exc}"
    log.error("Dead-lettering message %s: %s", env.message_id, reason)
    outcome.dead_letters.append(dead_letter_row(env, reason))


def publish_outbox(engine: Engine, publish: Publisher, after_effect: Callable[[str], None] | None = None,
                   batch: int = 500) -> int:
    """Publish every alert in ``iot_alert_outbox``, oldest first, and delete each batch once it is acknowledged;
    returns how many were published. Alerts are there only once their state change is committed."""
    t = tables.iot_alert_outbox
    published = 0
    while True:
        with engine.begin() as conn:  # one drainer at a time, from its read to its delete (_lock_outbox)
            _lock_outbox(conn)
            rows = conn.execute(select(t.c.id, t.c.event).order_by(t.c.id).limit(batch)).all()
            if not rows:
                return published
            publish([AlertEvent.model_validate_json(event) for _, event in rows])  # flushed: acknowledged
            if after_effect is not None:
                after_effect("iot.after_publish")  # a failure here rolls the delete back: the rows stay
            conn.execute(delete(t).where(t.c.id.in_([i for i, _ in rows])))
        published += len(rows)


def _lock_outbox(conn: Any) -> None:
    """Hold the outbox until this transaction ends, so overlapping runs (``max_active_runs`` > 1) do not both
    publish the same alerts: PostgreSQL, a transaction-level advisory lock; SQLite, the database's write lock, taken
    now by a write that changes nothing (the others wait for it: ``busy_timeout``)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('iot_alert_outbox'))"))
    else:
        conn.execute(text(f"DELETE FROM {tables.iot_alert_outbox.name} WHERE 0 = 1"))


def process_readings(
    envelopes: Sequence[Envelope],
    engine: Engine,
    publish: Publisher,
    *,
    now: datetime | None = None,
    max_age_seconds: float | None = None,
    max_skew_seconds: float | None = None,
    after_effect: Callable[[str], None] | None = None,
) -> IotOutcome:
    """Apply a run's readings in timestamp order per device; publish transitions; persist state.

    ``now`` (default: the current time) and the bounds (default: ``settings.IOT_MAX_READING_AGE_SECONDS`` and
    ``settings.IOT_MAX_CLOCK_SKEW_SECONDS``) decide which readings are too old or too far in the future.
    ``after_effect(point)`` is the fault suite's hook, called at ``iot.before_commit`` (evaluated, nothing stored),
    ``iot.after_commit`` (stored, nothing published) and ``iot.after_publish`` (published, still in the outbox).
    """
    now = db.utcnow() if now is None else now
    if now.tzinfo is None:
        raise ValueError(f"naive now {now!r}: pass an aware datetime")
    now = now.astimezone(timezone.utc)
    max_age = settings.IOT_MAX_READING_AGE_SECONDS if max_age_seconds is None else max_age_seconds
    max_skew = settings.IOT_MAX_CLOCK_SKEW_SECONDS if max_skew_seconds is None else max_skew_seconds

    outcome = IotOutcome()
    readings: list[tuple[Envelope, SensorReading]] = []
    for env in envelopes:
        try:
            readings.append((env, _admit(env, now, max_age, max_skew)))
        except CONTENT_ERRORS as exc:
            _dead_letter(outcome, env, exc)

    readings.sort(key=lambda item: (item[1].ts, item[0].message_id))  # every ts is UTC here
    states = _load_states(engine, {(r.device_id, r.sensor) for _, r in readings})
    changed: dict[tuple[str, str], DeviceState] = {}
    alerts: list[AlertEvent] = []
    accepted: list[tuple[str, SensorReading]] = []
    for env, r in readings:
        key = (r.device_id, r.sensor)
        try:  # compute everything first: a reading that fails here leaves state and alerts untouched
            rule = RULES[r.sensor]
            new_state, transition = evaluate(rule, states.get(key), r.value, r.ts)
            alert = None
            if transition is not None:
                alert = AlertEvent(
                    dedup_key=AlertEvent.make_dedup_key(r.device_id, r.sensor, transition, r.ts.isoformat()),
                    kind=transition,
                    device_id=r.device_id,
                    sensor=r.sensor,
                    value=r.value,
                    unit=r.unit,
                    rule=rule.describe(),
                    severity=rule.severity,
                    ts=r.ts,
                    source_message_id=env.message_id,
                )
        except CONTENT_ERRORS as exc:
            _dead_letter(outcome, env, exc)
            continue
        if new_state is not None and new_state is not states.get(key):
            states[key] = changed[key] = new_state
        if alert is not None:
            alerts.append(alert)
        accepted.append((env.message_id, r))

    hook = after_effect or (lambda _point: None)
    hook("iot.before_commit")
    with engine.begin() as conn:
        db.insert_ignore(
            conn,
            tables.iot_readings,
            [
                {"message_id": mid, "device_id": r.device_id, "sensor": r.sensor, "value": r.value, "unit": r.unit,
                 "ts": r.ts}
                for mid, r in accepted
            ],
        )
        db.upsert(
            conn,
            tables.iot_device_state,
            [
                {"device_id": d, "sensor": s, "alerting": st.alerting, "last_value": st.last_value,
                 "last_ts": st.last_ts, "changed_at": st.changed_at}
                for (d, s), st in changed.items()
            ],
        )
        db.insert_ignore(
            conn,
            tables.iot_alerts,
            [
                {"dedup_key": a.dedup_key, "device_id": a.device_id, "sensor": a.sensor, "kind": a.kind,
                 "value": a.value, "ts": a.ts, "message_id": a.source_message_id}
                for a in alerts
            ],
        )
        db.insert_ignore(conn, tables.iot_alert_outbox,
                         [{"dedup_key": a.dedup_key, "event": a.model_dump_json()} for a in alerts])
        db.record_dead_letters(conn, PIPELINE, outcome.dead_letters)
    hook("iot.after_commit")
    outcome.published = publish_outbox(engine, publish, hook)

    outcome.readings = len(accepted)
    outcome.message_ids = [mid for mid, _ in accepted]
    outcome.alerts_raised = sum(a.kind == "raised" for a in alerts)
    outcome.alerts_cleared = sum(a.kind == "cleared" for a in alerts)
    log.info("%d readings, %d alerts raised, %d cleared, %d dead-lettered", outcome.readings,
             outcome.alerts_raised, outcome.alerts_cleared, len(outcome.dead_letters))
    return outcome
