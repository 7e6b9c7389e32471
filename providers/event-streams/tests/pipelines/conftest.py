"""Tests of ``event_streams.pipelines`` (the shared core): the events database with the core's own tables."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    """A real SQLite database file with the core's schema (dead letters, message failures, run stats, ...)."""
    from event_streams.pipelines import db

    eng = db.configure_sqlite(create_engine(f"sqlite:///{tmp_path / 'events.db'}"))
    db.ensure_schema(eng)
    return eng
