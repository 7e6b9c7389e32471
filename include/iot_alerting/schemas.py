"""Messages of the IoT alerting pipeline."""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from include.iot_alerting.rules import RULES, Sensor

DeviceId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]


class SensorReading(BaseModel):
    """A reading on the ``iot-readings`` topic. Example::

        {"device_id": "pump-0042", "sensor": "temperature", "value": 81.5, "unit": "C",
         "ts": "2026-11-24T08:00:00.250Z"}
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    device_id: DeviceId
    sensor: Sensor
    value: Annotated[float, Field(allow_inf_nan=False)]
    unit: Annotated[str, Field(min_length=1, max_length=16)]
    ts: AwareDatetime

    @model_validator(mode="after")
    def _plausible(self) -> SensorReading:
        rule = RULES[self.sensor]
        if self.unit != rule.unit:
            raise ValueError(f"unit {self.unit!r} is wrong for {self.sensor}; expected {rule.unit!r}")
        if not rule.valid_min <= self.value <= rule.valid_max:
            raise ValueError(f"{self.sensor} value {self.value} is outside [{rule.valid_min:g}, {rule.valid_max:g}]")
        return self


class AlertEvent(BaseModel):
    """Published to ``iot-alerts`` (Kafka key: device id). Consumers drop repeats of ``dedup_key``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dedup_key: str
    kind: Literal["raised", "cleared"]
    device_id: str
    sensor: Sensor
    value: float
    unit: str
    rule: str
    severity: Literal["warning", "critical"]
    ts: AwareDatetime
    source_message_id: str

    @staticmethod
    def make_dedup_key(device_id: str, sensor: str, kind: str, ts_iso: str) -> str:
        """Same transition of the same reading -> same key, whichever run or retry publishes it."""
        digest = hashlib.sha256(f"{device_id}|{sensor}|{kind}|{ts_iso}".encode()).hexdigest()[:32]
        return f"{device_id}:{sensor}:{kind}:{digest}"
