"""What every pipeline's DAG needs from Airflow: the events database, the run's messages, their acknowledgement.

``run_messages`` / ``on_failure`` take and give back a run's messages through an ``SqsSource`` or ``KafkaSource``;
each pipeline's own hooks (storage, producers, model backends) are in its folder. Providers are imported inside
the functions, so parsing a DAG file stays fast.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import cache
from typing import Any

from sqlalchemy import Engine

from include.event_pipelines import config, db, faults, runstats
from include.event_pipelines.heartbeat import Holding
from include.event_pipelines.messages import Envelope, dead_letter_row, envelopes_from_asset_events, envelopes_from_conf

log = logging.getLogger(__name__)

# What a task passes as a pipeline's ``after_effect`` hook: a no-op unless the fault suite set EVENTS_FAULTS_DIR.
fault_point: Callable[[str], None] = faults.maybe_fail


# --- database -----------------------------------------------------------------------------------------------------
@cache
def engine(conn_id: str = config.DB_CONN_ID) -> Engine:
    """SQLAlchemy engine for an Airflow SQL connection (SQLite by default, Postgres/any DbApiHook by config)."""
    from airflow.sdk import BaseHook

    hook = BaseHook.get_connection(conn_id).get_hook()
    eng = db.configure_sqlite(hook.get_sqlalchemy_engine())
    db.ensure_schema(eng)
    return eng


# --- the run's messages --------------------------------------------------------------------------------------------
class SqsSource:
    """How a DAG fed by an SQS queue takes, settles and gives back its messages."""

    def __init__(self, queue_url: str, dlq_url: str) -> None:
        self.queue_url, self.dlq_url = queue_url, dlq_url
        self._holding = Holding()

    def take(self, envelopes: Sequence[Envelope], dag_id: str) -> list[Envelope]:
        """Every message is the run's. Marks them taken (``event_streams.taken_messages``): the streaming trigger
        kept them invisible until now (the run may have been queued), the task ``holding`` them does from now on."""
        if config.SQS_WATCHER_SCHEME == "sqs+stream":
            from event_streams import taken_messages

            taken_messages.mark(engine(), self.queue_url, [e.message_id for e in envelopes if e.source == "sqs"])
        return list(envelopes)

    def holding(self, envelopes: Sequence[Envelope]) -> AbstractContextManager[None]:
        """While the block runs (a task works on ``envelopes``), keep them invisible: extended to
        ``SQS_VISIBILITY_TIMEOUT`` now and every ``SQS_HEARTBEAT_SECONDS``, until settled or the block ends."""
        return self._holding.hold(envelopes, self._extend, config.SQS_HEARTBEAT_SECONDS)

    def held(self) -> list[Envelope] | None:
        """What this task process holds and has not settled (None: it held nothing)."""
        return self._holding.held()

    def _extend(self, envelopes: Sequence[Envelope]) -> None:
        extend_sqs_visibility(self.queue_url, envelopes, config.SQS_VISIBILITY_TIMEOUT)

    def settle(self, envelopes: Sequence[Envelope], dead_letters: Sequence[Mapping[str, Any]]) -> None:
        settle_sqs(self.queue_url, self.dlq_url, envelopes, dead_letters)
        self._holding.release(envelopes)

    def give_back(self, envelopes: Sequence[Envelope]) -> None:
        """After a task failed for good: the messages it held (undeleted) come back after
        SQS_REDELIVERY_DELAY_SECONDS."""
        extend_sqs_visibility(self.queue_url, envelopes, config.SQS_REDELIVERY_DELAY_SECONDS)


class KafkaSource:
    """How a DAG fed by Kafka topics settles its records (offsets are committed by the run, see settle_kafka)."""

    def __init__(self, dlq_topic: str) -> None:
        self.dlq_topic = dlq_topic

    def take(self, envelopes: Sequence[Envelope], dag_id: str) -> list[Envelope]:
        """The records this run may apply now, once the runs before it settled theirs: not those behind an earlier
        record of their partition that no run has settled (a run failed on it); the watcher reads them again after
        it (``hold_unsettled``)."""
        if not config.streaming_kafka():
            return list(envelopes)
        return hold_unsettled(envelopes, dag_id, config.KAFKA_ORDER_WAIT_SECONDS)

    def settle(self, envelopes: Sequence[Envelope], dead_letters: Sequence[Mapping[str, Any]]) -> None:
        settle_kafka(self.dlq_topic, envelopes, dead_letters)

    def held(self) -> list[Envelope] | None:
        """None: a Kafka run's records are the run's as a whole (its one task), nothing is held per task."""
        return None

    def give_back(self, envelopes: Sequence[Envelope]) -> None:
        """Nothing to do: the watcher reads again from the committed offset (KAFKA_REDELIVERY_SECONDS)."""
        return None


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
    from include.event_pipelines import redelivery

    dag_run = context["dag_run"]
    envelopes = envelopes_from_asset_events(context["triggering_asset_events"].get(asset, ()))
    envelopes += envelopes_from_conf(dag_run.run_id, (dag_run.conf or {}).get("messages", []))
    envelopes = source.take(envelopes, dag_run.dag_id)
    envelopes, exhausted = redelivery.split_exhausted(engine(), dag_run.dag_id, envelopes, config.MAX_FAILED_RUNS)
    if exhausted:
        letters = [dead_letter_row(x.envelope, x.reason) for x in exhausted]
        with engine().begin() as conn:
            db.record_dead_letters(conn, dag_run.dag_id, letters)
        source.settle([x.envelope for x in exhausted], letters)
        log.error("dead-lettered %d message(s) that failed for good: %s", len(letters),
                  [(x["message_id"], x["reason"]) for x in letters[:5]])
    start = dag_run.start_date or context["ti"].start_date
    summary = runstats.summarize(start, envelopes, produced_at_field)
    log.info("run %s: %s", dag_run.run_id, json.dumps(summary))
    if envelopes:
        runstats.record(engine(), dag_run.dag_id, dag_run.run_id, summary)
    return [e.model_dump(exclude_none=True) for e in envelopes]


def on_failure(asset: Any, source: Source) -> Callable[[Mapping[str, Any]], None]:
    """A task's ``on_failure_callback`` (called once its last retry failed): records the error against the messages
    the task held and had not settled (``SqsSource.holding``: a mapped task's own batch, not its siblings'; every
    message of the run if it held none, or if the callback runs in another process than the task, as after a
    heartbeat timeout), then gives those back to the broker for redelivery. Never raises."""

    def callback(context: Mapping[str, Any]) -> None:
        from include.event_pipelines import redelivery

        try:
            dag_run, ti = context["dag_run"], context["ti"]
            held = source.held()
            envelopes = held if held is not None else envelopes_from_asset_events(
                context["triggering_asset_events"].get(asset, ()))
            exc = context.get("exception")
            error = f"task {ti.task_id} failed: {type(exc).__name__}: {exc}" if exc else f"task {ti.task_id} failed"
            recorded = redelivery.record_failure(
                engine(), dag_run.dag_id, dag_run.run_id, ti.task_id, [e.message_id for e in envelopes], error
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


# --- SQS: the acknowledgement calls are the provider's (providers/event-streams, event_streams.sqs) ---------------
def _handles(envelopes: Sequence[Envelope]) -> list[tuple[str, str]]:
    return [(e.message_id, e.receipt_handle) for e in envelopes if e.source == "sqs" and e.receipt_handle]


def extend_sqs_visibility(queue_url: str, envelopes: Sequence[Envelope], seconds: int) -> int:
    """Keep the run's messages invisible for ``seconds`` more (a message already deleted or re-received is skipped)."""
    from event_streams import sqs

    return sqs.change_visibility(queue_url, _handles(envelopes), seconds, aws_conn_id=config.AWS_CONN_ID)


def settle_sqs(
    queue_url: str, dlq_url: str, envelopes: Sequence[Envelope], dead_letters: Sequence[Mapping[str, Any]]
) -> None:
    """After the run's effects are committed: dead letters to the DLQ (body, original attributes, then reason and
    source id; see ``_dlq_copy``), then delete all.

    A body the trigger left out of the event and kept (``Envelope.body_kept_in``) is read back from the events
    database (one bounded query for the run's such dead letters) and sent like any other. No message's content can
    fail this: reasons are made acceptable to SQS (``sqs.safe_text``, 1,000 characters), batches are bounded by
    bytes, and a copy SQS cannot take (too large with its attributes, no body, or refused all the same) goes as a
    stand-in naming the message, its body kept in the ``dead_letters`` table (``body_kept_in``).
    """
    from event_streams import sqs

    if dead_letters:
        by_id = {e.message_id: e for e in envelopes}
        by_id |= _with_kept_bodies([by_id[d["message_id"]] for d in dead_letters if d["message_id"] in by_id])
        reasons = {d["message_id"]: str(d["reason"]) for d in dead_letters if d["message_id"] in by_id}
        copies = {m: _dlq_copy(queue_url, by_id[m], reason) for m, reason in reasons.items()}
        refused = dict(sqs.send_messages(dlq_url, list(copies.values()), aws_conn_id=config.AWS_CONN_ID))
        if refused:
            stand_ins = [_stand_in(queue_url, by_id[m], reasons[m]) for m in refused]
            still = sqs.send_messages(dlq_url, stand_ins, aws_conn_id=config.AWS_CONN_ID)
            log.error("SQS refused the dead-letter copies of %s (%s); sent stand-ins naming them instead (their "
                      "bodies are in dead_letters)%s", sorted(refused), sorted(set(refused.values()))[:3],
                      f"; refused again: {still}" if still else "")
    sqs.delete_messages(queue_url, _handles(envelopes), aws_conn_id=config.AWS_CONN_ID)


MAX_SQS_ATTRIBUTES = 10  # SQS: message attributes per message
Attributes = dict[str, str | tuple[str, str]]  # SQS attributes to send: a String value, or (data type, value)
DlqCopy = tuple[str, str, Attributes]  # (source message id, body, attributes), as sent


def _with_kept_bodies(envelopes: Sequence[Envelope]) -> dict[str, Envelope]:
    """The envelopes whose body the trigger kept (``body_kept_in``), with that body back in place (from the events
    database, by message id, in bounded queries); those whose body was not found are left out."""
    ids = [e.message_id for e in envelopes if e.body is None and e.body_kept_in]
    if not ids:
        return {}
    from event_streams import kept_bodies

    kept = kept_bodies.bodies(engine(), ids)
    return {e.message_id: e.model_copy(update={"body": kept[e.message_id]})
            for e in envelopes if e.message_id in kept and e.body is None}


def _ours(queue_url: str, envelope: Envelope, reason: str) -> Attributes:
    from event_streams import sqs

    return {"reason": sqs.safe_text(reason, 1000), "source_message_id": sqs.safe_text(envelope.message_id, 256),
            "source_queue": queue_url}


def _with_originals(envelope: Envelope, body: str, ours: Attributes) -> Attributes:
    """``ours``, then the message's original attributes in their order, each one while the copy keeps at most
    ``MAX_SQS_ATTRIBUTES`` attributes and SQS can take it (``sqs.MAX_BATCH_BYTES``); an original named like one of
    ours is dropped (ours win)."""
    from event_streams import sqs

    attributes: Attributes = dict(ours)
    for a in envelope.sqs_attributes or ():
        if len(attributes) >= MAX_SQS_ATTRIBUTES:
            break
        if a.name in attributes:
            continue
        candidate = {**attributes, a.name: (a.data_type, a.value)}
        if sqs.message_bytes(body, candidate) <= sqs.MAX_BATCH_BYTES:
            attributes = candidate
    return attributes


def _dlq_copy(queue_url: str, envelope: Envelope, reason: str) -> DlqCopy:
    """The copy of a dead letter for the DLQ: the original body when SQS can take it with our attributes, else a
    stand-in (``_stand_in``).

    Attributes: ours (``reason``, ``source_message_id``, ``source_queue``; and ``body_kept_in`` on a stand-in) win
    on a name clash; then the message's original String/Number attributes (``Envelope.sqs_attributes``), in their
    order, as many as fit: never more than 10 attributes in all (SQS's limit) and never over SQS's message size
    (``sqs.MAX_BATCH_BYTES``, body included): the body goes first, and an original that does not fit after it is
    left out.
    """
    from event_streams import sqs

    ours = _ours(queue_url, envelope, reason)
    body = envelope.body or ""
    if not body or sqs.message_bytes(body, ours) > sqs.MAX_BATCH_BYTES:
        return _stand_in(queue_url, envelope, reason)
    return envelope.message_id, body, _with_originals(envelope, body, ours)


def _stand_in(queue_url: str, envelope: Envelope, reason: str) -> DlqCopy:
    """A dead letter's copy without its body: the message id and where the body is kept (attributes as in
    ``_dlq_copy``, with ``body_kept_in``)."""
    size = envelope.body_omitted_bytes or len((envelope.body or "").encode("utf-8"))
    body = json.dumps({"dead_letter": envelope.message_id, "body_bytes": size, "body_kept_in": "dead_letters"})
    ours = {**_ours(queue_url, envelope, reason), "body_kept_in": "dead_letters"}
    return envelope.message_id, body, _with_originals(envelope, body, ours)


def send_sqs_messages(queue_url: str, messages: Sequence[tuple[str, str, Mapping[str, str]]]) -> None:
    """Send ``(id, body, string attributes)`` triples in batches of 10 and 256 KiB; raise ``sqs.SendFailed`` (naming
    the ids that were sent) if SQS refused or failed any."""
    from event_streams import sqs

    refused = sqs.send_messages(queue_url, messages, aws_conn_id=config.AWS_CONN_ID)
    if refused:
        ids = {m for m, _ in refused}
        raise sqs.SendFailed(f"SQS refused {len(refused)} message(s) to {queue_url}: {refused[:3]}",
                             [m[0] for m in messages if m[0] not in ids])


# --- Kafka ---------------------------------------------------------------------------------------------------------
def settle_kafka(dlq_topic: str, envelopes: Sequence[Envelope], dead_letters: Sequence[Mapping[str, Any]]) -> None:
    """After the run's effects are committed: dead letters to the DLQ topic (original key, bytes and headers, then
    headers ``reason`` and ``source_message_id``), flushed, then the consumed offsets committed (streaming trigger
    only)."""
    from include.event_pipelines.messages import raw_bytes, raw_headers, raw_key

    if dead_letters:
        from airflow.providers.apache.kafka.hooks.produce import KafkaProducerHook

        by_id = {e.message_id: e for e in envelopes}
        producer = KafkaProducerHook(kafka_config_id=config.KAFKA_CONN_ID).get_producer()
        errors: list[str] = []
        for d in dead_letters:
            env = by_id.get(d["message_id"])
            if env is None:
                continue
            producer.produce(
                dlq_topic,
                key=raw_key(env),
                value=raw_bytes(env),
                headers=[*raw_headers(env), ("reason", str(d["reason"]).encode()),
                         ("source_message_id", env.message_id.encode())],
                on_delivery=lambda err, msg: errors.append(str(err)) if err is not None else None,
            )
        if producer.flush(30) or errors:
            raise RuntimeError(f"dead letters not acknowledged by {dlq_topic}: {errors[:3]}")
    if config.streaming_kafka():
        commit_kafka_offsets(envelopes)


def _by_group(envelopes: Sequence[Envelope]) -> dict[str | None, list[Envelope]]:
    by_group: dict[str | None, list[Envelope]] = {}
    for e in envelopes:
        if e.source == "kafka" and e.topic is not None:
            by_group.setdefault(e.group_id, []).append(e)
    return by_group


@contextmanager
def _group_consumer(group: str | None, envelopes: Sequence[Envelope]) -> Iterator[tuple[Any, Any]]:
    """A consumer in ``group`` (else the connection's group) and its hook, closed on leaving."""
    from event_streams.kafka_offsets import SafeKafkaConsumerHook

    hook = SafeKafkaConsumerHook(topics=sorted({e.topic for e in envelopes if e.topic}),
                                 kafka_config_id=config.KAFKA_CONN_ID, group_id=group)
    consumer = hook.get_conn
    try:
        yield consumer, hook
    finally:
        consumer.close()


def hold_unsettled(envelopes: Sequence[Envelope], dag_id: str = "", wait_seconds: float = 0.0) -> list[Envelope]:
    """The run's messages without the Kafka records that would overtake an unsettled one.

    Per-partition order is the contract (the key picks the partition): a record is applied only after every record
    before it in its partition. A record is late when an offset before it is neither settled (``kafka_settled`` and
    the committed offset) nor in this run (``event_streams.kafka_offsets.in_order``). Runs overlap
    (``max_active_runs`` > 1), so a late record is usually in the run before this one, still working: this run waits
    for it to settle (``_await_earlier_runs``, at most ``wait_seconds``). What is still late then (a run failed on
    it) is held: not settled, so the committed offset stays and the watcher reads it again, after the failed run's
    records, once it has stood still for ``KAFKA_REDELIVERY_SECONDS``. What the runs committed (the events database)
    usually settles the question, waiting included; the broker is asked only when it does not.
    """
    from event_streams.kafka_offsets import in_order, settled_in_database, settled_through

    held: list[Envelope] = []
    for group, members in _by_group(envelopes).items():
        partitions = {(e.topic, e.partition) for e in members if e.topic is not None and e.partition is not None}
        known = settled_in_database(engine(), group, partitions) if group else {}
        waited = False
        if known.keys() >= partitions:  # the runs' own records answer: no broker call unless still late after
            late = in_order(members, known)[1]
            if late and group and wait_seconds > 0:
                late, waited = _await_earlier_runs(group, members, known, dag_id, wait_seconds), True
            if not late:
                continue
        with _group_consumer(group, members) as (consumer, hook):
            through = settled_through(engine(), consumer, hook.effective_config["group.id"], partitions,
                                      from_beginning=hook.from_beginning)
        late = in_order(members, through)[1]
        if late and group and wait_seconds > 0 and not waited:
            late = _await_earlier_runs(group, members, through, dag_id, wait_seconds)
        held += late
    if not held:
        return list(envelopes)
    log.warning("held %d record(s) behind an earlier record of their partition that no run has settled yet; the "
                "watcher reads them again after it: %s", len(held), [e.message_id for e in held[:5]])
    skip = {id(e) for e in held}
    return [e for e in envelopes if id(e) not in skip]


def _await_earlier_runs(group: str, members: Sequence[Envelope], through: Mapping[tuple[str, int], int],
                        dag_id: str, wait_seconds: float, poll_seconds: float = 0.2) -> list[Envelope]:
    """The records of ``members`` still late once the runs before this one have settled theirs (the events
    database, polled every ``poll_seconds``). Stops waiting after ``wait_seconds``, or as soon as a record before a
    late one in its partition is unsettled because its run of this DAG failed for good (``message_failures``): it
    comes back only when the watcher reads it again, so waiting would gain nothing."""
    from event_streams.kafka_offsets import in_order, settled_in_database
    from include.event_pipelines import redelivery

    started = time.monotonic()
    partitions = {(e.topic, e.partition) for e in members if e.topic is not None and e.partition is not None}
    while True:
        known = settled_in_database(engine(), group, partitions)
        reach = {key: max(through.get(key, -1), known.get(key, -1)) for key in through.keys() | known.keys()}
        late = in_order(members, reach)[1]
        first_late: dict[tuple[str, int], int] = {}
        for e in late:
            if e.topic is not None and e.partition is not None and e.offset is not None:
                key = (e.topic, e.partition)
                first_late[key] = min(first_late.get(key, e.offset), e.offset)
        failed = redelivery.failed_offsets(engine(), dag_id, first_late) if first_late else {}
        blocked = any(reach.get(key, 0) <= offset < first_late[key] for key, offs in failed.items() for offset in offs)
        waited = time.monotonic() - started
        if not late or blocked or waited >= wait_seconds:
            if waited >= poll_seconds:
                log.info("waited %.1fs for the runs before this one to settle their records; %d still late%s",
                         waited, len(late), " (behind a run that failed for good)" if blocked else "")
            return late
        time.sleep(poll_seconds)


def commit_kafka_offsets(envelopes: Sequence[Envelope]) -> dict[tuple[str, int], int]:
    """Record this run's offsets as settled and commit, per partition, the contiguous low watermark of settled
    offsets (``event_streams.kafka_offsets.commit_settled``): never past a record that no run settled, never
    backwards. Each record counts in the consumer group its watcher read it for (``Envelope.group_id``; records
    without one, in the connection's ``group.id``)."""
    from event_streams.kafka_offsets import commit_settled

    committed: dict[tuple[str, int], int] = {}
    for group, members in _by_group(envelopes).items():
        with _group_consumer(group, members) as (consumer, hook):
            committed |= commit_settled(engine(), consumer, hook.effective_config["group.id"], members,
                                        from_beginning=hook.from_beginning)
    return committed
