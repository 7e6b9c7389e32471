"""Alert rules per sensor type, with hysteresis so a value hovering at a threshold does not flap.

An alert is *raised* when a reading crosses ``raise_at`` and *cleared* only once a later reading is back past
``clear_at`` (a band on the safe side of the threshold). Readings in between keep the current state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

Direction = Literal["above", "below"]
Sensor = Literal["temperature", "humidity", "pressure", "vibration"]


@dataclass(frozen=True)
class Rule:
    sensor: Sensor
    unit: str
    direction: Direction  # "above": too high is bad; "below": too low is bad
    raise_at: float
    clear_at: float
    valid_min: float  # readings outside [valid_min, valid_max] are physically impossible: poison
    valid_max: float
    severity: Literal["warning", "critical"] = "warning"

    def __post_init__(self) -> None:
        safe_side_ok = self.clear_at < self.raise_at if self.direction == "above" else self.clear_at > self.raise_at
        if not safe_side_ok:
            raise ValueError(f"{self.sensor}: clear_at must lie on the safe side of raise_at")

    def trips(self, value: float) -> bool:
        return value >= self.raise_at if self.direction == "above" else value <= self.raise_at

    def clears(self, value: float) -> bool:
        return value <= self.clear_at if self.direction == "above" else value >= self.clear_at

    def describe(self) -> str:
        op, back = (">=", "<=") if self.direction == "above" else ("<=", ">=")
        return f"{self.sensor} {op} {self.raise_at:g} {self.unit} (clears at {back} {self.clear_at:g})"


RULES: dict[str, Rule] = {
    r.sensor: r
    for r in (
        Rule("temperature", "C", "above", raise_at=80.0, clear_at=75.0, valid_min=-60.0, valid_max=200.0,
             severity="critical"),
        Rule("humidity", "%", "above", raise_at=90.0, clear_at=85.0, valid_min=0.0, valid_max=100.0),
        Rule("pressure", "kPa", "below", raise_at=90.0, clear_at=95.0, valid_min=0.0, valid_max=500.0),
        Rule("vibration", "mm/s", "above", raise_at=12.0, clear_at=9.0, valid_min=0.0, valid_max=100.0,
             severity="critical"),
    )
}


@dataclass(frozen=True)
class DeviceState:
    """What the pipeline remembers per (device, sensor) between runs."""

    alerting: bool
    last_value: float
    last_ts: datetime
    changed_at: datetime


Transition = Literal["raised", "cleared"]


def evaluate(
    rule: Rule, state: DeviceState | None, value: float, ts: datetime
) -> tuple[DeviceState | None, Transition | None]:
    """Next state and the transition (if any) for one reading.

    A reading not newer than the last one applied changes nothing: a replayed or late message cannot re-raise or
    flap an alert.
    """
    if state is not None and ts <= state.last_ts:
        return state, None
    alerting = state.alerting if state is not None else False
    changed_at = state.changed_at if state is not None else ts
    transition: Transition | None = None
    if not alerting and rule.trips(value):
        alerting, transition, changed_at = True, "raised", ts
    elif alerting and rule.clears(value):
        alerting, transition, changed_at = False, "cleared", ts
    return DeviceState(alerting=alerting, last_value=value, last_ts=ts, changed_at=changed_at), transition
