from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from include.data_delivery_etl import tables as _etl_tables  # noqa: F401  (every pipeline's tables on db.metadata)
from include.event_pipelines import db
from include.inference_execution import tables as _inference_tables  # noqa: F401
from include.iot_alerting import tables as _iot_tables  # noqa: F401


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    """A real SQLite database file with the project's schema (the embedded default sink)."""
    eng = db.configure_sqlite(create_engine(f"sqlite:///{tmp_path / 'events.db'}"))
    db.ensure_schema(eng)
    return eng
