from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from event_streams.pipelines import db
from event_streams.pipelines.messages import Envelope
from include.inference_execution import tables as inference_tables
from include.inference_execution import train
from include.inference_execution.model import (
    MODEL_DIR,
    HttpEndpointPredictor,
    LocalModelPredictor,
    ModelAnswerError,
)
from include.inference_execution.pipeline import answer_requests
from include.inference_execution.schemas import MachineFeatures

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
        rows = conn.execute(select(inference_tables.predictions.c.request_id, inference_tables.predictions.c.model_version)).all()
    assert sorted(rows) == [("req-0", "failure_classifier/v1"), ("req-1", "failure_classifier/v1"),
                            ("req-3", "failure_classifier/v1")]


def test_a_redelivered_request_is_neither_predicted_nor_replied_to_again(engine: Engine) -> None:
    first, again = [], []
    answer_requests([request(0, HOT)], engine, CountingPredictor(), first.extend)
    predictor = CountingPredictor()
    out = answer_requests([request(0, HOT)], engine, predictor, again.extend)
    assert predictor.calls == [] and out.reused == 1 and out.already_replied == 1
    assert len(first) == 1 and again == [] and out.message_ids == ["msg-0"]  # answered: its message is deleted


def test_a_request_whose_reply_was_never_sent_gets_the_stored_answer(engine: Engine) -> None:
    """The run died after storing the prediction, before the reply: the redelivery sends the stored answer."""
    def dies(replies: list) -> None:
        raise ConnectionError("reply queue unreachable")

    with pytest.raises(ConnectionError):
        answer_requests([request(0, HOT)], engine, CountingPredictor(), dies)
    again: list = []
    predictor = CountingPredictor()
    out = answer_requests([request(0, HOT)], engine, predictor, again.extend)
    assert predictor.calls == [] and out.reused == 1 and out.already_replied == 0
    assert [r.correlation_id for r in again] == ["req-0"] and again[0].label == "failure"
    with engine.connect() as conn:
        assert conn.execute(select(inference_tables.predictions.c.replied_at)).scalar_one() is not None


def test_a_partial_reply_send_resends_only_the_replies_that_were_not_sent(engine: Engine) -> None:
    """SQS took the first batch of replies and failed on the second: the retry sends only the second one's."""
    from event_streams.sqs import SendFailed

    batch = [request(i, HOT if i % 2 else COOL) for i in range(15)]
    first: list = []

    def fails_after_ten(replies: list) -> None:
        first.extend(replies[:10])
        raise SendFailed("SQS failed to take 5 message(s)", [r.correlation_id for r in replies[:10]])

    with pytest.raises(SendFailed):
        answer_requests(batch, engine, CountingPredictor(), fails_after_ten)
    again: list = []
    out = answer_requests(batch, engine, CountingPredictor(), again.extend)
    assert sorted(r.correlation_id for r in first + again) == sorted(f"req-{i}" for i in range(15))  # each once
    assert {r.correlation_id for r in again} == {f"req-{i}" for i in range(10, 15)}
    assert (out.replies, out.already_replied) == (5, 10)


def test_an_events_db_of_an_older_version_gets_the_new_nullable_column(tmp_path) -> None:
    from sqlalchemy import create_engine, inspect, text

    from event_streams.pipelines import db

    old = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with old.begin() as conn:
        conn.execute(text("CREATE TABLE inference_predictions (request_id VARCHAR(128) PRIMARY KEY,"
                          " message_id VARCHAR(256) NOT NULL, label VARCHAR(32) NOT NULL, probability FLOAT NOT NULL,"
                          " model_version VARCHAR(64) NOT NULL, predicted_at TIMESTAMP NOT NULL,"
                          " submitted_at TIMESTAMP, features_sha256 VARCHAR(64))"))
    db.ensure_schema(old)
    assert "replied_at" in {c["name"] for c in inspect(old).get_columns("inference_predictions")}
    assert db.add_missing_nullable_columns(old) == []  # idempotent


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
    with pytest.raises(ModelAnswerError, match="1 probabilities for 2 rows"):
        HttpEndpointPredictor(post_json=lambda body: {"probabilities": [0.5]}).predict_proba(rows)


def test_a_request_id_reused_with_other_features_is_dead_lettered(engine: Engine) -> None:
    sent: list = []
    answer_requests([request(0, HOT, "req-7")], engine, CountingPredictor(), sent.extend)
    # later: the same id, other features (a producer bug); and the same id, same features (a redelivery)
    out = answer_requests([request(1, COOL, "req-7"), request(2, HOT, "req-7")], engine, CountingPredictor(), sent.extend)
    assert [d["message_id"] for d in out.dead_letters] == ["msg-1"]
    assert "duplicate request_id req-7: already used with different features" in out.dead_letters[0]["reason"]
    assert [r.correlation_id for r in sent] == ["req-7"] and out.already_replied == 1  # the redelivery: no 2nd reply
    # within one batch the first message wins
    out = answer_requests([request(3, HOT, "req-8"), request(4, COOL, "req-8")], engine, CountingPredictor(), sent.extend)
    assert [d["message_id"] for d in out.dead_letters] == ["msg-4"]


# --- model answers are validated before they are stored -----------------------------------------------------------
class StubPredictor:
    """Answers with the given values, in order (whatever they are); records the batch sizes."""

    def __init__(self, answer, version: str = "stub/1", before=None) -> None:
        self.answer, self.version, self.before, self.calls = answer, version, before, []

    def predict_proba(self, rows):
        self.calls.append(len(rows))
        if self.before is not None:
            self.before(rows)
        return self.answer(rows) if callable(self.answer) else list(self.answer)


def stored_predictions(engine: Engine) -> dict[str, tuple]:
    t = inference_tables.predictions
    with engine.connect() as conn:
        return {r[0]: tuple(r[1:]) for r in conn.execute(select(t.c.request_id, t.c.probability, t.c.features_sha256))}


INVALID = [True, "0.5", float("nan"), float("inf"), 1.5, -0.1, None, [0.5]]


def test_the_endpoint_passes_invalid_values_through_and_refuses_a_wrong_shape() -> None:
    rows = [MachineFeatures(**HOT)] * len(INVALID) + [MachineFeatures(**COOL)] * 2
    answer = [*INVALID, 0, 1]
    out = HttpEndpointPredictor(post_json=lambda body: {"probabilities": answer}).predict_proba(rows)
    assert out[-2:] == [0.0, 1.0] and all(type(p) is float for p in out[-2:])
    assert [repr(p) for p in out[:-2]] == [repr(p) for p in INVALID]  # as they came: the pipeline dead-letters them
    for reply, match in [
        ({"probabilities": {"0": 0.5}}, "model answered dict .* expected a list"),
        ({"probabilities": "0.5,0.5"}, "model answered str"),
        ({}, "model answered NoneType"),
        ({"probabilities": [0.5, 0.5, 0.5]}, "3 probabilities for 2 rows"),
        ([0.5, 0.5], "endpoint answered list"),
        ({"probabilities": [0.5, 0.5], "model_version": 7}, "model_version 7"),
        ({"probabilities": [0.5, 0.5], "model_version": "x" * 65}, "1 to 64 characters"),
    ]:
        with pytest.raises(ModelAnswerError, match=match):
            HttpEndpointPredictor(post_json=lambda body, reply=reply: reply).predict_proba(rows[-2:])


def test_a_value_that_is_not_a_probability_dead_letters_only_its_request(engine: Engine) -> None:
    batch = [request(i, COOL) for i in range(len(INVALID) + 2)]
    sent: list = []
    out = answer_requests(batch, engine, StubPredictor([0.25, *INVALID, 0.75]), sent.extend)
    valid = {"req-0": 0.25, f"req-{len(INVALID) + 1}": 0.75}
    assert {r.correlation_id: r.probability for r in sent} == valid
    assert {rid: p for rid, (p, _) in stored_predictions(engine).items()} == valid  # nothing invalid is stored
    assert [d["message_id"] for d in out.dead_letters] == [f"msg-{i}" for i in range(1, len(INVALID) + 1)]
    assert out.dead_letters[0]["reason"] == "model answered True for request req-1: not a probability in [0, 1]"
    assert out.dead_letters[1]["reason"] == "model answered '0.5' for request req-2: not a probability in [0, 1]"
    assert out.dead_letters[2]["reason"] == "model answered nan for request req-3: not a probability in [0, 1]"
    assert out.dead_letters[4]["reason"] == "model answered 1.5 for request req-5: not a probability in [0, 1]"
    assert (out.requests, out.predicted, out.replies) == (2, 2, 2)
    with engine.connect() as conn:
        assert len(conn.execute(select(db.dead_letters)).all()) == len(INVALID)
    # the same request again (redelivered) is predicted anew: it was never stored
    sent.clear()
    out = answer_requests([batch[1]], engine, StubPredictor([0.5]), sent.extend)
    assert [(r.correlation_id, r.probability) for r in sent] == [("req-1", 0.5)] and out.dead_letters == []


def test_a_request_and_its_redelivery_in_one_batch_share_the_dead_letter_of_an_invalid_answer(engine: Engine) -> None:
    batch = [request(0, HOT, "req-a"), request(1, HOT, "req-a"), request(2, COOL, "req-a")]
    sent: list = []
    out = answer_requests(batch, engine, StubPredictor([float("inf")]), sent.extend)
    assert sent == [] and stored_predictions(engine) == {}
    reasons = {d["message_id"]: d["reason"] for d in out.dead_letters}
    assert reasons == {"msg-0": "model answered inf for request req-a: not a probability in [0, 1]",
                       "msg-1": "model answered inf for request req-a: not a probability in [0, 1]",
                       "msg-2": "duplicate request_id req-a: already used with different features"}


@pytest.mark.parametrize("answer", [[0.5], [0.5, 0.5, 0.5], (0.5, 0.5), None], ids=["short", "long", "tuple", "none"])
def test_a_wrong_answer_shape_from_any_predictor_fails_the_task_and_stores_nothing(engine: Engine, answer) -> None:
    sent: list = []
    with pytest.raises(ModelAnswerError):
        answer_requests([request(0, HOT), request(1, COOL)], engine, StubPredictor(lambda rows: answer), sent.extend)
    assert sent == [] and stored_predictions(engine) == {}
    with engine.connect() as conn:
        assert conn.execute(select(db.dead_letters)).first() is None


# --- per-message isolation -------------------------------------------------------------------------------------------
def test_content_errors_of_one_request_dead_letter_only_that_request(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    far = Envelope(source="sqs", message_id="msg-far", receipt_handle="rh", body=json.dumps(
        {"request_id": "req-far", "submitted_at": "0001-01-01T00:00:00+01:00", "features": HOT}))
    original = MachineFeatures.fingerprint

    def fragile(self):
        if self.rpm == 1234:
            raise OverflowError("math range error")
        return original(self)

    monkeypatch.setattr(MachineFeatures, "fingerprint", fragile)
    sent: list = []
    out = answer_requests([far, request(1, {**COOL, "rpm": 1234}), request(2, COOL)], engine, StubPredictor([0.1]), sent.extend)
    assert [r.correlation_id for r in sent] == ["req-2"] and out.message_ids == ["msg-2"]
    reasons = {d["message_id"]: d["reason"] for d in out.dead_letters}
    assert reasons == {
        "msg-far": "submitted_at 0001-01-01T00:00:00+01:00 is outside the range of representable UTC times",
        "msg-1": "request msg-1: OverflowError: math range error",
    }


def test_submitted_at_is_stored_as_the_same_instant(engine: Engine) -> None:
    env = Envelope(source="sqs", message_id="m", body=json.dumps(
        {"request_id": "r", "submitted_at": "2026-11-24T13:00:00+05:00", "features": HOT}))
    answer_requests([env], engine, StubPredictor([0.9]), lambda replies: None)
    with engine.connect() as conn:
        submitted = conn.execute(select(inference_tables.predictions.c.submitted_at)).scalar_one()
    assert submitted == datetime(2026, 11, 24, 8, 0, tzinfo=timezone.utc) and submitted.utcoffset() == timedelta(0)


# --- request identity holds across concurrent runs -------------------------------------------------------------------
def store_concurrently(engine: Engine, request_id: str, features: dict, probability: float):
    """A ``before`` hook: another run commits its prediction for ``request_id`` while this one is predicting."""

    def hook(rows) -> None:
        with engine.begin() as conn:
            db.insert_ignore(conn, inference_tables.predictions, [{
                "request_id": request_id, "message_id": "other-run", "label": "ok", "probability": probability,
                "model_version": "other/1", "predicted_at": datetime(2026, 11, 24, 9, tzinfo=timezone.utc),
                "features_sha256": MachineFeatures(**features).fingerprint()}])

    return hook


def test_a_concurrent_run_that_stored_other_features_first_wins_and_this_request_is_dead_lettered(engine: Engine) -> None:
    sent: list = []
    predictor = StubPredictor([0.9, 0.2], before=store_concurrently(engine, "req-x", COOL, 0.05))
    out = answer_requests([request(0, HOT, "req-x"), request(1, COOL, "req-y")], engine, predictor, sent.extend)
    assert predictor.calls == [2]  # nothing was stored when this run looked: both predicted
    assert [r.correlation_id for r in sent] == ["req-y"] and out.message_ids == ["msg-1"]
    assert [(d["message_id"], d["reason"]) for d in out.dead_letters] == [
        ("msg-0", "duplicate request_id req-x: already used with different features")]
    assert stored_predictions(engine)["req-x"] == (0.05, MachineFeatures(**COOL).fingerprint())
    with engine.connect() as conn:
        assert conn.execute(select(db.dead_letters.c.message_id)).scalars().all() == ["msg-0"]


def test_a_concurrent_run_that_stored_the_same_request_first_gives_this_run_its_answer(engine: Engine) -> None:
    sent: list = []
    predictor = StubPredictor([0.9], before=store_concurrently(engine, "req-x", HOT, 0.97))
    out = answer_requests([request(0, HOT, "req-x")], engine, predictor, sent.extend)
    assert [(r.correlation_id, r.probability, r.model_version) for r in sent] == [("req-x", 0.97, "other/1")]
    assert (out.predicted, out.reused, out.dead_letters) == (0, 1, [])


def test_two_threads_reusing_a_request_id_with_other_features_give_one_answer_and_one_dead_letter(tmp_path: Path) -> None:
    import threading

    from sqlalchemy import create_engine

    engine = db.configure_sqlite(create_engine(f"sqlite:///{tmp_path / 'race.db'}"))
    db.ensure_schema(engine)
    both_predicting = threading.Barrier(2, timeout=10)  # both runs have looked and found nothing stored
    results: dict[str, object] = {}

    def run(name: str, features: dict, probability: float) -> None:
        sent: list = []
        predictor = StubPredictor([probability], version=name, before=lambda rows: both_predicting.wait())
        env = Envelope(source="sqs", message_id=f"msg-{name}", receipt_handle="rh", body=json.dumps(
            {"request_id": "req-race", "submitted_at": "2026-11-24T08:00:00Z", "features": features}))
        try:
            results[name] = (answer_requests([env], engine, predictor, sent.extend), sent)
        except Exception as exc:  # surfaced by the assertions below
            results[name] = exc

    threads = [threading.Thread(target=run, args=("a", HOT, 0.9)), threading.Thread(target=run, args=("b", COOL, 0.1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(isinstance(r, tuple) for r in results.values()) and len(results) == 2, results
    [(winner, stored_row)] = stored_predictions(engine).items()
    with engine.connect() as conn:
        row = conn.execute(select(inference_tables.predictions.c.model_version)).scalar_one()
    loser = "b" if row == "a" else "a"
    (win_out, win_sent), (lose_out, lose_sent) = results[row], results[loser]
    assert winner == "req-race"
    assert [(r.correlation_id, r.model_version) for r in win_sent] == [("req-race", row)] and win_out.dead_letters == []
    assert lose_sent == [] and lose_out.message_ids == []
    assert [(d["message_id"], d["reason"]) for d in lose_out.dead_letters] == [
        (f"msg-{loser}", "duplicate request_id req-race: already used with different features")]
    with engine.connect() as conn:
        assert conn.execute(select(db.dead_letters.c.message_id)).scalars().all() == [f"msg-{loser}"]


def test_the_model_is_loaded_once_per_process_and_a_failed_warm_up_is_only_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from include.inference_execution import clients
    from include.inference_execution.model import LocalModelPredictor

    clients.local_model.cache_clear()
    loads: list[int] = []
    real_load = LocalModelPredictor.load.__func__  # type: ignore[attr-defined]

    def counting_load(cls, *args, **kwargs):  # type: ignore[no-untyped-def]
        loads.append(1)
        return real_load(cls, *args, **kwargs)

    monkeypatch.setattr(LocalModelPredictor, "load", classmethod(counting_load))
    clients.warm_up()
    assert clients.predictor("local") is clients.predictor("local") and len(loads) == 1

    clients.local_model.cache_clear()
    monkeypatch.setattr(LocalModelPredictor, "load", classmethod(lambda cls: (_ for _ in ()).throw(OSError("gone"))))
    clients.warm_up()  # the scheduler keeps running; a task then loads the model itself (and fails visibly)
    assert "pre-loading the inference model failed" in caplog.text
    with pytest.raises(OSError):
        clients.predictor("local")
    clients.local_model.cache_clear()
