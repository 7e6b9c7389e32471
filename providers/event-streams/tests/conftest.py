from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    """A real SQLite database file (``commit_settled`` creates its table on first use)."""
    return create_engine(f"sqlite:///{tmp_path / 'events.db'}")
