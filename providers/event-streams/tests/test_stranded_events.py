"""``event_streams.stranded_events`` on Airflow's own tables (SQLite): which asset events get a run, and which not."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, insert, select
from sqlalchemy.orm import Session

T0 = datetime(2026, 12, 6, 18, 0, tzinfo=timezone.utc)
DAG = "inference_execution"


@pytest.fixture
def airflow_db(tmp_path: Path) -> Engine:
    from airflow.models import import_all_models
    from airflow.models.base import Base

    import_all_models()  # every model's table in Base.metadata
    engine = create_engine(f"sqlite:///{tmp_path / 'airflow.db'}")
    Base.metadata.create_all(engine)
    return engine


def _rows(engine: Engine) -> dict[str, Any]:
    from airflow.models.asset import AssetDagRunQueue, AssetEvent

    with engine.connect() as conn:
        return {
            "events": {i: ts for i, ts in conn.execute(select(AssetEvent.id, AssetEvent.timestamp))},
            "queued": conn.execute(select(AssetDagRunQueue.target_dag_id)).scalars().all(),
        }


def _scenario(engine: Engine, *, events: dict[int, datetime], consumed: list[int], run_after: datetime,
              consumed_elsewhere: tuple[int, ...] = ()) -> None:
    """One asset (id 1) that ``DAG`` is scheduled on since T0, one asset-triggered run of it (id 1), its events;
    ``consumed_elsewhere``: events a run of another DAG on the asset consumed (run id 2)."""
    from airflow.models.asset import AssetEvent, AssetModel, DagScheduleAssetReference, association_table
    from airflow.models.dagrun import DagRun

    with engine.begin() as conn:
        conn.execute(insert(AssetModel.__table__).values(id=1, name="a", uri="a", group="asset", extra={},
                                                         created_at=T0, updated_at=T0))
        conn.execute(insert(DagScheduleAssetReference.__table__).values(asset_id=1, dag_id=DAG, created_at=T0,
                                                                        updated_at=T0))
        for event_id, ts in events.items():
            conn.execute(insert(AssetEvent.__table__).values(id=event_id, asset_id=1, extra={}, timestamp=ts))
        for run_id, dag_id, event_ids in ((1, DAG, consumed), (2, "other", consumed_elsewhere)):
            conn.execute(insert(DagRun.__table__).values(id=run_id, dag_id=dag_id, run_id=f"r{run_id}",
                                                         run_type="asset_triggered", run_after=run_after,
                                                         state="running", clear_number=0, log_template_id=None,
                                                         span_status="not_started"))
            for event_id in event_ids:
                conn.execute(insert(association_table).values(dag_run_id=run_id, event_id=event_id))


def test_an_event_committed_after_the_run_whose_window_held_it_is_restamped_and_queued(airflow_db: Engine) -> None:
    from event_streams.stranded_events import requeue_stranded_events

    run_after = T0 + timedelta(seconds=10)
    _scenario(airflow_db, events={1: T0 + timedelta(seconds=5), 2: T0 + timedelta(seconds=9)}, consumed=[1],
              run_after=run_after)

    with Session(airflow_db) as session, session.begin():
        assert requeue_stranded_events(session, DAG) == [1]

    rows = _rows(airflow_db)
    assert rows["events"][1] == T0 + timedelta(seconds=5)  # consumed: untouched
    assert rows["events"][2] > run_after  # now in the next run's window
    assert rows["queued"] == [DAG]


def test_events_before_the_dag_was_scheduled_on_the_asset_or_consumed_are_left_alone(airflow_db: Engine) -> None:
    from event_streams.stranded_events import requeue_stranded_events

    before = T0 - timedelta(seconds=1)
    _scenario(airflow_db, events={1: before, 2: T0 + timedelta(seconds=5)}, consumed=[2],
              run_after=T0 + timedelta(seconds=10))

    with Session(airflow_db) as session, session.begin():
        assert requeue_stranded_events(session, DAG) == []

    rows = _rows(airflow_db)
    assert rows["events"] == {1: before, 2: T0 + timedelta(seconds=5)}
    assert rows["queued"] == []


def test_an_event_another_dag_consumed_is_not_restamped_it_would_reach_that_dag_twice(airflow_db: Engine) -> None:
    from event_streams.stranded_events import requeue_stranded_events

    late = T0 + timedelta(seconds=9)
    _scenario(airflow_db, events={1: late}, consumed=[], consumed_elsewhere=(1,), run_after=T0 + timedelta(seconds=10))

    with Session(airflow_db) as session, session.begin():
        assert requeue_stranded_events(session, DAG) == []

    assert _rows(airflow_db) == {"events": {1: late}, "queued": []}
