"""IoT alerting: evaluate every reading of a run against its rule and the device's remembered state.

Order of effects (at-least-once, exactly-once in the end):
1. alerts are published and flushed (each with a dedup key derived from the reading that caused it);
2. then, in one transaction: readings, new device state, the published alerts and any dead letters.
A crash between 1 and 2 replays the run: the same readings produce the same alerts with the same dedup keys,
which consumers drop; state is only advanced once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timezone

from sqlalchemy import Engine, select, tuple_

from include.event_pipelines import db
from include.event_pipelines.faults import maybe_fail
from include.event_pipelines.iot.rules import RULES, DeviceState, evaluate
from include.event_pipelines.iot.schemas import AlertEvent, SensorReading
from include.event_pipelines.messages import Envelope, PoisonMessage, dead_letter_row, decode

log = logging.getLogger(__name__)

PIPELINE = "iot_alerting"
Publisher = Callable[[Sequence[AlertEvent]], None]


@dataclass
class IotOutcome:
    readings: int = 0
    alerts_raised: int = 0
    alerts_cleared: int = 0
    dead_letters: list[dict[str, object]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "readings": self.readings,
            "alerts_raised": self.alerts_raised,
            "alerts_cleared": self.alerts_cleared,
            "dead_lettered": [d["message_id"] for d in self.dead_letters],
        }


def _load_states(engine: Engine, keys: set[tuple[str, str]]) -> dict[tuple[str, str], DeviceState]:
    if not keys:
        return {}
    t = db.iot_device_state
    states: dict[tuple[str, str], DeviceState] = {}
    key_list = sorted(keys)
    with engine.connect() as conn:
        for start in range(0, len(key_list), 500):
            chunk = key_list[start : start + 500]
            rows = conn.execute(select(t).where(tuple_(t.c.device_id, t.c.sensor).in_(chunk))).mappings()
            for r in rows:
                states[(r["device_id"], r["sensor"])] = DeviceState(
                    alerting=bool(r["alerting"]),
                    last_value=r["last_value"],
                    last_ts=db.as_utc(r["last_ts"]),
                    changed_at=db.as_utc(r["changed_at"]),
                )
    return states



def process_readings(envelopes: Sequence[Envelope], engine: Engine, publish: Publisher) -> IotOutcome:
    """Apply a run's readings in timestamp order per device; publish transitions; persist state."""
    outcome = IotOutcome()
    readings: list[tuple[str, SensorReading]] = []
    for env in envelopes:
        try:
            readings.append((env.message_id, decode(env, SensorReading)))
        except PoisonMessage as exc:
            log.error("Dead-lettering %s", exc)
            outcome.dead_letters.append(dead_letter_row(env, exc.reason))

    readings.sort(key=lambda item: (item[1].ts, item[0]))
    states = _load_states(engine, {(r.device_id, r.sensor) for _, r in readings})
    changed: dict[tuple[str, str], DeviceState] = {}
    alerts: list[AlertEvent] = []
    for mid, r in readings:
        key = (r.device_id, r.sensor)
        rule = RULES[r.sensor]
        new_state, transition = evaluate(rule, states.get(key), r.value, r.ts)
        if new_state is not None and new_state is not states.get(key):
            states[key] = changed[key] = new_state
        if transition is not None:
            ts_iso = r.ts.astimezone(timezone.utc).isoformat()
            alerts.append(
                AlertEvent(
                    dedup_key=AlertEvent.make_dedup_key(r.device_id, r.sensor, transition, ts_iso),
                    kind=transition,
                    device_id=r.device_id,
                    sensor=r.sensor,
                    value=r.value,
                    unit=r.unit,
                    rule=rule.describe(),
                    severity=rule.severity,
                    ts=r.ts,
                    source_message_id=mid,
                )
            )

    if alerts:
        publish(alerts)  # flushed before any state is committed
    maybe_fail("iot.after_publish")
    with engine.begin() as conn:
        db.insert_ignore(
            conn,
            db.iot_readings,
            [
                {"message_id": mid, "device_id": r.device_id, "sensor": r.sensor, "value": r.value, "unit": r.unit, "ts": r.ts}
                for mid, r in readings
            ],
        )
        db.upsert(
            conn,
            db.iot_device_state,
            [
                {"device_id": d, "sensor": s, "alerting": st.alerting, "last_value": st.last_value,
                 "last_ts": st.last_ts, "changed_at": st.changed_at}
                for (d, s), st in changed.items()
            ],
        )
        db.insert_ignore(
            conn,
            db.iot_alerts,
            [
                {"dedup_key": a.dedup_key, "device_id": a.device_id, "sensor": a.sensor, "kind": a.kind,
                 "value": a.value, "ts": a.ts, "message_id": a.source_message_id}
                for a in alerts
            ],
        )
        db.record_dead_letters(conn, PIPELINE, outcome.dead_letters)

    outcome.readings = len(readings)
    outcome.alerts_raised = sum(a.kind == "raised" for a in alerts)
    outcome.alerts_cleared = sum(a.kind == "cleared" for a in alerts)
    log.info("%d readings, %d alerts raised, %d cleared, %d dead-lettered", outcome.readings,
             outcome.alerts_raised, outcome.alerts_cleared, len(outcome.dead_letters))
    return outcome
