"""The pipelines' metrics, sent through Airflow's own metrics system (``airflow.sdk.observability.stats``: StatsD,
DogStatsD or OpenTelemetry, as Airflow's ``[metrics]`` settings say; nothing is sent when metrics are off).

Names carry the DAG id, as Airflow's own do (``ti.finish.<dag_id>...``), so plain StatsD keeps them apart; backends
that take tags also get ``dag_id``. The table of names is docs/metrics.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from event_streams.pipelines.messages import Envelope

PREFIX = "event_pipelines"
MAX_AGE_SAMPLES = 1000  # message ages sent per run (a timing each): the first ones, enough for p50/p95


def _stats() -> Any:
    """Airflow's stats module, imported when first used (not when a DAG file is parsed)."""
    from airflow.sdk.observability import stats

    return stats


def current_dag_id() -> str:
    """The DAG of the task this process runs (Airflow exports it to the task's environment), else ``unknown``."""
    return os.environ.get("AIRFLOW_CTX_DAG_ID") or "unknown"


def run_taken(dag_id: str, received: int, redelivered: int, replayed: int, ages_s: Sequence[float]) -> None:
    """A run took its messages: how many, how many were delivered again after a run that failed for good, how many
    came from a manual run's conf, and each message's age at run start (producer time -> run start)."""
    stats, tags = _stats(), {"dag_id": dag_id}
    stats.incr(f"{PREFIX}.{dag_id}.received", received, tags=tags)
    if redelivered:
        stats.incr(f"{PREFIX}.{dag_id}.redelivered", redelivered, tags=tags)
    if replayed:
        stats.incr(f"{PREFIX}.{dag_id}.replayed", replayed, tags=tags)
    for age in ages_s[:MAX_AGE_SAMPLES]:
        stats.timing(f"{PREFIX}.{dag_id}.message_age", age * 1000.0, tags=tags)


def settled_batch(envelopes: Sequence[Envelope], dead_letters: Sequence[Mapping[str, Any]]) -> None:
    """``settled`` for the task's DAG: the batch's messages, of which those in ``dead_letters`` were dead-lettered."""
    ids = {e.message_id for e in envelopes}
    dead = len({str(d["message_id"]) for d in dead_letters} & ids)
    settled(current_dag_id(), len(ids) - dead, dead)


def settled(dag_id: str, processed: int, dead_lettered: int) -> None:
    """Messages acknowledged once their effect was durable: processed, or dead-lettered with their reason."""
    stats, tags = _stats(), {"dag_id": dag_id}
    if processed:
        stats.incr(f"{PREFIX}.{dag_id}.processed", processed, tags=tags)
    if dead_lettered:
        stats.incr(f"{PREFIX}.{dag_id}.dead_lettered", dead_lettered, tags=tags)
