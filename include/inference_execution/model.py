"""The model call, pluggable: the packaged scikit-learn model (default) or a remote inference endpoint.

Both answer a whole batch in one call, so a task loads the model once and answers every request of its run.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from include.inference_execution.schemas import FEATURES, MachineFeatures

MODEL_DIR = Path(__file__).resolve().parent / "models" / "failure_classifier"
DEFAULT_MODEL_VERSION = "v1"
DECISION_THRESHOLD = 0.5


class Predictor(Protocol):
    version: str

    def predict_proba(self, rows: Sequence[MachineFeatures]) -> list[float]:
        """Probability of failure for each row, in order (a value that is not one is dead-lettered)."""
        ...


class ModelAnswerError(RuntimeError):
    """The model or its endpoint answered a batch with something unusable: a system fault, the task retries."""


def as_probability(value: object) -> float | None:
    """``value`` as a float if it is a finite number in [0, 1] (not a bool, not a string), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    p = float(value)
    return p if math.isfinite(p) and 0.0 <= p <= 1.0 else None


def check_answer(answer: object, rows: int) -> list[object]:
    """The model's answer for ``rows`` rows: a list of one value per row, else ``ModelAnswerError``.

    The values themselves are checked one by one (``as_probability``): an invalid one costs only its request.
    """
    if not isinstance(answer, list):
        raise ModelAnswerError(
            f"model answered {type(answer).__name__} {answer!r:.200} for {rows} rows, expected a list")
    if len(answer) != rows:
        raise ModelAnswerError(f"model answered {len(answer)} probabilities for {rows} rows")
    return answer


def label_for(probability: float) -> str:
    return "failure" if probability >= DECISION_THRESHOLD else "ok"


@dataclass
class LocalModelPredictor:
    """The versioned scikit-learn artifact in ``models/`` beside this module; checked against its recorded SHA-256."""

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
    A reply of another shape raises ``ModelAnswerError``; a value that is not a probability is returned as it is,
    for the pipeline to dead-letter its request.
    """

    post_json: Callable[[dict[str, Any]], dict[str, Any]]
    version: str = "remote"

    def predict_proba(self, rows: Sequence[MachineFeatures]) -> list[float]:
        if not rows:
            return []
        reply = self.post_json({"instances": [r.model_dump() for r in rows]})
        if not isinstance(reply, dict):
            raise ModelAnswerError(f"endpoint answered {type(reply).__name__} {reply!r:.200}, expected a JSON object")
        probabilities = check_answer(reply.get("probabilities"), len(rows))
        version = reply.get("model_version", self.version)
        if not isinstance(version, str) or not 0 < len(version) <= 64:
            raise ModelAnswerError(f"endpoint answered model_version {version!r:.100}: expected 1 to 64 characters")
        self.version = version
        checked = [as_probability(p) for p in probabilities]
        return [p if c is None else c for p, c in zip(probabilities, checked, strict=True)]  # type: ignore[misc]
