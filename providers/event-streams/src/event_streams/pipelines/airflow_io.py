"""What every pipeline's DAG needs from Airflow: the run's messages, their sources, the failure callback.

``run_messages`` / ``on_failure`` take and give back a run's messages through an ``SqsSource``
(``sqs_source.py``) or a ``KafkaSource`` (``kafka_source.py``); the events database is ``db.engine``. Each
pipeline's own clients (storage, producers, model backends: ``clients.py``) are in its folder. Providers are
imported inside the functions, so parsing a DAG file stays fast.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from event_streams.pipelines import config, db, faults, metrics, runstats
from event_streams.pipelines.kafka_source import KafkaSource
from event_streams.pipelines.messages import Envelope, dead_letter_row, envelopes_from_asset_events, envelopes_from_conf
from event_streams.pipelines.sqs_source import SqsSource

__all__ = ["KafkaSource", "Source", "SqsSource", "engine", "fault_point", "map_batches", "on_failure", "run_messages",
           "to_envelopes"]

log = logging.getLogger(__name__)

# What a task passes as a pipeline's ``after_effect`` hook: a no-op unless the fault suite set EVENTS_FAULTS_DIR.
fault_point: Callable[[str], None] = faults.maybe_fail
engine = db.engine  # the events database (for the DAGs: ``airflow_io.engine()``)

Source = SqsSource | KafkaSource


def run_messages(
    context: Mapping[str, Any], asset: Any, source: Source, *, produced_at_field: str | None = None
) -> list[dict[str, Any]]:
    """Every message behind this run (all coalesced asset events, or ``conf["messages"]`` for a manual run).

    Takes the messages for the run (SQS: the task keeps them invisible with ``source.holding``; Kafka: records behind an
    unsettled one of their partition are left for a later run, see ``hold_unsettled``); dead-letters, with the last
    error, the messages that were already in ``MAX_FAILED_RUNS`` runs that failed for good (and settles them);
    logs and records the run's batch size and how long its messages waited since they were produced.
    """
    from event_streams.pipelines import redelivery

    dag_run = context["dag_run"]
    envelopes = envelopes_from_asset_events(context["triggering_asset_events"].get(asset, ()))
    envelopes += envelopes_from_conf(dag_run.run_id, (dag_run.conf or {}).get("messages", []))
    envelopes = source.take(envelopes, dag_run.dag_id)
    failed_before = redelivery.failures(db.engine(), dag_run.dag_id, [e.message_id for e in envelopes])
    taken = envelopes
    envelopes, exhausted = redelivery.split_exhausted(envelopes, failed_before, config.MAX_FAILED_RUNS)
    if exhausted:
        letters = [dead_letter_row(x.envelope, x.reason) for x in exhausted]
        with db.engine().begin() as conn:
            db.record_dead_letters(conn, dag_run.dag_id, letters)
        source.settle([x.envelope for x in exhausted], letters)
        log.error("dead-lettered %d message(s) that failed for good: %s", len(letters),
                  [(x["message_id"], x["reason"]) for x in letters[:5]])
    start = dag_run.start_date or context["ti"].start_date
    waits = runstats.waits(start, envelopes, produced_at_field)
    summary = runstats.summary_of(len(envelopes), waits)
    metrics.run_taken(dag_run.dag_id, len(taken), len(failed_before), sum(e.source == "manual" for e in taken), waits)
    log.info("run %s: %s", dag_run.run_id, json.dumps(summary))
    if envelopes:
        runstats.record(db.engine(), dag_run.dag_id, dag_run.run_id, summary)
    return [e.model_dump(exclude_none=True) for e in envelopes]


def on_failure(asset: Any, source: Source) -> Callable[[Mapping[str, Any]], None]:
    """A task's ``on_failure_callback`` (called once its last retry failed): records the error against the messages
    the task held and had not settled (``SqsSource.holding``: a mapped task's own batch, not its siblings'; every
    message of the run if it held none, or if the callback runs in another process than the task, as after a
    heartbeat timeout), then gives those back to the broker for redelivery. Never raises."""

    def callback(context: Mapping[str, Any]) -> None:
        from event_streams.pipelines import redelivery

        try:
            dag_run, ti = context["dag_run"], context["ti"]
            held = source.held()
            envelopes = held if held is not None else envelopes_from_asset_events(
                context["triggering_asset_events"].get(asset, ()))
            exc = context.get("exception")
            error = f"task {ti.task_id} failed: {type(exc).__name__}: {exc}" if exc else f"task {ti.task_id} failed"
            recorded = redelivery.record_failure(
                db.engine(), dag_run.dag_id, dag_run.run_id, ti.task_id, [e.message_id for e in envelopes], error
            )
            source.give_back(envelopes)
            log.warning("run %s failed for good; %d message(s) recorded for redelivery: %s",
                        dag_run.run_id, recorded, error)
        except Exception:
            log.exception("recording the failed run's messages failed; they are redelivered all the same")

    return callback


def to_envelopes(items: Sequence[Mapping[str, Any]]) -> list[Envelope]:
    return [Envelope.model_validate(i) for i in items]


def map_batches(items: Sequence[Any], size: int) -> list[list[Any]]:
    """Batches of at most ``size`` items for ``.expand()``, never more than ``[core] max_map_length`` of them
    (Airflow fails a run that maps more): with more items than ``size * max_map_length`` the batches grow."""
    from airflow.configuration import conf

    limit = conf.getint("core", "max_map_length")
    return db.chunked(items, max(size, -(-len(items) // limit)))
