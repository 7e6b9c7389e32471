"""Train the failure classifier on synthetic telemetry the repo generates, and write a versioned artifact.

    python -m include.inference_execution.train --version v1

The data is drawn from a documented generative model (``failure_probability``), seeded, so the same command
gives the same data and the same metrics. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from include.inference_execution.model import MODEL_DIR
from include.inference_execution.schemas import FEATURES

SEED = 20261124


def failure_probability(x: np.ndarray) -> np.ndarray:
    """Ground truth: hot, shaking, low-pressure, fast machines fail more (columns in ``FEATURES`` order)."""
    temperature, vibration, pressure, rpm = x.T
    z = 0.09 * (temperature - 75) + 0.45 * (vibration - 10) - 0.06 * (pressure - 95) + 0.0006 * (rpm - 3500)
    return 1.0 / (1.0 + np.exp(-z))


def make_dataset(n: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.column_stack(
        [
            rng.normal(65, 12, n).clip(-60, 200),  # temperature_c
            rng.gamma(4.0, 2.0, n).clip(0, 100),  # vibration_mm_s
            rng.normal(100, 6, n).clip(0, 500),  # pressure_kpa
            rng.normal(3000, 700, n).clip(0, 20_000),  # rpm
        ]
    )
    y = (rng.random(n) < failure_probability(x)).astype(int)
    return x, y


def train(version: str, out_dir: Path = MODEL_DIR, n: int = 20_000) -> dict[str, object]:
    import joblib
    import sklearn
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = make_dataset(n)
    split = int(n * 0.8)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(x[:split], y[:split])
    proba = model.predict_proba(x[split:])[:, 1]
    folder = out_dir / version
    folder.mkdir(parents=True, exist_ok=True)
    artifact = folder / "model.joblib"
    joblib.dump(model, artifact)
    meta = {
        "name": "failure_classifier",
        "version": version,
        "artifact": artifact.name,
        "sha256": hashlib.sha256(artifact.read_bytes()).hexdigest(),
        "features": list(FEATURES),
        "estimator": "StandardScaler + LogisticRegression",
        "scikit_learn": sklearn.__version__,
        "seed": SEED,
        "train_rows": split,
        "test_rows": n - split,
        "metrics": {
            "accuracy": round(float(accuracy_score(y[split:], proba >= 0.5)), 4),
            "roc_auc": round(float(roc_auc_score(y[split:], proba)), 4),
        },
    }
    (folder / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="v1")
    parser.add_argument("--out-dir", type=Path, default=MODEL_DIR)
    args = parser.parse_args()
    print(json.dumps(train(args.version, args.out_dir), indent=2))


if __name__ == "__main__":
    main()
