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
INFERENCE_BATCH_SIZE: int = int(os.getenv("INFERENCE_BATCH_SIZE", "200"))

# SQS watcher: long poll instead of the provider's 60 s sleep; receive without deleting and keep messages
# invisible long enough for the run to finish; the run's last step deletes them by receipt handle.
SQS_WAIT_TIME_SECONDS: int = int(os.getenv("SQS_WAIT_TIME_SECONDS", "20"))
SQS_MAX_MESSAGES: int = int(os.getenv("SQS_MAX_MESSAGES", "10"))
SQS_VISIBILITY_TIMEOUT: int = int(os.getenv("SQS_VISIBILITY_TIMEOUT", "300"))

# Kafka watcher: how long to sleep after a message the apply function rejects (ours rejects none).
KAFKA_POLL_INTERVAL: float = float(os.getenv("KAFKA_POLL_INTERVAL", "0.5"))


def sqs_queue_url(queue_name: str) -> str:
    """Full URL of a queue in the configured account/endpoint."""
    return f"{SQS_QUEUE_URL_PREFIX}/{queue_name}"
