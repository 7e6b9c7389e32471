from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import urlparse

import pytest
from sqlalchemy import Engine, func, select

from event_streams.pipelines import db
from event_streams.pipelines.messages import Envelope
from include.data_delivery_etl import pipeline
from include.data_delivery_etl import settings as etl_settings
from include.data_delivery_etl import tables as etl_tables
from include.data_delivery_etl.landing import quarantine_folder_name
from include.data_delivery_etl.pipeline import render_csv

ROWS = [
    {"order_id": "o-1", "customer_id": "c-1", "amount": "12.50", "currency": "eur", "ordered_at": "2026-11-24T08:00:00+01:00"},
    {"order_id": "o-2", "customer_id": "c-2", "amount": "0.99", "currency": "USD", "ordered_at": "2026-11-24T07:30:00Z"},
    {"order_id": "o-3", "customer_id": "c-1", "amount": "100", "currency": "GBP", "ordered_at": "2026-11-24T09:00:00Z"},
]


def resolve(uri: str) -> Path:
    return Path(urlparse(uri).path)


def process_delivery(env: Envelope, engine: Engine, resolve, quarantine_root: Path, **kw):
    """The pipeline's ``process_delivery`` with the test's landing folder as the only landing root."""
    kw.setdefault("landing_roots", [(quarantine_root.parent / "landing").as_uri()])
    return pipeline.process_delivery(env, engine, resolve, quarantine_root, **kw)


def deliver(tmp_path: Path, name: str, data: bytes, *, delivery_id: str = "d-1", sha: str | None = None,
            rows: int = 3, message_id: str = "m-1") -> tuple[Envelope, Path]:
    landing = tmp_path / "landing"
    landing.mkdir(exist_ok=True)
    path = landing / name
    path.write_bytes(data)
    notice = {"delivery_id": delivery_id, "uri": path.as_uri(), "sha256": sha or hashlib.sha256(data).hexdigest(),
              "row_count": rows, "producer": "shop-export", "delivered_at": "2026-11-24T08:05:00Z"}
    return Envelope(source="sqs", message_id=message_id, body=json.dumps(notice), receipt_handle="rh"), path


def table(engine: Engine, t) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(t)).mappings()]


def count(engine: Engine, t) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(t)).scalar_one()


def test_a_delivered_file_loads_exactly_its_rows_transformed(engine: Engine, tmp_path: Path) -> None:
    env, _ = deliver(tmp_path, "orders-1.csv", render_csv(ROWS))
    outcome = process_delivery(env, engine, resolve, tmp_path / "quarantine")
    assert (outcome.status, outcome.rows) == ("loaded", 3)
    orders = {r["order_id"]: r for r in table(engine, etl_tables.orders)}
    assert set(orders) == {"o-1", "o-2", "o-3"}
    assert (orders["o-1"]["amount_cents"], orders["o-1"]["currency"]) == (1250, "EUR")
    assert db.as_utc(orders["o-1"]["ordered_at"]).isoformat() == "2026-11-24T07:00:00+00:00"
    assert orders["o-3"]["amount_cents"] == 10000
    ledger = table(engine, etl_tables.etl_deliveries)
    assert [(r["delivery_id"], r["rows_loaded"], r["message_id"]) for r in ledger] == [("d-1", 3, "m-1")]


def test_the_same_file_delivered_twice_changes_nothing(engine: Engine, tmp_path: Path) -> None:
    data = render_csv(ROWS)
    first, _ = deliver(tmp_path, "a.csv", data)
    assert process_delivery(first, engine, resolve, tmp_path / "q").status == "loaded"
    before = table(engine, etl_tables.orders)
    # the same message redelivered, and the same content announced again under another message and name
    again, _ = deliver(tmp_path, "b.csv", data, delivery_id="d-2", message_id="m-2")
    assert process_delivery(first, engine, resolve, tmp_path / "q").status == "duplicate"
    assert process_delivery(again, engine, resolve, tmp_path / "q").status == "duplicate"
    assert table(engine, etl_tables.orders) == before and count(engine, etl_tables.etl_deliveries) == 1


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda data: data.replace(b"12.50", b"-1.00"), "line 2: amount: Input should be greater than or equal to 0"),
        (lambda data: data.replace(b"2026-11-24T07:30:00Z", b"yesterday"), "line 3: ordered_at"),
        (lambda data: data.replace(b"order_id,", b"id,"), "header is"),
        (lambda data: data + b"o-4,c-9,1.00,EUR\n", "line 5: 4 fields, expected 5"),
        (lambda data: data.replace(b"o-2", b"o-1"), "repeats an order_id"),
    ],
)
def test_a_bad_file_is_quarantined_with_its_reason_and_nothing_is_loaded(engine, tmp_path, mutate, reason) -> None:
    data = mutate(render_csv(ROWS))
    env, path = deliver(tmp_path, "bad.csv", data)  # a checksum mismatch is not quarantined: test_landing.py
    outcome = process_delivery(env, engine, resolve, tmp_path / "quarantine")
    assert outcome.status == "quarantined" and reason in outcome.reason
    assert count(engine, etl_tables.orders) == 0 and count(engine, etl_tables.etl_deliveries) == 0
    [q] = table(engine, etl_tables.etl_quarantine)
    assert (q["delivery_id"], q["message_id"]) == ("d-1", "m-1") and reason in q["reason"]
    folder = tmp_path / "quarantine" / quarantine_folder_name("d-1")
    assert not path.exists() and (folder / "bad.csv").read_bytes() == data
    assert reason in json.loads((folder / "bad.csv.reason.json").read_text())["reason"]
    assert [p.name for p in (tmp_path / "quarantine").iterdir()] == [folder.name]


def test_row_count_must_match_the_notice(engine: Engine, tmp_path: Path) -> None:
    env, _ = deliver(tmp_path, "short.csv", render_csv(ROWS), rows=4)
    outcome = process_delivery(env, engine, resolve, tmp_path / "q")
    assert outcome.status == "quarantined" and outcome.reason == "file has 3 data rows, message says 4"


def test_a_missing_file_is_quarantined(engine: Engine, tmp_path: Path) -> None:
    env, path = deliver(tmp_path, "gone.csv", render_csv(ROWS))
    path.unlink()
    outcome = process_delivery(env, engine, resolve, tmp_path / "q")
    assert outcome.status == "quarantined" and "does not exist" in outcome.reason
    assert table(engine, etl_tables.etl_quarantine)[0]["quarantined_uri"] is None


def test_a_bad_message_is_dead_lettered_with_its_body(engine: Engine, tmp_path: Path) -> None:
    env = Envelope(source="sqs", message_id="m-9", body='{"delivery_id": "d", "uri": "ftp://x"}')
    outcome = process_delivery(env, engine, resolve, tmp_path / "q")
    assert outcome.status == "dead_letter"
    [letter] = table(engine, db.dead_letters)
    assert (letter["pipeline"], letter["message_id"], letter["body"]) == ("data_delivery_etl", "m-9", env.body)
    assert "uri: Value error, URI must start with" in letter["reason"] and "sha256: Field required" in letter["reason"]
    # a replay of the same poison message keeps one dead letter
    process_delivery(env, engine, resolve, tmp_path / "q")
    assert count(engine, db.dead_letters) == 1


def test_a_delivery_id_reused_for_other_content_is_dead_lettered(engine: Engine, tmp_path: Path) -> None:
    first, _ = deliver(tmp_path, "a.csv", render_csv(ROWS))
    assert process_delivery(first, engine, resolve, tmp_path / "q").status == "loaded"
    other, _ = deliver(tmp_path, "b.csv", render_csv(ROWS[:2]), rows=2, message_id="m-2")  # same delivery_id "d-1"
    outcome = process_delivery(other, engine, resolve, tmp_path / "q")
    assert outcome.status == "dead_letter" and outcome.reason.startswith("duplicate delivery_id d-1: already loaded")
    assert outcome.dead_letters() == [{"message_id": "m-2", "reason": outcome.reason}]
    assert count(engine, etl_tables.etl_deliveries) == 1 and count(engine, etl_tables.orders) == 3


# --- hostile input: confinement, file type and size, quarantine paths, content errors ----------------------------
def notice_env(uri: str, data: bytes = b"", *, delivery_id: str = "d-1", message_id: str = "m-1", rows: int = 3,
               delivered_at: str = "2026-11-24T08:05:00Z") -> Envelope:
    notice = {"delivery_id": delivery_id, "uri": uri, "sha256": hashlib.sha256(data).hexdigest(), "row_count": rows,
              "producer": "shop-export", "delivered_at": delivered_at}
    return Envelope(source="sqs", message_id=message_id, body=json.dumps(notice), receipt_handle="rh")


def secret(tmp_path: Path, name: str = "outside") -> Path:
    (tmp_path / name).mkdir(exist_ok=True)
    path = tmp_path / name / "secret.csv"
    path.write_bytes(render_csv(ROWS))
    return path


def assert_untouched(path: Path) -> None:
    assert path.read_bytes() == render_csv(ROWS)


def assert_dead_letter(engine: Engine, outcome, *, contains: str, message_id: str = "m-1") -> None:
    assert outcome.status == "dead_letter", outcome
    assert outcome.reason.startswith(f"message {message_id}: ") and contains in outcome.reason, outcome.reason
    assert [r["message_id"] for r in table(engine, db.dead_letters)] == [message_id]
    assert count(engine, etl_tables.orders) == 0 and count(engine, etl_tables.etl_quarantine) == 0


@pytest.mark.parametrize("where", ["outside", "landing-evil"])
def test_a_uri_outside_the_landing_roots_is_dead_lettered_and_never_touched(engine, tmp_path, where) -> None:
    (tmp_path / "landing").mkdir()
    target = secret(tmp_path, where)
    env = notice_env(target.as_uri(), target.read_bytes())
    outcome = process_delivery(env, engine, resolve, tmp_path / "q")
    assert_dead_letter(engine, outcome, contains=f"uri {target.as_uri()} is outside the landing roots")
    assert_untouched(target)
    assert not (tmp_path / "q").exists()


def test_etc_passwd_is_outside(engine: Engine, tmp_path: Path) -> None:
    outcome = process_delivery(notice_env("file:///etc/passwd"), engine, resolve, tmp_path / "q")
    assert_dead_letter(engine, outcome, contains="uri file:///etc/passwd is outside the landing roots [")


def test_dot_dot_in_the_uri_is_refused(engine: Engine, tmp_path: Path) -> None:
    (tmp_path / "landing").mkdir()
    target = secret(tmp_path)
    for i, uri in enumerate([f"{(tmp_path / 'landing').as_uri()}/../outside/secret.csv",
                             f"{(tmp_path / 'landing').as_uri()}/%2e%2e/outside/secret.csv"]):
        outcome = process_delivery(notice_env(uri, message_id=f"m-{i}"), engine, resolve, tmp_path / "q")
        assert outcome.status == "dead_letter" and f"message m-{i}: uri {uri} has a '..'" in outcome.reason
    assert_untouched(target)


def test_a_symlink_in_the_landing_folder_to_a_file_outside_is_refused(engine: Engine, tmp_path: Path) -> None:
    (tmp_path / "landing").mkdir()
    target = secret(tmp_path)
    link = tmp_path / "landing" / "link.csv"
    link.symlink_to(target)
    outcome = process_delivery(notice_env(link.as_uri(), target.read_bytes()), engine, resolve, tmp_path / "q")
    assert_dead_letter(engine, outcome, contains=f"uri {link.as_uri()} is outside the landing roots")
    assert link.is_symlink()
    assert_untouched(target)


@pytest.mark.parametrize("kind", ["directory", "FIFO", "socket"])
def test_a_file_that_is_not_regular_is_dead_lettered_and_left_alone(engine, tmp_path, kind) -> None:
    import os
    import shutil
    import socket
    import tempfile

    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="etl")) if kind == "socket" else tmp_path  # AF_UNIX path limit
    landing = base / "landing"
    landing.mkdir()
    path = landing / "x.csv"
    sock = None
    if kind == "directory":
        path.mkdir()
    elif kind == "FIFO":
        os.mkfifo(path)
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
    try:
        outcome = process_delivery(notice_env(path.as_uri()), engine, resolve, tmp_path / "q",
                                   landing_roots=[landing.as_uri()])
        assert_dead_letter(engine, outcome, contains=f"uri {path.as_uri()} is not a regular file (it is a {kind})")
        assert path.exists() or path.is_socket()
    finally:
        if sock is not None:
            sock.close()
            shutil.rmtree(base)


def test_dev_zero_is_not_read(engine: Engine, tmp_path: Path) -> None:
    outcome = process_delivery(notice_env("file:///dev/zero"), engine, resolve, tmp_path / "q",
                               landing_roots=["file:///dev"])
    assert_dead_letter(engine, outcome, contains="uri file:///dev/zero is not a regular file (it is a character device)")


def test_an_oversize_file_is_dead_lettered_untouched_before_it_is_read(engine, tmp_path, monkeypatch) -> None:
    env, path = deliver(tmp_path, "big.csv", render_csv(ROWS))
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("an oversize file must not be read"))
    size = path.stat().st_size
    outcome = process_delivery(env, engine, resolve, tmp_path / "q", max_file_bytes=size - 1)
    assert_dead_letter(engine, outcome, contains=f"is {size} bytes, over the {size - 1}-byte limit")
    monkeypatch.undo()
    assert_untouched(path)
    assert process_delivery(env, engine, resolve, tmp_path / "q", max_file_bytes=size).status == "loaded"


@pytest.mark.parametrize(
    ("uri", "roots", "contains"),
    [
        ("s3://bucket/landing/x.csv", ["s3://bucket/landing"], "no storage backend for s3:// is installed"),
        ("gs://bucket/landing/x.csv", ["gs://bucket/landing"], "no storage backend for gs:// is installed"),
        ("az://box/landing/x.csv", ["az://box/landing"], "no storage backend for az:// is installed"),
        ("s3://bucket/landing-evil/x.csv", ["s3://bucket/landing"], "is outside the landing roots"),
        ("s3://other/landing/x.csv", ["s3://bucket/landing"], "is outside the landing roots"),
        ("s3://bucket/landing/../x.csv", ["s3://bucket/landing"], "has a '..'"),
    ],
)
def test_remote_uris_need_a_root_and_an_installed_backend(engine, tmp_path, uri, roots, contains) -> None:
    def never(uri: str) -> Path:
        raise AssertionError("a refused URI must not be resolved")

    outcome = process_delivery(notice_env(uri), engine, never, tmp_path / "q", landing_roots=roots)
    assert_dead_letter(engine, outcome, contains=f"uri {uri}")
    assert contains in outcome.reason


def test_an_unknown_scheme_is_refused(engine: Engine, tmp_path: Path) -> None:
    from include.data_delivery_etl import landing

    outcome = process_delivery(notice_env("ftp://host/landing/x.csv"), engine, resolve, tmp_path / "q")
    assert outcome.status == "dead_letter" and "uri: Value error, URI must start with" in outcome.reason
    with pytest.raises(landing.Refused, match=r"uri foo://b/l/x\.csv: no storage backend for foo:// is installed"):
        landing.locate("foo://b/l/x.csv", ["foo://b/l"])


def test_a_remote_file_is_statted_then_read_with_a_bound(tmp_path: Path) -> None:
    from upath import UPath

    from include.data_delivery_etl import landing

    root = "memory://etl-landing-test/in"
    UPath(f"{root}/ok.csv").write_bytes(b"12345")
    UPath(f"{root}/dir/x").write_bytes(b"x")
    ok = landing.locate(f"{root}/ok.csv", [root])
    assert landing.read_remote(ok, UPath(ok.uri), 5) == b"12345"
    with pytest.raises(landing.Refused, match="is 5 bytes, over the 4-byte limit"):
        landing.read_remote(ok, UPath(ok.uri), 4)
    folder = landing.locate(f"{root}/dir", [root])
    with pytest.raises(landing.Refused, match="is not a regular file"):
        landing.read_remote(folder, UPath(folder.uri), 5)
    gone = landing.locate(f"{root}/gone.csv", [root])
    with pytest.raises(landing.Missing, match="does not exist"):
        landing.read_remote(gone, UPath(gone.uri), 5)
    with pytest.raises(landing.Refused, match="outside"):
        landing.locate("memory://etl-landing-test/input/x.csv", [root])


@pytest.mark.parametrize("delivery_id", ["..", "../x", "a/b", "../../outside/secret.csv", "./.", "..:@/..-"])
def test_a_hostile_delivery_id_quarantines_only_under_the_quarantine_root(engine, tmp_path, delivery_id) -> None:
    target = secret(tmp_path)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    env, path = deliver(tmp_path, "bad.csv", b"not,a,csv\n", delivery_id=delivery_id)
    outcome = process_delivery(env, engine, resolve, tmp_path / "q")
    assert (outcome.status, outcome.delivery_id) == ("quarantined", delivery_id) and "header is" in outcome.reason
    assert_untouched(target)
    assert not path.exists()
    [folder] = (tmp_path / "q").iterdir()
    assert folder.name == quarantine_folder_name(delivery_id) and ".." not in folder.name.split("/")
    assert sorted(p.name for p in folder.iterdir()) == ["bad.csv", "bad.csv.reason.json"]
    after = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if not p.name.startswith("events.db"))
    new = set(after) - set(before) - {"landing", "landing/bad.csv"}
    assert new == {"q", f"q/{folder.name}", f"q/{folder.name}/bad.csv", f"q/{folder.name}/bad.csv.reason.json"}


def test_quarantine_folder_names_are_one_safe_component_and_distinct() -> None:
    ids = ["..", ".", "../x", "a/b", "a_b", "a:b", "x" * 128]
    names = [quarantine_folder_name(i) for i in ids]
    assert len(set(names)) == len(ids)
    assert all("/" not in n and n not in (".", "..") and not n.startswith(".") for n in names)
    assert quarantine_folder_name("d-1").startswith("d-1-") and len(quarantine_folder_name("x" * 128)) == 64 + 13


@pytest.mark.parametrize(
    ("ordered_at", "contains"),
    [
        ("0001-01-01T00:00:00+01:00", "line 2: ordered_at: Value error, 0001-01-01T00:00:00+01:00 is outside the range of representable UTC times"),
        ("9999-12-31T23:59:59-01:00", "line 2: ordered_at: Value error, 9999-12-31T23:59:59-01:00 is outside the range of representable UTC times"),
        ("99999-01-01T00:00:00Z", "line 2: ordered_at"),
        ("2026-11-24T08:00:00", "line 2: ordered_at: Input should have timezone info"),
    ],
)
def test_extreme_timestamps_in_rows_quarantine_the_file(engine, tmp_path, ordered_at, contains) -> None:
    rows = [{**ROWS[0], "ordered_at": ordered_at}, *ROWS[1:]]
    env, _ = deliver(tmp_path, "t.csv", render_csv(rows))
    outcome = process_delivery(env, engine, resolve, tmp_path / "q")
    assert outcome.status == "quarantined" and contains in outcome.reason, outcome.reason
    assert count(engine, etl_tables.orders) == 0


@pytest.mark.parametrize("delivered_at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_an_extreme_delivered_at_dead_letters_the_message(engine, tmp_path, delivered_at) -> None:
    data = render_csv(ROWS)
    (tmp_path / "landing").mkdir()
    (tmp_path / "landing" / "a.csv").write_bytes(data)
    env = notice_env((tmp_path / "landing" / "a.csv").as_uri(), data, delivered_at=delivered_at)
    outcome = process_delivery(env, engine, resolve, tmp_path / "q")
    assert outcome.status == "dead_letter" and "OverflowError" in outcome.reason
    assert (tmp_path / "landing" / "a.csv").exists() and count(engine, etl_tables.orders) == 0


@pytest.mark.parametrize(
    ("data", "contains"),
    [
        (b"order_id,customer_id,amount,currency,ordered_at\n\xff\xfe,x\n", "file is not UTF-8 text (byte 48)"),
        (b"order_id,customer_id,amount,currency,ordered_at\no-1,c-1," + b"9" * 200_000 + b",EUR,x\n",
         "line 2: Error: field larger than field limit"),
        (b"order_id,customer_id,amount,currency,ordered_at\no-1,c-1,abc,EUR,2026-11-24T08:00:00Z\n",
         "line 2: amount: Input should be a valid decimal"),
        (b"order_id,customer_id,amount,currency,ordered_at\no-1,c-1,1e400,EUR,2026-11-24T08:00:00Z\n", "line 2: amount"),
        (b"order_id,customer_id,amount,currency,ordered_at\no-1,c-1,NaN,EUR,2026-11-24T08:00:00Z\n", "line 2: amount"),
        (b"order_id,customer_id,amount,currency,ordered_at\no/../1,c\x00,1,EUR,2026-11-24T08:00:00Z\n", "line 2"),
        (b"", "header is None"),
    ],
)
def test_bad_file_content_is_quarantined_never_raised(engine, tmp_path, data, contains) -> None:
    env, _ = deliver(tmp_path, "bad.csv", data, rows=1)
    outcome = process_delivery(env, engine, resolve, tmp_path / "q")
    assert outcome.status == "quarantined" and contains in outcome.reason, outcome.reason


@pytest.mark.parametrize(
    ("change", "contains"),
    [
        ({"row_count": "5"}, "row_count: Input should be a valid integer"),
        ({"row_count": 10**30}, "row_count: Input should be less than or equal to 5000000"),
        ({"uri": ["file:///x"]}, "uri: Input should be a valid string"),
        ({"delivery_id": None}, "delivery_id: Input should be a valid string"),
        ({"delivered_at": 1e308}, "delivered_at"),
        ({"uri": "file:///landing/\u0000x.csv"}, "has a NUL"),
    ],
)
def test_wrong_types_in_the_message_are_dead_lettered(engine, tmp_path, change, contains) -> None:
    body = json.loads(notice_env("file:///landing/x.csv").body)
    env = Envelope(source="sqs", message_id="m-1", body=json.dumps({**body, **change}))
    outcome = process_delivery(env, engine, resolve, tmp_path / "q", landing_roots=["file:///landing"])
    assert outcome.status == "dead_letter" and contains in outcome.reason, outcome.reason
    [letter] = table(engine, db.dead_letters)
    assert letter["message_id"] == "m-1" and letter["body"] == env.body


def test_one_hostile_message_does_not_fail_its_batch(engine: Engine, tmp_path: Path) -> None:
    good, _ = deliver(tmp_path, "good.csv", render_csv(ROWS), delivery_id="d-good", message_id="m-good")
    bad_rows = [{**ROWS[0], "order_id": "o-9", "ordered_at": "0001-01-01T00:00:00+01:00"}]
    bad, _ = deliver(tmp_path, "bad.csv", render_csv(bad_rows), delivery_id="d-bad", message_id="m-bad", rows=1)
    batch = [Envelope(source="sqs", message_id="m-junk", body="\x00{"), notice_env("file:///etc/shadow", message_id="m-etc"),
             bad, good]
    outcomes = pipeline.process_batch(batch, engine, resolve, tmp_path / "q",
                                      landing_roots=[(tmp_path / "landing").as_uri()])
    assert [(o.message_id, o.status) for o in outcomes] == [
        ("m-junk", "dead_letter"), ("m-etc", "dead_letter"), ("m-bad", "quarantined"), ("m-good", "loaded")]
    assert all(o.reason for o in outcomes if o.status != "loaded")


# --- identity under concurrency, and corrections that are not newer ------------------------------------------------
def test_ledger_verdict() -> None:
    verdict = pipeline.ledger_verdict
    assert verdict("d", "a" * 64, []) == ("load", None)
    assert verdict("d", "a" * 64, [("a" * 64, "d")]) == ("duplicate", None)
    assert verdict("d", "a" * 64, [("a" * 64, "other")]) == ("duplicate", None)
    assert verdict("d", "a" * 64, [("b" * 64, "d")]) == ("conflict", "b" * 64)
    assert verdict("d", "a" * 64, [("a" * 64, "x"), ("b" * 64, "d")]) == ("conflict", "b" * 64)


def test_a_reused_delivery_id_processed_concurrently_loads_once(engine, tmp_path, monkeypatch) -> None:
    import threading

    # Both copies pass the read-only pre-check (as two concurrent tasks would): the load transaction must decide.
    monkeypatch.setattr(pipeline, "check_ledger", lambda engine, notice: ("load", None))
    barrier = threading.Barrier(2)
    real_load = pipeline.load_records

    def load_together(*args, **kwargs):
        barrier.wait(timeout=10)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(pipeline, "load_records", load_together)
    a, _ = deliver(tmp_path, "a.csv", render_csv(ROWS), message_id="m-a")
    b, _ = deliver(tmp_path, "b.csv", render_csv(ROWS[:2]), rows=2, message_id="m-b")  # same delivery_id "d-1"
    results: dict[str, object] = {}

    def run(env: Envelope) -> None:
        results[env.message_id] = process_delivery(env, engine, resolve, tmp_path / "q")

    threads = [threading.Thread(target=run, args=(e,)) for e in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    statuses = sorted(o.status for o in results.values())
    assert statuses == ["dead_letter", "loaded"]
    [loser] = [o for o in results.values() if o.status == "dead_letter"]
    assert loser.reason.startswith("duplicate delivery_id d-1: already loaded from different content")
    assert [r["message_id"] for r in table(engine, db.dead_letters)] == [loser.message_id]
    [ledger] = table(engine, etl_tables.etl_deliveries)
    winner = next(o for o in results.values() if o.status == "loaded")
    assert ledger["message_id"] == winner.message_id
    assert count(engine, etl_tables.orders) == winner.rows


def test_the_same_file_processed_concurrently_loads_once(engine, tmp_path, monkeypatch) -> None:
    import threading

    monkeypatch.setattr(pipeline, "check_ledger", lambda engine, notice: ("load", None))
    data = render_csv(ROWS)
    a, _ = deliver(tmp_path, "a.csv", data, message_id="m-a")
    b, _ = deliver(tmp_path, "b.csv", data, delivery_id="d-2", message_id="m-b")
    out: list = []
    threads = [threading.Thread(target=lambda e=e: out.append(process_delivery(e, engine, resolve, tmp_path / "q")))
               for e in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(o.status for o in out) == ["duplicate", "loaded"] and count(engine, etl_tables.etl_deliveries) == 1


def test_an_older_correction_committed_after_a_newer_one_changes_nothing(engine: Engine, tmp_path: Path) -> None:
    def correction(name: str, amount: str, delivered_at: str, delivery_id: str) -> Envelope:
        data = render_csv([{**ROWS[0], "amount": amount}])
        (tmp_path / "landing").mkdir(exist_ok=True)
        (tmp_path / "landing" / name).write_bytes(data)
        return notice_env((tmp_path / "landing" / name).as_uri(), data, delivery_id=delivery_id, rows=1,
                          delivered_at=delivered_at, message_id=f"m-{delivery_id}")

    def amount() -> int:
        [row] = table(engine, etl_tables.orders)
        return row["amount_cents"]

    newer = correction("new.csv", "20.00", "2026-11-24T10:00:00+01:00", "d-new")
    older = correction("old.csv", "10.00", "2026-11-24T08:59:59Z", "d-old")  # one second before 10:00+01:00
    assert process_delivery(newer, engine, resolve, tmp_path / "q").status == "loaded" and amount() == 2000
    assert process_delivery(older, engine, resolve, tmp_path / "q").status == "loaded" and amount() == 2000
    [row] = table(engine, etl_tables.orders)
    assert row["delivery_id"] == "d-new" and db.as_utc(row["delivered_at"]).isoformat() == "2026-11-24T09:00:00+00:00"
    newest = correction("newest.csv", "30.00", "2026-11-24T09:00:01Z", "d-newest")
    assert process_delivery(newest, engine, resolve, tmp_path / "q").status == "loaded" and amount() == 3000


def test_a_tie_on_delivered_at_is_won_by_the_greater_sha256(engine: Engine, tmp_path: Path) -> None:
    (tmp_path / "landing").mkdir()
    envs = []
    for i, amount in enumerate(["1.00", "2.00", "3.00"]):
        data = render_csv([{**ROWS[0], "amount": amount}])
        (tmp_path / "landing" / f"{i}.csv").write_bytes(data)
        envs.append((hashlib.sha256(data).hexdigest(), notice_env((tmp_path / "landing" / f"{i}.csv").as_uri(), data,
                                                                   delivery_id=f"d-{i}", rows=1, message_id=f"m-{i}")))
    for _, env in envs:
        assert process_delivery(env, engine, resolve, tmp_path / "q").status == "loaded"
    [row] = table(engine, etl_tables.orders)
    assert row["source_sha256"] == max(sha for sha, _ in envs)


def test_a_run_of_1500_deliveries_maps_to_bounded_batches() -> None:
    from event_streams.pipelines import airflow_io

    batches = airflow_io.map_batches(list(range(1500)), etl_settings.ETL_BATCH_SIZE)
    assert len(batches) == -(-1500 // etl_settings.ETL_BATCH_SIZE) <= 1024
    assert [x for b in batches for x in b] == list(range(1500))
