"""Re-queue asset events that no DAG run consumed (apache/airflow issue 56050; docs/delivery-guarantees.md).

Events queued after a run's first event but before the run is created are consumed by nobody until another event
arrives (measured: the last 1-3 of 20 Kafka readings, 62-65 of every 2,000-message burst). This scheduler listener
(registered by the provider's plugin, ``event_streams.plugin``) runs whenever an asset-triggered run starts
or finishes and, if the DAG's assets have events newer than its newest asset-triggered run and no queue row, adds
the row: an event is processed at most one run later.

An event can also be committed after a run whose window holds its timestamp was created: the timestamp is taken
when the row is written, and the write waited (SQLite's write lock, held by the scheduler; measured in ``make demo``:
an inference event stamped 0.13 s before the window closed, missed by that run and older than every later one).
Airflow never consumes such an event; its message came back only when its visibility ran out. The listener moves
the timestamp of an event that no run of the DAG consumed and that is older than its newest run to now, so that
the next run's window holds it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.listeners import hookimpl
from airflow.models.asset import AssetDagRunQueue, AssetEvent, DagScheduleAssetReference, association_table
from airflow.models.dagrun import DagRun
from airflow.utils.types import DagRunType
from sqlalchemy import and_, func, select, update
from sqlalchemy.orm import Session, object_session

from event_streams.schema import insert_ignore_statement

log = logging.getLogger(__name__)

#: How long before the DAG's newest asset-triggered run an event committed late is looked for (a late commit takes
#: seconds; the bound keeps the query on the recent end of ``asset_event``).
LATE_COMMIT_LOOKBACK = timedelta(minutes=10)


def restamp_late_events(session: Session, dag_id: str, floor: datetime) -> list[int]:
    """Give the timestamp ``now`` to the events of ``dag_id``'s assets that no DAG run consumed, written after the
    DAG was scheduled on their asset, and not newer than ``floor`` (its newest asset-triggered run) nor older than
    ``LATE_COMMIT_LOOKBACK`` before it; return their ids.

    An event that a run of another DAG on the same asset consumed is only logged: the new timestamp would put it in
    that DAG's next window too, and deliver it there twice."""
    consumed_by = select(association_table.c.event_id).where(association_table.c.event_id == AssetEvent.id)
    missed = session.execute(
        select(AssetEvent.id, consumed_by.exists())
        .join(
            DagScheduleAssetReference,
            and_(DagScheduleAssetReference.asset_id == AssetEvent.asset_id,
                 DagScheduleAssetReference.dag_id == dag_id),
        )
        .where(
            AssetEvent.timestamp <= floor,
            AssetEvent.timestamp > floor - LATE_COMMIT_LOOKBACK,
            AssetEvent.timestamp > DagScheduleAssetReference.created_at,
            ~consumed_by.join(DagRun, DagRun.id == association_table.c.dag_run_id)
            .where(DagRun.dag_id == dag_id)
            .exists(),
        )
    ).all()
    late = [event_id for event_id, elsewhere in missed if not elsewhere]
    if late:
        session.execute(update(AssetEvent).where(AssetEvent.id.in_(late)).values(timestamp=datetime.now(timezone.utc)))
        log.warning("Asset events %s of %s were committed after the run whose window held them: re-stamped for the "
                    "next run", late, dag_id)
    if shared := [event_id for event_id, elsewhere in missed if elsewhere]:
        log.error("Asset events %s were committed after the run of %s whose window held them, and another DAG's run "
                  "consumed them: not re-stamped (that DAG would get them twice); %s never runs them", shared, dag_id,
                  dag_id)
    return late


def requeue_stranded_events(session: Session, dag_id: str) -> list[int]:
    """Queue a run of ``dag_id`` for every asset that has unconsumed events and no queue row; return the asset ids."""
    floor = session.scalar(
        select(func.max(DagRun.run_after)).where(
            DagRun.dag_id == dag_id, DagRun.run_type == DagRunType.ASSET_TRIGGERED
        )
    )
    if floor is None:
        return []
    restamp_late_events(session, dag_id, floor)
    stranded = session.scalars(
        select(AssetEvent.asset_id)
        .where(
            AssetEvent.asset_id.in_(
                select(DagScheduleAssetReference.asset_id).where(DagScheduleAssetReference.dag_id == dag_id)
            ),
            AssetEvent.timestamp > floor,
            ~select(AssetDagRunQueue.asset_id)
            .where(AssetDagRunQueue.asset_id == AssetEvent.asset_id, AssetDagRunQueue.target_dag_id == dag_id)
            .exists(),
        )
        .distinct()
    ).all()
    if stranded:
        # One statement, executed now in the scheduler's transaction: no pending ORM object (two runs of this DAG
        # changing state in one loop would otherwise insert the same row twice), no savepoint (the scheduler
        # forbids anything that looks like a commit), and a row queued concurrently is simply kept.
        session.execute(
            _insert_ignore(session),
            [{"asset_id": a, "target_dag_id": dag_id, "created_at": datetime.now(timezone.utc)} for a in stranded],
        )
        log.info("Re-queued %s for assets %s: their events were in no DAG run", dag_id, stranded)
    return list(stranded)


def _insert_ignore(session: Session) -> Any:
    return insert_ignore_statement(session.get_bind().dialect.name, AssetDagRunQueue.__table__)


def _on_run_state(dag_run: Any) -> None:
    if dag_run.run_type != DagRunType.ASSET_TRIGGERED:
        return
    session = object_session(dag_run)
    if session is None:
        return
    try:
        requeue_stranded_events(session, dag_run.dag_id)
    except Exception:  # never take the scheduler down; the next run state change tries again
        log.exception("re-queueing stranded asset events of %s failed", dag_run.dag_id)


@hookimpl
def on_dag_run_running(dag_run: Any, msg: str) -> None:
    _on_run_state(dag_run)


@hookimpl
def on_dag_run_success(dag_run: Any, msg: str) -> None:
    _on_run_state(dag_run)


@hookimpl
def on_dag_run_failed(dag_run: Any, msg: str) -> None:
    _on_run_state(dag_run)
