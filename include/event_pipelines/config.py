"""Env-driven settings shared by every pipeline: connections, the SQS queue URL prefix, watchers, redelivery, bounds.

Each pipeline's own settings (queues, topics, limits) are in its folder's ``settings.py``. Defaults are right for
``astro dev start`` with ``docker-compose.override.yml``; the native runner (``devstack``) exports ``localhost``
endpoints; for real AWS / a managed Kafka, set them in ``.env`` (see ``.env_example``).
"""

from __future__ import annotations

import os

AWS_CONN_ID: str = os.getenv("EVENTS_AWS_CONN_ID", "aws_default")
KAFKA_CONN_ID: str = os.getenv("EVENTS_KAFKA_CONN_ID", "kafka_default")
DB_CONN_ID: str = os.getenv("EVENTS_DB_CONN_ID", "events_db")

# Everything before the queue name in a queue URL: ElasticMQ locally, https://sqs.<region>.amazonaws.com/<acct> on AWS.
SQS_QUEUE_URL_PREFIX: str = os.getenv("SQS_QUEUE_URL_PREFIX", "http://sqs:9324/000000000000").rstrip("/")

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

# --- runs that fail for good (README "Delivery guarantees") ---
# A message whose run failed for good (every retry) is delivered again; once it has been in this many failed runs,
# its next delivery dead-letters it with the last run's error instead of processing it (like SQS maxReceiveCount).
MAX_FAILED_RUNS: int = int(os.getenv("MAX_FAILED_RUNS", "3"))
# SQS: after a run failed for good, its undeleted messages become visible again after this long (not the run's
# whole SQS_VISIBILITY_TIMEOUT).
SQS_REDELIVERY_DELAY_SECONDS: int = int(os.getenv("SQS_REDELIVERY_DELAY_SECONDS", "30"))
# Kafka: when a partition's committed offset stays behind what the watcher has read for this long (a run that
# failed for good never settles its records), the watcher reads again from the committed offset.
KAFKA_REDELIVERY_SECONDS: float = float(os.getenv("KAFKA_REDELIVERY_SECONDS", "120"))

# --- bounds on what one message and one asset event may carry ---
MAX_MESSAGE_BYTES: int = int(os.getenv("MAX_MESSAGE_BYTES", str(256 * 1024)))  # larger: dead-lettered
MAX_EVENT_BYTES: int = int(os.getenv("MAX_EVENT_BYTES", str(1024 * 1024)))  # message bodies per asset event
