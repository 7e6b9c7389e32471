from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from include.event_pipelines import db
from include.event_pipelines.inference import train
from include.event_pipelines.inference.model import MODEL_DIR, HttpEndpointPredictor, LocalModelPredictor
from include.event_pipelines.inference.pipeline import answer_requests
from include.event_pipelines.inference.schemas import MachineFeatures
from include.event_pipelines.messages import Envelope

HOT = {"temperature_c": 95.0, "vibration_mm_s": 18.0, "pressure_kpa": 85.0, "rpm": 4200}
COOL = {"temperature_c": 55.0, "vibration_mm_s": 3.0, "pressure_kpa": 104.0, "rpm": 2500}


def request(i: int, features: dict, request_id: str | None = None) -> Envelope:
    body = {"request_id": request_id or f"req-{i}", "submitted_at": "2026-11-24T08:00:00Z", "features": features}
    return Envelope(source="sqs", message_id=f"msg-{i}", body=json.dumps(body), receipt_handle=f"rh-{i}")


class CountingPredictor:
    def __init__(self) -> None:
        self.inner = LocalModelPredictor.load()
        self.version = self.inner.version
        self.calls: list[int] = []

    def predict_proba(self, rows):
        self.calls.append(len(rows))
        return self.inner.predict_proba(rows)


def test_the_packaged_model_loads_verified_and_answers_sensibly() -> None:
    model = LocalModelPredictor.load()
    hot, cool = model.predict_proba([MachineFeatures(**HOT), MachineFeatures(**COOL)])
    assert hot > 0.9 and cool < 0.1
    meta = json.loads((MODEL_DIR / "v1" / "metadata.json").read_text())
    assert meta["metrics"]["roc_auc"] >= 0.85 and meta["metrics"]["accuracy"] >= 0.8


def test_a_tampered_artifact_is_refused(tmp_path: Path) -> None:
    shutil.copytree(MODEL_DIR / "v1", tmp_path / "v1")
    (tmp_path / "v1" / "model.joblib").write_bytes(b"not the model")
    with pytest.raises(ValueError, match="sha256"):
        LocalModelPredictor.load("v1", model_dir=tmp_path)


def test_training_is_reproducible(tmp_path: Path) -> None:
    meta = train.train("v1", out_dir=tmp_path)
    shipped = json.loads((MODEL_DIR / "v1" / "metadata.json").read_text())
    assert meta["metrics"] == shipped["metrics"] and meta["features"] == shipped["features"]


def test_every_request_gets_one_reply_with_its_correlation_id_from_one_model_call(engine: Engine) -> None:
    predictor, sent = CountingPredictor(), []
    batch = [request(0, HOT), request(1, COOL), request(2, HOT, request_id="req-0"), request(3, COOL)]
    out = answer_requests(batch, engine, predictor, sent.extend)
    assert predictor.calls == [3], "the model is called once for the whole batch, once per distinct request"
    assert sorted(r.correlation_id for r in sent) == ["req-0", "req-1", "req-3"]
    labels = {r.correlation_id: r.label for r in sent}
    assert labels == {"req-0": "failure", "req-1": "ok", "req-3": "ok"}
    assert (out.requests, out.predicted, out.reused, out.replies) == (3, 3, 0, 3)
    with engine.connect() as conn:
        rows = conn.execute(select(db.predictions.c.request_id, db.predictions.c.model_version)).all()
    assert sorted(rows) == [("req-0", "failure_classifier/v1"), ("req-1", "failure_classifier/v1"),
                            ("req-3", "failure_classifier/v1")]


def test_a_redelivered_request_gets_the_stored_answer_not_a_new_prediction(engine: Engine) -> None:
    first, again = [], []
    answer_requests([request(0, HOT)], engine, CountingPredictor(), first.extend)
    predictor = CountingPredictor()
    out = answer_requests([request(0, HOT)], engine, predictor, again.extend)
    assert predictor.calls == [0] and out.reused == 1
    assert [r.model_dump() for r in again] == [r.model_dump() for r in first]


def test_bad_requests_are_dead_lettered_and_the_rest_answered(engine: Engine) -> None:
    bad_range = request(1, {**COOL, "rpm": -5})
    bad_json = Envelope(source="sqs", message_id="msg-2", body="{", receipt_handle="rh")
    sent: list = []
    out = answer_requests([request(0, COOL), bad_range, bad_json], engine, CountingPredictor(), sent.extend)
    assert [r.correlation_id for r in sent] == ["req-0"]
    assert [d["message_id"] for d in out.dead_letters] == ["msg-1", "msg-2"]
    assert "features.rpm: Input should be greater than or equal to 0" in out.dead_letters[0]["reason"]


def test_the_remote_endpoint_backend_is_checked() -> None:
    rows = [MachineFeatures(**HOT), MachineFeatures(**COOL)]
    seen: list[dict] = []

    def endpoint(body: dict) -> dict:
        seen.append(body)
        return {"model_version": "remote-7", "probabilities": [0.8, 0.1]}

    predictor = HttpEndpointPredictor(post_json=endpoint)
    assert predictor.predict_proba(rows) == [0.8, 0.1] and predictor.version == "remote-7"
    assert seen[0]["instances"][0] == HOT
    with pytest.raises(ValueError, match="1 probabilities for 2 rows"):
        HttpEndpointPredictor(post_json=lambda body: {"probabilities": [0.5]}).predict_proba(rows)


def test_a_request_id_reused_with_other_features_is_dead_lettered(engine: Engine) -> None:
    sent: list = []
    answer_requests([request(0, HOT, "req-7")], engine, CountingPredictor(), sent.extend)
    # later: the same id, other features (a producer bug); and the same id, same features (a redelivery)
    out = answer_requests([request(1, COOL, "req-7"), request(2, HOT, "req-7")], engine, CountingPredictor(), sent.extend)
    assert [d["message_id"] for d in out.dead_letters] == ["msg-1"]
    assert "duplicate request_id req-7: already used with different features" in out.dead_letters[0]["reason"]
    assert [r.correlation_id for r in sent] == ["req-7", "req-7"] and sent[0] == sent[1]
    # within one batch the first message wins
    out = answer_requests([request(3, HOT, "req-8"), request(4, COOL, "req-8")], engine, CountingPredictor(), sent.extend)
    assert [d["message_id"] for d in out.dead_letters] == ["msg-4"]
