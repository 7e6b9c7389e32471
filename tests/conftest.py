"""Shared test setup: Airflow points at this project's dags/ and a throwaway AIRFLOW_HOME (unless already set,
as under ``astro dev pytest``), and the project root is importable (``include.*``, ``devstack.*``)."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if "AIRFLOW_HOME" not in os.environ:  # a throwaway one, removed when the tests end
    os.environ["AIRFLOW_HOME"] = _home = tempfile.mkdtemp(prefix="airflow-home-")
    atexit.register(shutil.rmtree, _home, ignore_errors=True)
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")

_REPORT: list[str] = []


@pytest.fixture(scope="session")
def report_line():
    """Append a line to pytest's terminal summary (measured figures such as DAG import times).

    A fixture, because ``import tests.conftest`` from a test module would load a second copy of this module
    whose list pytest never prints."""
    return _REPORT.append


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001 - pytest hook signature
    if _REPORT:
        terminalreporter.section("project report")
        for line in _REPORT:
            terminalreporter.write_line(line)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    """A real SQLite database file with the project's schema (the embedded default sink)."""
    from event_streams.pipelines import db
    from include.data_delivery_etl import tables as _etl_tables  # noqa: F401  (every pipeline's tables on db.metadata)
    from include.inference_execution import tables as _inference_tables  # noqa: F401
    from include.iot_alerting import tables as _iot_tables  # noqa: F401

    eng = db.configure_sqlite(create_engine(f"sqlite:///{tmp_path / 'events.db'}"))
    db.ensure_schema(eng)
    return eng
