"""The fault suite's markers (``event_streams.pipelines.faults``): once, ``always``, ``times:<n>``, ``hang:<s>``, off."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from event_streams.pipelines import faults


def test_markers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EVENTS_FAULTS_DIR", raising=False)
    (tmp_path / "p").touch()
    faults.maybe_fail("p")  # off without EVENTS_FAULTS_DIR
    monkeypatch.setenv("EVENTS_FAULTS_DIR", str(tmp_path))
    with pytest.raises(faults.InjectedFault, match="injected fault at p"):
        faults.maybe_fail("p")
    faults.maybe_fail("p")  # once: the marker is gone
    (tmp_path / "a").write_text("always")
    for _ in range(2):
        with pytest.raises(faults.InjectedFault):
            faults.maybe_fail("a")
    (tmp_path / "h").write_text("hang:0.3")
    start = time.monotonic()
    faults.maybe_fail("h")  # waits, does not raise, and only once
    assert time.monotonic() - start >= 0.3 and not (tmp_path / "h").exists()


def test_a_times_marker_fails_that_many_attempts_then_is_gone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTS_FAULTS_DIR", str(tmp_path))
    (tmp_path / "t").write_text("times:3")
    for _ in range(3):
        with pytest.raises(faults.InjectedFault):
            faults.maybe_fail("t")
    assert not (tmp_path / "t").exists()
    faults.maybe_fail("t")  # the fourth attempt goes through
