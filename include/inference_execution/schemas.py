"""Messages of the inference pipeline: requests on ``inference-requests``, replies on ``inference-replies``."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

FEATURES = ("temperature_c", "vibration_mm_s", "pressure_kpa", "rpm")


class MachineFeatures(BaseModel):
    """Telemetry summary of one machine: the model's input."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    temperature_c: Annotated[float, Field(ge=-60, le=200, allow_inf_nan=False)]
    vibration_mm_s: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
    pressure_kpa: Annotated[float, Field(ge=0, le=500, allow_inf_nan=False)]
    rpm: Annotated[float, Field(ge=0, le=20_000, allow_inf_nan=False)]

    def vector(self) -> list[float]:
        return [float(getattr(self, f)) for f in FEATURES]

    def fingerprint(self) -> str:
        """Identity of the input: the same request_id must always come with the same features."""
        return hashlib.sha256(json.dumps(self.vector()).encode()).hexdigest()


class InferenceRequest(BaseModel):
    """Will this machine fail soon? Example::

        {"request_id": "req-000123", "submitted_at": "2026-11-24T08:00:00Z",
         "features": {"temperature_c": 78.0, "vibration_mm_s": 11.2, "pressure_kpa": 101.0, "rpm": 3200}}
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    request_id: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]
    submitted_at: AwareDatetime
    features: MachineFeatures


class InferenceReply(BaseModel):
    """One reply per request; ``correlation_id`` is the request's ``request_id`` (clients drop repeats)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    correlation_id: str
    status: Literal["ok"] = "ok"
    label: Literal["failure", "ok"]
    probability: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
    model_version: str
    predicted_at: AwareDatetime
