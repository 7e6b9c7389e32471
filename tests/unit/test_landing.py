"""Files confined for the whole operation (issue 17, item 4): the ETL's landing walk, removal, checksum and clock.

Real files under ``tmp_path``, a real SQLite database, no Airflow and no broker. A folder on the path is swapped
for a symlink at the worst moments (after ``locate``, after the read), through seams that exist in the pipeline
(``landing.locate``, ``pipeline.parse_orders``); a notice naming another delivery's file, and a ``delivered_at``
far ahead of the clock, are dead-lettered with the file left where it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select

from event_streams.pipelines import db
from event_streams.pipelines.messages import Envelope
from include.data_delivery_etl import landing, pipeline
from include.data_delivery_etl import settings as etl_settings
from include.data_delivery_etl import tables as etl_tables
from include.data_delivery_etl.landing import quarantine_folder_name
from include.data_delivery_etl.pipeline import render_csv

ROWS = [
    {"order_id": "o-1", "customer_id": "c-1", "amount": "12.50", "currency": "EUR", "ordered_at": "2026-11-24T08:00:00Z"},
    {"order_id": "o-2", "customer_id": "c-2", "amount": "0.99", "currency": "USD", "ordered_at": "2026-11-24T07:30:00Z"},
]
OTHER = [{**ROWS[0], "order_id": "o-other", "amount": "99.00"}]
BAD_CSV = b"not,the,header\n1,2,3\n"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def resolve(uri: str) -> Path:
    return Path(urlparse(uri).path)


def notice(uri: str, *, sha: str, rows: int = 2, delivery_id: str = "d-1", message_id: str = "m-1",
           delivered_at: str = "2026-11-24T08:05:00Z") -> Envelope:
    body = {"delivery_id": delivery_id, "uri": uri, "sha256": sha, "row_count": rows, "producer": "shop-export",
            "delivered_at": delivered_at}
    return Envelope(source="sqs", message_id=message_id, body=json.dumps(body), receipt_handle="rh")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run(env: Envelope, engine: Engine, tmp_path: Path, **kw: Any) -> pipeline.DeliveryOutcome:
    kw.setdefault("landing_roots", [(tmp_path / "landing").as_uri()])
    kw.setdefault("now", NOW)
    return pipeline.process_delivery(env, engine, resolve, tmp_path / "q", **kw)


def rows_of(engine: Engine, t: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(t)).mappings()]


def count(engine: Engine, t: Any) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(t)).scalar_one()


def snapshot(folder: Path) -> dict[str, object]:
    """Every entry under ``folder`` (symlinks not followed): file bytes, link targets, folders."""
    out: dict[str, object] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            out[str(p.relative_to(folder))] = os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else "dir"
    return out


def open_fds() -> list[str]:
    """The files and folders under pytest's temporary roots this process holds open, databases left out (SQLAlchemy's
    pool opens those when it likes): a handle the walk leaked shows here."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if "/pytest-of-" in target and not re.search(r"\.db(-wal|-shm|-journal)?$", target):
            held.append(target)
    return sorted(held)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def swap_for_symlink(folder: Path, target: Path) -> None:
    """Move ``folder`` aside (it stays inside the landing root) and put a symlink to ``target`` in its place."""
    folder.rename(folder.with_name(folder.name + "-old"))
    folder.symlink_to(target, target_is_directory=True)


def assert_dead_letter(engine: Engine, outcome: pipeline.DeliveryOutcome, contains: str) -> None:
    assert outcome.status == "dead_letter", outcome
    assert outcome.reason is not None and outcome.reason.startswith("message m-1: ") and contains in outcome.reason, outcome
    assert [r["message_id"] for r in rows_of(engine, db.dead_letters)] == ["m-1"]
    assert count(engine, etl_tables.orders) == 0 and count(engine, etl_tables.etl_quarantine) == 0


# --- a folder on the path swapped for a symlink ---------------------------------------------------------------------
def test_a_folder_swapped_for_a_symlink_between_locate_and_read_is_refused(engine, tmp_path, monkeypatch) -> None:
    data = render_csv(ROWS)
    inside = write(tmp_path / "landing" / "sub" / "x.csv", data)
    outside = write(tmp_path / "outside" / "x.csv", render_csv(OTHER))
    before = snapshot(tmp_path / "outside")
    real_locate = landing.locate

    def locate_then_swap(uri: str, roots: Any) -> landing.Located:
        located = real_locate(uri, roots)
        swap_for_symlink(tmp_path / "landing" / "sub", tmp_path / "outside")
        return located

    monkeypatch.setattr(landing, "locate", locate_then_swap)
    fds = open_fds()
    outcome = run(notice(inside.as_uri(), sha=sha(data)), engine, tmp_path)
    assert_dead_letter(engine, outcome, "has a symlink below its landing root (sub): symlinks are not followed")
    assert outside.read_bytes() == render_csv(OTHER) and snapshot(tmp_path / "outside") == before
    assert (tmp_path / "landing" / "sub-old" / "x.csv").read_bytes() == data  # the delivered file: untouched too
    assert not (tmp_path / "q").exists() and open_fds() == fds


def test_a_folder_swapped_for_a_symlink_between_read_and_removal_removes_nothing_outside(
    engine, tmp_path, monkeypatch
) -> None:
    inside = write(tmp_path / "landing" / "sub" / "bad.csv", BAD_CSV)
    outside = write(tmp_path / "outside" / "bad.csv", BAD_CSV)  # even the same name and bytes
    before = snapshot(tmp_path / "outside")
    real_parse = pipeline.parse_orders

    def swap_then_parse(data: bytes, n: Any) -> list[dict[str, object]]:
        swap_for_symlink(tmp_path / "landing" / "sub", tmp_path / "outside")
        return real_parse(data, n)

    monkeypatch.setattr(pipeline, "parse_orders", swap_then_parse)
    fds = open_fds()
    outcome = run(notice(inside.as_uri(), sha=sha(BAD_CSV)), engine, tmp_path)
    assert outcome.status == "quarantined" and outcome.reason and "header is" in outcome.reason, outcome
    assert outside.read_bytes() == BAD_CSV and snapshot(tmp_path / "outside") == before
    folder = tmp_path / "q" / quarantine_folder_name("d-1")
    assert (folder / "bad.csv").read_bytes() == BAD_CSV and len(rows_of(engine, etl_tables.etl_quarantine)) == 1
    assert not (tmp_path / "landing" / "sub-old" / "bad.csv").exists()  # the file read is the file moved
    assert open_fds() == fds


def test_a_file_replaced_between_read_and_removal_is_left_in_place(engine, tmp_path, monkeypatch) -> None:
    path = write(tmp_path / "landing" / "bad.csv", BAD_CSV)
    replacement = render_csv(OTHER)
    real_parse = pipeline.parse_orders

    def replace_then_parse(data: bytes, n: Any) -> list[dict[str, object]]:
        write(tmp_path / "landing" / "new.tmp", replacement).replace(path)  # another inode under the same name
        return real_parse(data, n)

    monkeypatch.setattr(pipeline, "parse_orders", replace_then_parse)
    outcome = run(notice(path.as_uri(), sha=sha(BAD_CSV)), engine, tmp_path)
    assert outcome.status == "quarantined", outcome
    assert path.read_bytes() == replacement  # not the file that was read: not removed
    assert (tmp_path / "q" / quarantine_folder_name("d-1") / "bad.csv").read_bytes() == BAD_CSV


def test_the_walk_and_the_removal_hold_the_folders_by_descriptor(tmp_path: Path) -> None:
    """The same two races one level down: ``locate``, swap, ``open_local``; then ``open_local``, swap, ``remove``."""
    roots = [(tmp_path / "landing").as_uri()]
    path = write(tmp_path / "landing" / "a" / "b" / "x.csv", b"inside")
    write(tmp_path / "outside" / "b" / "x.csv", b"outside")
    located = landing.locate(path.as_uri(), roots)
    assert located.parts == ("a", "b", "x.csv") and located.root == os.path.realpath(tmp_path / "landing")
    swap_for_symlink(tmp_path / "landing" / "a", tmp_path / "outside")
    fds = open_fds()
    with pytest.raises(landing.Refused, match=r"has a symlink below its landing root \(a\)"):
        landing.open_local(located, 100)
    assert open_fds() == fds
    (tmp_path / "landing" / "a").unlink()
    (tmp_path / "landing" / "a-old").rename(tmp_path / "landing" / "a")

    with landing.open_local(landing.locate(path.as_uri(), roots), 100) as landed:
        assert landed.data == b"inside" and landed.name == "x.csv"
        swap_for_symlink(tmp_path / "landing" / "a", tmp_path / "outside")
        assert landed.remove() is True
        assert landed.remove() is False  # already gone
    assert (tmp_path / "outside" / "b" / "x.csv").read_bytes() == b"outside"
    assert not (tmp_path / "landing" / "a-old" / "b" / "x.csv").exists() and open_fds() == fds


@pytest.mark.parametrize("where", ["folder", "file"])
def test_a_symlink_below_the_root_is_refused_even_when_it_points_inside(engine, tmp_path, where) -> None:
    data = render_csv(ROWS)
    real = write(tmp_path / "landing" / "real" / "x.csv", data)
    if where == "folder":
        (tmp_path / "landing" / "alias").symlink_to(tmp_path / "landing" / "real", target_is_directory=True)
        uri, below = (tmp_path / "landing" / "alias" / "x.csv").as_uri(), "alias"
    else:
        (tmp_path / "landing" / "real" / "alias.csv").symlink_to(real)
        uri, below = (tmp_path / "landing" / "real" / "alias.csv").as_uri(), "real/alias.csv"
    outcome = run(notice(uri, sha=sha(data)), engine, tmp_path)
    assert_dead_letter(engine, outcome, f"has a symlink below its landing root ({below})")
    assert real.read_bytes() == data and (tmp_path / "landing" / ("alias" if where == "folder" else "real/alias.csv")).is_symlink()


def test_a_uri_reaching_the_root_only_through_a_symlink_outside_it_is_refused(engine, tmp_path) -> None:
    data = render_csv(ROWS)
    path = write(tmp_path / "landing" / "x.csv", data)
    (tmp_path / "door").symlink_to(tmp_path / "landing", target_is_directory=True)
    outcome = run(notice((tmp_path / "door" / "x.csv").as_uri(), sha=sha(data)), engine, tmp_path)
    assert_dead_letter(engine, outcome, "reaches a landing root only through a symlink")
    assert path.read_bytes() == data


def test_a_landing_root_configured_as_a_symlink_is_followed_once(engine, tmp_path) -> None:
    data = render_csv(ROWS)
    path = write(tmp_path / "volume" / "in" / "x.csv", data)
    (tmp_path / "landing").symlink_to(tmp_path / "volume", target_is_directory=True)
    via_root = run(notice((tmp_path / "landing" / "in" / "x.csv").as_uri(), sha=sha(data)), engine, tmp_path)
    assert (via_root.status, via_root.rows) == ("loaded", 2)
    other = render_csv(OTHER)
    write(tmp_path / "volume" / "in" / "y.csv", other)
    written_real = notice((tmp_path / "volume" / "in" / "y.csv").as_uri(), sha=sha(other), rows=1, delivery_id="d-2")
    assert run(written_real, engine, tmp_path).status == "loaded"
    assert path.exists() and count(engine, etl_tables.orders) == 3


def test_a_good_file_in_a_subfolder_loads_and_a_bad_one_is_quarantined(engine, tmp_path) -> None:
    data = render_csv(ROWS)
    good = write(tmp_path / "landing" / "2026" / "12" / "good.csv", data)
    bad = write(tmp_path / "landing" / "2026" / "12" / "bad.csv", BAD_CSV)
    fds = open_fds()
    assert run(notice(good.as_uri(), sha=sha(data)), engine, tmp_path).status == "loaded"
    assert {r["order_id"] for r in rows_of(engine, etl_tables.orders)} == {"o-1", "o-2"} and good.exists()
    outcome = run(notice(bad.as_uri(), sha=sha(BAD_CSV), delivery_id="d-bad", message_id="m-bad"), engine, tmp_path)
    assert outcome.status == "quarantined" and outcome.reason and "header is" in outcome.reason
    assert not bad.exists()
    assert (tmp_path / "q" / quarantine_folder_name("d-bad") / "bad.csv").read_bytes() == BAD_CSV
    assert open_fds() == fds


# --- a checksum mismatch never moves the file ------------------------------------------------------------------------
def test_a_wrong_checksum_notice_naming_another_deliverys_file_leaves_it_untouched(engine, tmp_path) -> None:
    theirs = render_csv(ROWS)
    path = write(tmp_path / "landing" / "theirs.csv", theirs)
    claimed = sha(render_csv(OTHER))
    hostile = notice(path.as_uri(), sha=claimed, delivery_id="d-evil")
    outcome = run(hostile, engine, tmp_path)
    assert_dead_letter(engine, outcome, "checksum mismatch")
    assert f"the file's sha256 is {sha(theirs)}, the message expects {claimed}" in (outcome.reason or "")
    assert path.read_bytes() == theirs and not (tmp_path / "q").exists()
    # the delivery the file belongs to still loads from where it was delivered
    own = notice(path.as_uri(), sha=sha(theirs), delivery_id="d-theirs", message_id="m-2")
    assert run(own, engine, tmp_path).status == "loaded" and count(engine, etl_tables.orders) == 2


def test_a_truncated_file_is_dead_lettered_and_left_for_its_upload_to_finish(engine, tmp_path) -> None:
    data = render_csv(ROWS)
    path = write(tmp_path / "landing" / "part.csv", data[: len(data) // 2])
    outcome = run(notice(path.as_uri(), sha=sha(data)), engine, tmp_path)
    assert_dead_letter(engine, outcome, f"the message expects {sha(data)}")
    assert path.read_bytes() == data[: len(data) // 2] and count(engine, etl_tables.etl_deliveries) == 0


# --- delivered_at bounded in the future -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("delivered_at", "reason"),
    [
        (NOW, None),
        (NOW + timedelta(seconds=300), None),
        (NOW - timedelta(days=400), None),  # old deliveries are fine: orders keep the newest
        ((NOW + timedelta(seconds=300)).astimezone(timezone(timedelta(hours=-5))), None),
        (NOW + timedelta(seconds=301), "is 301 s in the future (processed at 2026-12-01T12:00:00+00:00; at most 300 s"),
        ((NOW + timedelta(days=1)).astimezone(timezone(timedelta(hours=14))), "+14:00 is 86400 s in the future"),
        (datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-1))), "outside the range of representable"),
    ],
)
def test_future_delivered_at_reason(delivered_at: datetime, reason: str | None) -> None:
    got = pipeline.future_delivered_at_reason(delivered_at, NOW, 300)
    assert got is None if reason is None else (got is not None and reason in got), got


def test_the_clock_skew_setting_is_env_driven_with_300_s_by_default() -> None:
    assert etl_settings.ETL_MAX_CLOCK_SKEW_SECONDS == float(os.getenv("ETL_MAX_CLOCK_SKEW_SECONDS", "300"))
    assert "ETL_MAX_CLOCK_SKEW_SECONDS" in os.environ or etl_settings.ETL_MAX_CLOCK_SKEW_SECONDS == 300


def test_a_far_future_delivered_at_is_dead_lettered_and_does_not_freeze_its_orders(engine, tmp_path) -> None:
    data = render_csv(ROWS)
    path = write(tmp_path / "landing" / "x.csv", data)
    ahead = (NOW + timedelta(days=365)).isoformat()
    outcome = run(notice(path.as_uri(), sha=sha(data), delivered_at=ahead), engine, tmp_path, max_clock_skew_seconds=300)
    assert_dead_letter(engine, outcome, f"delivered_at {ahead} is 31536000 s in the future")
    assert "check the producer's clock" in (outcome.reason or "") and path.read_bytes() == data
    # a correction delivered now is applied (it would never be, behind a year-ahead delivered_at)
    fixed = render_csv([{**ROWS[0], "amount": "13.00"}, ROWS[1]])
    corr = write(tmp_path / "landing" / "fix.csv", fixed)
    assert run(notice(corr.as_uri(), sha=sha(fixed), delivery_id="d-2", message_id="m-2"), engine, tmp_path).status == "loaded"
    assert {r["order_id"]: r["amount_cents"] for r in rows_of(engine, etl_tables.orders)}["o-1"] == 1300


# --- properties --------------------------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(ahead=st.integers(-10**9, 10**9), skew=st.integers(0, 10**6), offset_minutes=st.integers(-23 * 60, 23 * 60))
def test_delivered_at_is_refused_exactly_when_too_far_ahead(ahead: int, skew: int, offset_minutes: int) -> None:
    at = (NOW + timedelta(seconds=ahead)).astimezone(timezone(timedelta(minutes=offset_minutes)))
    reason = pipeline.future_delivered_at_reason(at, NOW, skew)
    assert (reason is None) == (ahead <= skew)
    if reason is not None:
        assert f"is {ahead} s in the future" in reason and landing.safe_text(reason) == reason


@contextmanager
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="etl-walk") as d:
        yield Path(d)


KINDS = ("dir", "link-inside", "link-outside")


@settings(max_examples=150, deadline=None)
@given(
    path=st.lists(st.sampled_from(KINDS), min_size=0, max_size=3),
    last=st.sampled_from(("file", "link-inside", "link-outside")),
    swap_at=st.none() | st.integers(0, 2),
)
def test_open_local_reads_only_through_real_folders_below_the_root(
    path: list[str], last: str, swap_at: int | None
) -> None:
    """Any mix of real folders and symlinks (to inside or outside the root) on the path, and optionally one folder
    swapped for a symlink after ``locate``: the file is read only when no component is a symlink at read time, and
    what is outside is never changed, read or removed."""
    with scratch() as base:
        root, outside = base / "landing", base / "outside"
        write(outside / "x.csv", b"outside")
        write(root / "elsewhere" / "x.csv", b"elsewhere")
        folder, parts = root, []
        for i, kind in enumerate(path):
            name = f"c{i}"
            parts.append(name)
            if kind == "dir":
                (folder / name).mkdir()
                folder = folder / name
            else:
                target = outside if kind == "link-outside" else root / "elsewhere"
                (folder / name).symlink_to(target, target_is_directory=True)
                break
        else:
            parts.append("x.csv")
            if last == "file":
                write(folder / "x.csv", b"inside")
            else:
                (folder / "x.csv").symlink_to(outside / "x.csv" if last == "link-outside" else root / "elsewhere" / "x.csv")
        uri = (root.joinpath(*parts)).as_uri()
        before = snapshot(outside)
        try:
            located = landing.locate(uri, [root.as_uri()])
        except landing.Refused as exc:
            assert "outside the landing roots" in str(exc)  # resolved outside: refused before anything is opened
            assert any(k == "link-outside" for k in path) or last == "link-outside"
            return
        swapped = swap_at is not None and swap_at < len(parts) - 1 and (root.joinpath(*parts[: swap_at + 1])).is_dir() \
            and not (root.joinpath(*parts[: swap_at + 1])).is_symlink()
        if swapped:
            assert swap_at is not None
            swap_for_symlink(root.joinpath(*parts[: swap_at + 1]), outside)
        clean = not swapped and all(k == "dir" for k in path) and last == "file"
        fds = open_fds()
        try:
            with landing.open_local(located, 100) as landed:
                assert clean and landed.data == b"inside"
                assert landed.remove() is True
        except landing.Refused as exc:
            assert not clean and "has a symlink below its landing root" in str(exc)
        assert open_fds() == fds and snapshot(outside) == before



@pytest.mark.parametrize("name", ["x" * 300 + ".csv", "sub" * 100 + "/x.csv"])
def test_a_name_too_long_for_the_file_system_is_dead_lettered_not_raised(engine, tmp_path, name) -> None:
    (tmp_path / "landing").mkdir()
    outcome = run(notice(f"{(tmp_path / 'landing').as_uri()}/{name}", sha="0" * 64), engine, tmp_path)
    assert_dead_letter(engine, outcome, "cannot be opened: File name too long")


def test_an_unreadable_folder_on_the_path_is_dead_lettered(engine, tmp_path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every folder")
    data = render_csv(ROWS)
    path = write(tmp_path / "landing" / "locked" / "x.csv", data)
    (tmp_path / "landing" / "locked").chmod(0)
    try:
        outcome = run(notice(path.as_uri(), sha=sha(data)), engine, tmp_path)
    finally:
        (tmp_path / "landing" / "locked").chmod(0o755)
    assert_dead_letter(engine, outcome, "cannot be opened: Permission denied")
    assert path.read_bytes() == data
