"""Streaming SQS and Kafka watcher triggers, registered with common-messaging's ``MessageQueueTrigger``.

``MessageQueueTrigger(scheme="sqs+stream", ...)`` and ``MessageQueueTrigger(scheme="kafka+stream", ...)``; see
README.md. ``event_streams.pipelines`` is what the DAGs call to take and settle a run's messages. Kept import-light:
Airflow loads this module to discover providers.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.3.0"


def get_provider_info() -> dict[str, Any]:
    """The ``apache_airflow_provider`` entry point (validated against Airflow's provider_info schema)."""
    return {
        "package-name": "airflow-provider-event-streams",
        "name": "Event streams",
        "description": "Streaming SQS and Kafka watcher triggers for ``MessageQueueTrigger`` "
                       "(schemes ``sqs+stream`` and ``kafka+stream``): many messages per asset event, "
                       "acknowledged by the run once its effect is durable.",
        "versions": [__version__],
        "queues": [
            "event_streams.queues.SqsStreamMessageQueueProvider",
            "event_streams.queues.KafkaStreamMessageQueueProvider",
        ],
    }
