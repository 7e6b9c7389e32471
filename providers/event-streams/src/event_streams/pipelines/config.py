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

# SQS: the run keeps its messages invisible this long (its budget) and deletes each by receipt handle once done.
SQS_VISIBILITY_TIMEOUT: int = int(os.getenv("SQS_VISIBILITY_TIMEOUT", "300"))
# While a task works on its messages, it extends their visibility to SQS_VISIBILITY_TIMEOUT this often (a heartbeat):
# a task may take as long as it needs, up to SQS's cap of 12 hours from the message's receipt.
SQS_HEARTBEAT_SECONDS: float = float(os.getenv("SQS_HEARTBEAT_SECONDS", str(SQS_VISIBILITY_TIMEOUT / 3)))


def sqs_queue_url(queue_name: str) -> str:
    """Full URL of a queue in the configured account/endpoint."""
    return f"{SQS_QUEUE_URL_PREFIX}/{queue_name}"


# The watchers' MessageQueueTrigger schemes are this project's streaming triggers: "sqs+stream" / "kafka+stream"
# (providers/event-streams: many messages per event, acknowledged after the run's effect is durable). Their tuning
# (SQS_MESSAGES_PER_EVENT, EVENT_LINGER_SECONDS, ...) is read from the environment: providers/event-streams/README.md.
# The benchmark's baseline sets EVENT_STREAMS_TRIGGERS=stock: the same schemes then build the stock triggers of
# Astronomer's guide, which acknowledge on their own, so the runs must not (streaming() below).


def streaming() -> bool:
    """Whether the watchers are the streaming triggers, which leave acknowledging (SQS deletes, Kafka commits) to
    the run and keep a handed-over SQS message invisible until its run takes it."""
    from event_streams.queues import streaming as provider_streaming

    return provider_streaming()


# --- runs that fail for good (docs/delivery-guarantees.md "Runs that fail for good") ---
# A message whose run failed for good (every retry) is delivered again; once it has been in this many failed runs,
# its next delivery dead-letters it with the last run's error instead of processing it (like SQS maxReceiveCount).
MAX_FAILED_RUNS: int = int(os.getenv("MAX_FAILED_RUNS", "3"))
# SQS: after a run failed for good, its undeleted messages become visible again after this long (not the run's
# whole SQS_VISIBILITY_TIMEOUT).
SQS_REDELIVERY_DELAY_SECONDS: int = int(os.getenv("SQS_REDELIVERY_DELAY_SECONDS", "30"))
# Kafka: the streaming watcher reads again from a committed offset that stayed behind it for
# KAFKA_REDELIVERY_SECONDS (default 120; read by the trigger, providers/event-streams).
# Kafka, runs that overlap (max_active_runs > 1): a run whose records follow records of the run before it (same
# partition) waits this long at most for that run to settle them before applying its own; what is still unsettled
# then is held (kafka_source.hold_unsettled). A run that failed for good ends the wait at once.
KAFKA_ORDER_WAIT_SECONDS: float = float(os.getenv("KAFKA_ORDER_WAIT_SECONDS", "120"))

# --- bounds on what one message and one asset event may carry ---
MAX_MESSAGE_BYTES: int = int(os.getenv("MAX_MESSAGE_BYTES", str(256 * 1024)))  # larger: dead-lettered
# MAX_EVENT_BYTES (default 1 MiB): message bodies per asset event, read by the streaming triggers.
