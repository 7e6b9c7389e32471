from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from include.event_pipelines import db


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    """A real SQLite database file with the project's schema (the embedded default sink)."""
    eng = db.configure_sqlite(create_engine(f"sqlite:///{tmp_path / 'events.db'}"))
    db.ensure_schema(eng)
    return eng
