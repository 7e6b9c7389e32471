"""Env-driven constants shared by the DAGs, the native runner and the tests.

Defaults are right for ``astro dev start`` with ``docker-compose.override.yml`` (services ``kafka`` and ``sqs``
on Astro's network). The native runner (``devstack``) exports the same variables with ``localhost`` endpoints;
for real AWS / a managed Kafka, set them in ``.env`` (see ``.env_example``).
"""

from __future__ import annotations

import os

AWS_CONN_ID: str = os.getenv("EVENTS_AWS_CONN_ID", "aws_default")
KAFKA_CONN_ID: str = os.getenv("EVENTS_KAFKA_CONN_ID", "kafka_default")
DB_CONN_ID: str = os.getenv("EVENTS_DB_CONN_ID", "events_db")
INFERENCE_HTTP_CONN_ID: str = os.getenv("INFERENCE_HTTP_CONN_ID", "inference_endpoint")

# Everything before the queue name in a queue URL: ElasticMQ locally, https://sqs.<region>.amazonaws.com/<acct> on AWS.
SQS_QUEUE_URL_PREFIX: str = os.getenv("SQS_QUEUE_URL_PREFIX", "http://sqs:9324/000000000000").rstrip("/")

DELIVERY_QUEUE: str = os.getenv("DELIVERY_QUEUE", "data-deliveries")
INFERENCE_REQUEST_QUEUE: str = os.getenv("INFERENCE_REQUEST_QUEUE", "inference-requests")
INFERENCE_REPLY_QUEUE: str = os.getenv("INFERENCE_REPLY_QUEUE", "inference-replies")

IOT_READINGS_TOPIC: str = os.getenv("IOT_READINGS_TOPIC", "iot-readings")
IOT_ALERTS_TOPIC: str = os.getenv("IOT_ALERTS_TOPIC", "iot-alerts")

# Where bad delivered files are moved with a reason file (any ObjectStoragePath URI: file://, s3://, ...).
QUARANTINE_URI: str = os.getenv("QUARANTINE_URI", "file:///usr/local/airflow/include/data/quarantine")

# "local" answers with the packaged scikit-learn model; "http" posts to the endpoint of INFERENCE_HTTP_CONN_ID.
INFERENCE_BACKEND: str = os.getenv("INFERENCE_BACKEND", "local")
INFERENCE_BATCH_SIZE: int = int(os.getenv("INFERENCE_BATCH_SIZE", "1000"))

# SQS: the run keeps its messages invisible this long (its budget) and deletes each by receipt handle once done.
SQS_VISIBILITY_TIMEOUT: int = int(os.getenv("SQS_VISIBILITY_TIMEOUT", "300"))


def sqs_queue_url(queue_name: str) -> str:
    """Full URL of a queue in the configured account/endpoint."""
    return f"{SQS_QUEUE_URL_PREFIX}/{queue_name}"

# The MessageQueueTrigger scheme of the watchers: "sqs+stream" / "kafka+stream" are this project's streaming
# triggers (providers/event-streams: many messages per event, acknowledged after the run's effect is durable);
# "sqs" / "kafka" are the stock provider triggers, as in Astronomer's guide. The streaming triggers read their
# tuning (SQS_MESSAGES_PER_EVENT, EVENT_LINGER_SECONDS, ...) from the environment: providers/event-streams/README.md.
SQS_WATCHER_SCHEME: str = os.getenv("SQS_WATCHER_SCHEME", "sqs+stream")
KAFKA_WATCHER_SCHEME: str = os.getenv("KAFKA_WATCHER_SCHEME", "kafka+stream")


def streaming_kafka() -> bool:
    """Whether the Kafka watcher is the streaming trigger (which leaves committing the offsets to the run)."""
    return KAFKA_WATCHER_SCHEME == "kafka+stream"


IOT_DLQ_TOPIC: str = os.getenv("IOT_DLQ_TOPIC", "iot-readings-dlq")
DELIVERY_DLQ: str = os.getenv("DELIVERY_DLQ", "data-deliveries-dlq")
INFERENCE_REQUEST_DLQ: str = os.getenv("INFERENCE_REQUEST_DLQ", "inference-requests-dlq")

# --- runs that fail for good (README "Delivery guarantees") ---
# A message whose run failed for good (every retry) is delivered again; once it has been in this many failed runs,
# its next delivery dead-letters it with the last run's error instead of processing it (like SQS maxReceiveCount).
MAX_FAILED_RUNS: int = int(os.getenv("MAX_FAILED_RUNS", "3"))
# SQS: after a run failed for good, its undeleted messages become visible again after this long (not the run's
# whole SQS_VISIBILITY_TIMEOUT).
SQS_REDELIVERY_DELAY_SECONDS: int = int(os.getenv("SQS_REDELIVERY_DELAY_SECONDS", "30"))
# Kafka: the streaming watcher reads again from a committed offset that stayed behind it for
# KAFKA_REDELIVERY_SECONDS (default 120; read by the trigger, providers/event-streams).

# --- bounds on what one message and one asset event may carry ---
MAX_MESSAGE_BYTES: int = int(os.getenv("MAX_MESSAGE_BYTES", str(256 * 1024)))  # larger: dead-lettered
# MAX_EVENT_BYTES (default 1 MiB): message bodies per asset event, read by the streaming triggers.

# --- data-delivery ETL: where delivered files may be read from (README "Confinement") ---
# Comma-separated roots; a delivery whose URI (resolved, symlinks included, for file://) is not under one of them
# is dead-lettered and its file never touched. Add s3://bucket/prefix roots for S3 (needs s3fs installed).
ETL_LANDING_ROOTS: tuple[str, ...] = tuple(
    r.strip() for r in os.getenv("ETL_LANDING_ROOTS", "file:///usr/local/airflow/include/data/landing").split(",")
    if r.strip()
)
ETL_MAX_FILE_BYTES: int = int(os.getenv("ETL_MAX_FILE_BYTES", str(256 * 1024 * 1024)))
ETL_BATCH_SIZE: int = int(os.getenv("ETL_BATCH_SIZE", "50"))  # deliveries per mapped task

# --- IoT: readings this far from the time they are processed are dead-lettered ---
IOT_MAX_READING_AGE_SECONDS: float = float(os.getenv("IOT_MAX_READING_AGE_SECONDS", str(7 * 24 * 3600)))
IOT_MAX_CLOCK_SKEW_SECONDS: float = float(os.getenv("IOT_MAX_CLOCK_SKEW_SECONDS", "300"))
