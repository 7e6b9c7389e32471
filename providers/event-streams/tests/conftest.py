from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

if "AIRFLOW_HOME" not in os.environ:  # a throwaway one, removed when the tests end
    os.environ["AIRFLOW_HOME"] = _home = tempfile.mkdtemp(prefix="airflow-home-")
    atexit.register(shutil.rmtree, _home, ignore_errors=True)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    """A real SQLite database file (``commit_settled`` creates its table on first use)."""
    return create_engine(f"sqlite:///{tmp_path / 'events.db'}")
