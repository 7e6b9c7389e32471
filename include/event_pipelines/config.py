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

# Which watcher triggers the DAGs use: "stream" (this project's StreamingSqsTrigger / StreamingKafkaTrigger: many
# messages per event, acknowledged after the run's effect is durable) or "stock" (MessageQueueTrigger with the
# provider triggers). See include/event_pipelines/watchers.py and README "Delivery guarantees".
WATCHER_TRIGGERS: str = os.getenv("WATCHER_TRIGGERS", "stream")
# Streaming triggers: at most this many messages per asset event, gathered for at most this long.
SQS_MESSAGES_PER_EVENT: int = int(os.getenv("SQS_MESSAGES_PER_EVENT", "100"))
KAFKA_MESSAGES_PER_EVENT: int = int(os.getenv("KAFKA_MESSAGES_PER_EVENT", "500"))
EVENT_LINGER_SECONDS: float = float(os.getenv("EVENT_LINGER_SECONDS", "0.25"))
# Streaming SQS trigger: how long a received message stays invisible at first (the bound on how long a message
# received by a triggerer that then died waits before it is received again). Half of it after the message's event
# was handed to the triggerer, the trigger extends it to SQS_VISIBILITY_TIMEOUT, the run's budget.
SQS_RECEIVE_VISIBILITY_TIMEOUT: int = int(os.getenv("SQS_RECEIVE_VISIBILITY_TIMEOUT", "20"))

IOT_DLQ_TOPIC: str = os.getenv("IOT_DLQ_TOPIC", "iot-readings-dlq")
DELIVERY_DLQ: str = os.getenv("DELIVERY_DLQ", "data-deliveries-dlq")
INFERENCE_REQUEST_DLQ: str = os.getenv("INFERENCE_REQUEST_DLQ", "inference-requests-dlq")
