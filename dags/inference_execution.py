"""
## Inference execution (Amazon SQS)

Prediction requests arrive on the `inference-requests` queue. The first task answers up to
`INFERENCE_BATCH_SIZE` (1,000) requests itself, so a lone request costs one task; a larger run maps the rest, one
task per batch. Each batch is one model call: the packaged scikit-learn failure classifier
(`include/inference_execution/models/failure_classifier/v1`, trained by `train.py` beside it on generated data, and
pre-loaded by `plugins/inference_execution_plugin.py` so task processes inherit it), or a remote endpoint named by
the `inference_endpoint` connection when `INFERENCE_BACKEND=http`. Predictions go to `inference_predictions`
(keyed on `request_id`), then one reply per request is sent to `inference-replies` with the request id as
`correlation_id`, then the requests are deleted.

SQS because requests are independent jobs: per-message acknowledgement, a visibility timeout sized to the run,
and a redrive policy to `inference-requests-dlq` are exactly a work queue's needs, and no ordering is required.
`max_active_runs=4`: runs overlap, each with its own messages. A run that fails for good gives its requests back;
after `MAX_FAILED_RUNS` failed runs a request is dead-lettered with the error
(docs/delivery-guarantees.md "Runs that fail for good").

Example request (schema: `include/inference_execution/schemas.py:InferenceRequest`):

```json
{"request_id": "req-000123", "submitted_at": "2026-11-24T08:00:00Z",
 "features": {"temperature_c": 78.0, "vibration_mm_s": 11.2, "pressure_kpa": 101.0, "rpm": 3200}}
```
"""

from __future__ import annotations

from typing import Any

from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger
from airflow.sdk import Asset, AssetWatcher, dag, task
from pendulum import datetime, duration

from event_streams.pipelines import airflow_io, config
from include.inference_execution import clients, settings
from include.inference_execution.pipeline import answer_requests

REQUEST_QUEUE_URL = config.sqs_queue_url(settings.INFERENCE_REQUEST_QUEUE)
REPLY_QUEUE_URL = config.sqs_queue_url(settings.INFERENCE_REPLY_QUEUE)

# Watcher trigger: "sqs+stream" is this project's streaming trigger (providers/event-streams); the run deletes.
request_trigger = MessageQueueTrigger(
    scheme="sqs+stream", sqs_queue=REQUEST_QUEUE_URL, aws_conn_id=config.AWS_CONN_ID,
    kept_conn_id=config.DB_CONN_ID,  # the events database, where it keeps a body too large for an event
)
inference_requests = Asset(
    "sqs_inference_requests", watchers=[AssetWatcher(name="inference_requests_watcher", trigger=request_trigger)]
)
source = airflow_io.SqsSource(REQUEST_QUEUE_URL, config.sqs_queue_url(settings.INFERENCE_REQUEST_DLQ))


@dag(
    schedule=[inference_requests],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=4,
    doc_md=__doc__,
    default_args={"owner": "ml-platform", "retries": 3, "retry_delay": duration(seconds=10),
                  "on_failure_callback": airflow_io.on_failure(inference_requests, source)},
    tags=["event-driven", "sqs", "ml-inference"],
)
def inference_execution() -> None:
    @task
    def answer_first_batch(**context: Any) -> list[list[dict[str, Any]]]:
        """Take every request of this run and answer the first `INFERENCE_BATCH_SIZE` here (a lone request needs no
        second task); return the rest in batches, one `answer_batch` task each (none, and skipped, most of the time)."""
        messages = airflow_io.run_messages(context, inference_requests, source, produced_at_field="submitted_at")
        with source.holding(airflow_io.to_envelopes(messages)):  # all of them invisible until this task ends
            answer(messages[: settings.INFERENCE_BATCH_SIZE])
        return airflow_io.map_batches(messages[settings.INFERENCE_BATCH_SIZE :], settings.INFERENCE_BATCH_SIZE)

    @task(multiple_outputs=False)  # one XCom for the outcome, not one per key
    def answer_batch(batch: list[dict[str, Any]]) -> dict[str, Any]:
        with source.holding(airflow_io.to_envelopes(batch)):  # its own batch: a failure gives back only these
            return answer(batch)

    answer_batch.expand(batch=answer_first_batch())


def answer(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """With the model loaded once per process: answer every request, store, reply, then delete the requests."""
    envelopes = airflow_io.to_envelopes(batch)
    outcome = answer_requests(
        envelopes, airflow_io.engine(), clients.predictor(), clients.sqs_reply_sender(REPLY_QUEUE_URL),
        after_effect=airflow_io.fault_point,
    )
    source.settle(envelopes, outcome.dead_letters)
    return outcome.as_dict()


inference_execution()
