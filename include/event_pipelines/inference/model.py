"""The model call, pluggable: the packaged scikit-learn model (default) or a remote inference endpoint.

Both answer a whole batch in one call, so a task loads the model once and answers every request of its run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from include.event_pipelines.inference.schemas import FEATURES, MachineFeatures

MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "failure_classifier"
DEFAULT_MODEL_VERSION = "v1"
DECISION_THRESHOLD = 0.5


class Predictor(Protocol):
    version: str

    def predict_proba(self, rows: Sequence[MachineFeatures]) -> list[float]:
        """Probability of failure for each row, in order."""
        ...


def label_for(probability: float) -> str:
    return "failure" if probability >= DECISION_THRESHOLD else "ok"


@dataclass
class LocalModelPredictor:
    """The versioned scikit-learn artifact shipped in ``include/models``; checked against its recorded SHA-256."""

    version: str
    estimator: Any

    @classmethod
    def load(cls, version: str = DEFAULT_MODEL_VERSION, model_dir: Path = MODEL_DIR) -> LocalModelPredictor:
        import joblib  # scikit-learn's persistence; imported here to keep DAG parsing light

        folder = model_dir / version
        meta = json.loads((folder / "metadata.json").read_text())
        artifact = folder / meta["artifact"]
        digest = hashlib.sha256(artifact.read_bytes()).hexdigest()
        if digest != meta["sha256"]:
            raise ValueError(f"model artifact {artifact} has sha256 {digest}, metadata says {meta['sha256']}")
        if list(meta["features"]) != list(FEATURES):
            raise ValueError(f"model features {meta['features']} differ from the request schema {FEATURES}")
        return cls(version=f"failure_classifier/{version}", estimator=joblib.load(artifact))

    def predict_proba(self, rows: Sequence[MachineFeatures]) -> list[float]:
        if not rows:
            return []
        import numpy as np

        matrix = np.asarray([r.vector() for r in rows], dtype=float)
        return [float(p) for p in self.estimator.predict_proba(matrix)[:, 1]]


@dataclass
class HttpEndpointPredictor:
    """A remote endpoint (the GenAI / model-server case). ``post_json`` sends one JSON body and returns the reply.

    Request: ``{"instances": [{"temperature_c": ..., ...}, ...]}``;
    reply: ``{"model_version": "...", "probabilities": [0.1, ...]}`` with one probability per instance.
    """

    post_json: Callable[[dict[str, Any]], dict[str, Any]]
    version: str = "remote"

    def predict_proba(self, rows: Sequence[MachineFeatures]) -> list[float]:
        if not rows:
            return []
        reply = self.post_json({"instances": [r.model_dump() for r in rows]})
        probabilities = reply.get("probabilities")
        if not isinstance(probabilities, list) or len(probabilities) != len(rows):
            raise ValueError(f"endpoint returned {len(probabilities or [])} probabilities for {len(rows)} rows")
        self.version = str(reply.get("model_version", self.version))
        return [float(p) for p in probabilities]
