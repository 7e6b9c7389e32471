"""
## Data-delivery ETL (Amazon SQS)

A producer drops a CSV file (local `file://` or `s3://`, read with `ObjectStoragePath`) and sends a
"data ready" message to the `data-deliveries` queue. The watcher turns the message into an asset event; this DAG
reads the file only from a landing root (`ETL_LANDING_ROOTS`; a regular file of at most `ETL_MAX_FILE_BYTES`),
validates message and file (checksum, header, every row, row count), transforms (integer cents, ISO currency,
UTC timestamps), and loads the file into the `orders` table of the `events_db` connection in **one transaction
with a ledger row unique on the file's SHA-256 and on its delivery_id**, so the same file delivered twice changes
nothing, and a delivery_id reused for other content is dead-lettered. An order is replaced only by a newer
delivery. A bad file is moved to the quarantine location with a `.reason.json` and an `etl_quarantine` row; a bad
message (or a URI outside the landing roots) is kept in `dead_letters` with its reason. The first task loads up to
`ETL_BATCH_SIZE` (50) deliveries itself, so a small run is one task; a larger run maps the rest, one task per batch.
Each loading task emits one `events_db.orders` asset event with what it loaded in its `extra` (`rows_loaded` is 0 when
every message of its batch was dead-lettered or quarantined; a consumer that only wants new rows checks it).

Delivery: messages are received **without deletion**; each task keeps its messages invisible while it works (a
heartbeat, `SQS_HEARTBEAT_SECONDS`) and deletes each by receipt handle only after its load/quarantine is committed
(a bad message first goes to `data-deliveries-dlq` with its reason). A task that fails for good gives back the
messages it held; after
`MAX_FAILED_RUNS` failed runs a message is dead-lettered with the error
(docs/delivery-guarantees.md "Runs that fail for good").

Example message (schema: `include/data_delivery_etl/schemas.py:DeliveryNotice`):

```json
{"delivery_id": "orders-0001", "uri": "file:///usr/local/airflow/include/data/landing/orders-0001.csv",
 "sha256": "<64 hex>", "row_count": 3, "producer": "shop-export", "delivered_at": "2026-11-24T08:00:00Z"}
```
"""

from __future__ import annotations

from typing import Any

from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger
from airflow.sdk import Asset, AssetWatcher, dag, get_current_context, task
from pendulum import datetime, duration

from event_streams.pipelines import airflow_io, config
from include.data_delivery_etl import clients, settings
from include.data_delivery_etl import pipeline as etl

QUEUE_URL = config.sqs_queue_url(settings.DELIVERY_QUEUE)
DLQ_URL = config.sqs_queue_url(settings.DELIVERY_DLQ)

# Watcher trigger: "sqs+stream" is this project's streaming trigger (providers/event-streams); the run deletes.
delivery_trigger = MessageQueueTrigger(
    scheme="sqs+stream", sqs_queue=QUEUE_URL, aws_conn_id=config.AWS_CONN_ID,
    kept_conn_id=config.DB_CONN_ID,  # the events database, where it keeps a body too large for an event
)
deliveries = Asset(
    "sqs_data_deliveries", watchers=[AssetWatcher(name="data_deliveries_watcher", trigger=delivery_trigger)]
)
orders_table = Asset("events_db.orders")  # a plain outlet, not an AssetAlias: docs/performance.md says why
source = airflow_io.SqsSource(QUEUE_URL, DLQ_URL)


@dag(
    schedule=[deliveries],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=4,
    doc_md=__doc__,
    default_args={"owner": "data-platform", "retries": 3, "retry_delay": duration(seconds=10),
                  "on_failure_callback": airflow_io.on_failure(deliveries, source)},
    tags=["event-driven", "sqs", "etl"],
)
def data_delivery_etl() -> None:
    @task(outlets=[orders_table])
    def load_first_batch(**context: Any) -> list[list[dict[str, Any]]]:
        """Every "data ready" message of this run (all coalesced asset events): load the first `ETL_BATCH_SIZE` here;
        return the rest in batches, one `load_deliveries` task each (none, and skipped, for a small run)."""
        messages = airflow_io.run_messages(context, deliveries, source, produced_at_field="delivered_at")
        with source.holding(airflow_io.to_envelopes(messages)):  # all of them invisible until this task ends
            load(messages[: settings.ETL_BATCH_SIZE], context)
        return airflow_io.map_batches(messages[settings.ETL_BATCH_SIZE :], settings.ETL_BATCH_SIZE)

    @task(outlets=[orders_table], map_index_template="{{ batch_label }}")
    def load_deliveries(batch: list[dict[str, Any]], **context: Any) -> list[dict[str, Any]]:
        get_current_context()["batch_label"] = f"{batch[0]['message_id']} +{len(batch) - 1}"  # type: ignore[typeddict-unknown-key]
        with source.holding(airflow_io.to_envelopes(batch)):  # its own batch: a failure gives back only these
            return load(batch, context)

    load_deliveries.expand(batch=load_first_batch())


def load(batch: list[dict[str, Any]], context: Any) -> list[dict[str, Any]]:
    """Validate, transform and load each delivered file (or quarantine or dead-letter it), acknowledge the messages,
    then put what was loaded in the `events_db.orders` event this task emits when it succeeds."""
    envelopes = airflow_io.to_envelopes(batch)
    results = etl.process_batch(
        envelopes, airflow_io.engine(), clients.storage_path, clients.storage_path(settings.QUARANTINE_URI),
        after_effect=airflow_io.fault_point,
    )
    source.settle(envelopes, [d for o in results for d in o.dead_letters()])
    outcomes = [o.as_dict() for o in results]
    context["outlet_events"][orders_table].extra = etl.summarize(outcomes)
    return outcomes


data_delivery_etl()
