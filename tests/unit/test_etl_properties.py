"""Property tests: whatever a message or its file contains, the ETL ends in an outcome and touches nothing outside
the landing and quarantine roots."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import urlparse

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, func, select

from event_streams.pipelines import db
from event_streams.pipelines.messages import Envelope
from include.data_delivery_etl import landing
from include.data_delivery_etl import tables as etl_tables
from include.data_delivery_etl.pipeline import process_delivery, render_csv
from include.data_delivery_etl.schemas import CSV_HEADER

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
STATUSES = {"loaded", "duplicate", "quarantined", "dead_letter"}
_ids = itertools.count()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
timestamps = st.sampled_from([
    "2026-11-24T08:00:00Z", "2026-11-24T08:00:00+01:00", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-23:59",
    "2026-11-24T08:00:00", "99999-01-01T00:00:00Z", "", "now",
]) | st.text(max_size=30)
cells = st.text(max_size=20) | st.sampled_from(["1.00", "-1", "1e400", "NaN", "EUR", "o-1", "c-1"])
rows = st.fixed_dictionaries({
    "order_id": st.sampled_from(["o-1", "o-2", "o/../3"]) | st.text(max_size=10),
    "customer_id": cells, "amount": cells, "currency": cells, "ordered_at": timestamps,
})
good_rows = st.lists(st.fixed_dictionaries({
    "order_id": st.from_regex(r"\Ao-[0-9]{1,3}\Z"), "customer_id": st.just("c-1"),
    "amount": st.sampled_from(["0", "1.5", "999999999999.99"]), "currency": st.sampled_from(["eur", "USD"]),
    "ordered_at": st.sampled_from(["2026-11-24T08:00:00Z"] * 4 + ["0001-01-01T00:00:00+01:00"]),
}), min_size=1, max_size=4, unique_by=lambda r: r["order_id"])
file_contents = good_rows.map(render_csv) | good_rows.map(render_csv) | st.binary(max_size=300) | st.lists(rows, max_size=4).map(render_csv) | st.builds(
    lambda head, tail: ",".join(CSV_HEADER).encode() + b"\n" + head + tail, st.binary(max_size=50),
    st.sampled_from([b"", b"\x00", b"\xff\xfe", b'"unterminated', b"\r\r\n"]),
)


_worlds: dict[Path, World] = {}


def world_at(base: Path) -> World:
    """One world per test (hypothesis runs every example in the same ``tmp_path``)."""
    if base not in _worlds:
        _worlds[base] = World(base)
    world = _worlds[base]
    world.before = world.snapshot()
    return world


class World:
    """A landing root, a quarantine root and, beside them, files nobody may touch."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.landing, self.q, self.outside = base / "landing", base / "q", base / "outside"
        for d in (self.landing, self.q, self.outside):
            d.mkdir(exist_ok=True)
        (self.outside / "secret.csv").write_bytes(b"secret")
        (base / "landing-evil.csv").write_bytes(b"evil")
        link = self.landing / "link.csv"
        if not link.is_symlink():
            link.symlink_to(self.outside / "secret.csv")
        (self.landing / "dir.csv").mkdir(exist_ok=True)
        self.engine = db.configure_sqlite(create_engine(f"sqlite:///{base / 'events.db'}"))
        db.ensure_schema(self.engine)
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        """Everything outside the quarantine root and the landing folder's regular files, with contents."""
        seen: dict[str, Any] = {}
        for root, dirs, files in os.walk(self.base):
            for name in dirs + files:
                p = Path(root) / name
                rel = str(p.relative_to(self.base))
                if rel.startswith(("q/", "events.db")) or rel == "q" or (p.parent == self.landing and p.is_file()
                                                                           and not p.is_symlink()):
                    continue
                seen[rel] = os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else "dir"
        return seen

    def check(self) -> None:
        assert self.snapshot() == self.before
        for p in self.q.rglob("*"):  # quarantine: only <folder>/<file>, folders directly under the root
            parts = p.relative_to(self.q).parts
            assert len(parts) <= 2 and (p.is_dir() if len(parts) == 1 else p.is_file()), parts
            assert os.path.realpath(p).startswith(os.path.realpath(self.q) + os.sep)

    def run(self, envelope: Envelope, **kw: Any):
        outcome = process_delivery(envelope, self.engine, lambda uri: Path(urlparse(uri).path), self.q,
                                   landing_roots=[self.landing.as_uri()], **kw)
        assert outcome.status in STATUSES and outcome.message_id == envelope.message_id
        assert outcome.status == "loaded" or outcome.reason
        event(outcome.status)
        self.check()
        return outcome


def _mid() -> str:
    return f"m-{next(_ids)}"


@SETTINGS
@given(body=st.text(max_size=400) | json_values.map(json.dumps) | st.dictionaries(
    st.sampled_from(["delivery_id", "uri", "sha256", "row_count", "producer", "delivered_at", "dataset", "x"]),
    json_values, max_size=8).map(json.dumps))
def test_any_message_body_ends_in_an_outcome(tmp_path: Path, body: str) -> None:
    world = world_at(tmp_path)
    outcome = world.run(Envelope(source="sqs", message_id=_mid(), body=body))
    assert outcome.status == "dead_letter" and outcome.reason


@SETTINGS
@given(raw=st.binary(max_size=300))
def test_any_message_bytes_end_in_an_outcome(tmp_path: Path, raw: bytes) -> None:
    world = world_at(tmp_path)
    try:
        env = Envelope(source="kafka", message_id=_mid(), body=raw.decode("utf-8"))
    except UnicodeDecodeError:
        env = Envelope(source="kafka", message_id=_mid(), body_b64=base64.b64encode(raw).decode())
    assert world.run(env).status == "dead_letter"


@SETTINGS
@given(
    content=file_contents,
    where=st.sampled_from(["landing"] * 6 + ["outside", "dotdot", "symlink", "dir", "evil", "missing", "text"]),
    text_uri=st.text(max_size=60),
    delivery_id=st.sampled_from(["d-1", "..", "../x", "a/b", "../../outside", "./"]) | st.from_regex(
        r"\A[A-Za-z0-9._:@/-]{1,40}\Z"),
    row_count=st.integers(-1, 5),
    right_sha=st.booleans(),
    delivered_at=st.sampled_from(["2026-11-24T08:00:00Z"] * 4 + ["9999-12-31T23:59:59-01:00"]) | timestamps,
    max_bytes=st.sampled_from([10, 10_000]),
    honest=st.booleans(),
)
def test_any_delivery_ends_in_an_outcome_and_touches_nothing_outside(
    tmp_path: Path, content: bytes, where: str, text_uri: str, delivery_id: str, row_count: int, right_sha: bool,
    delivered_at: str, max_bytes: int, honest: bool,
) -> None:
    world = world_at(tmp_path)
    n = next(_ids)
    name = f"f-{n}.csv"
    if honest:  # a notice that agrees with its file, under a new id: only the file's content can stop it
        where, delivery_id = "landing", f"{delivery_id}-{n}"
        right_sha, row_count, delivered_at, max_bytes = True, -1, "2026-11-24T08:00:00Z", 10_000
    (world.landing / name).write_bytes(content)
    uri = {
        "landing": (world.landing / name).as_uri(),
        "outside": (world.outside / "secret.csv").as_uri(),
        "dotdot": world.landing.as_uri() + "/../outside/secret.csv",
        "symlink": (world.landing / "link.csv").as_uri(),
        "dir": (world.landing / "dir.csv").as_uri(),
        "evil": (tmp_path / "landing-evil.csv").as_uri(),
        "missing": (world.landing / "nope.csv").as_uri(),
        "text": "file://" + text_uri,
    }[where]
    sha = hashlib.sha256(content).hexdigest() if right_sha else "0" * 64
    if row_count == -1:  # the count the file really has, for a file that is good all the way
        row_count = max(len(content.splitlines()) - 1, 0)
    notice = {"delivery_id": delivery_id, "uri": uri, "sha256": sha, "row_count": row_count, "producer": "p",
              "delivered_at": delivered_at}
    with world.engine.connect() as conn:  # content an earlier example loaded: the ledger answers before any file read
        t = etl_tables.etl_deliveries
        loaded_before = conn.execute(select(func.count()).select_from(t).where(t.c.sha256 == sha)).scalar() > 0
    outcome = world.run(Envelope(source="sqs", message_id=_mid(), body=json.dumps(notice)), max_file_bytes=max_bytes)
    if where in ("outside", "dotdot", "evil"):  # refused before anything else: the path is outside the landing roots
        assert outcome.status == "dead_letter" and outcome.reason
    if where in ("symlink", "dir"):  # under a root, but not a regular file: never read, so dead-lettered unless its
        # content was loaded before (then the ledger answers "duplicate" before the path is opened)
        assert outcome.status == "dead_letter" or (outcome.status == "duplicate" and loaded_before), outcome
    if outcome.status == "loaded":
        assert where == "landing" and right_sha and len(content) <= max_bytes
    if outcome.status == "quarantined":
        with world.engine.connect() as conn:
            t = etl_tables.etl_quarantine
            assert conn.execute(select(func.count()).select_from(t).where(t.c.delivery_id == delivery_id)).scalar() == 1


@settings(max_examples=200, deadline=None)
@given(uri=st.text(max_size=80) | st.builds(lambda s: "file:///landing/" + s, st.text(max_size=40)))
def test_locate_accepts_only_paths_under_a_root(uri: str) -> None:
    try:
        located = landing.locate(uri, ["file:///landing", "s3://bucket/in"])
    except landing.Refused as exc:
        assert str(exc).startswith("uri ")
        return
    assert located.scheme == "file" and PurePath(located.local_path or "").is_relative_to("/landing")


@settings(max_examples=200, deadline=None)
@given(delivery_id=st.text(min_size=1, max_size=200))
def test_quarantine_folder_is_one_component(delivery_id: str) -> None:
    name = landing.quarantine_folder_name(delivery_id)
    assert "/" not in name and "\x00" not in name and name not in (".", "..") and not name.startswith(".")
    assert len(name) <= 77 and name.endswith(hashlib.sha256(delivery_id.encode("utf-8", "surrogatepass")).hexdigest()[:12])
