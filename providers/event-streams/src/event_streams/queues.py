"""Queue providers for ``MessageQueueTrigger``: ``sqs+stream`` and ``kafka+stream``.

Only ``base_provider`` is imported here: importing ``msg_queue`` (which discovers these classes) would be circular.
The trigger module is imported when a trigger is built, not when providers are discovered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.providers.common.messaging.providers.base_provider import BaseMessageQueueProvider

if TYPE_CHECKING:
    from airflow.triggers.base import BaseEventTrigger

SQS_STREAM_SCHEME = "sqs+stream"
KAFKA_STREAM_SCHEME = "kafka+stream"


class SqsStreamMessageQueueProvider(BaseMessageQueueProvider):
    """``scheme="sqs+stream"`` -> :class:`event_streams.triggers.StreamingSqsTrigger` (same keyword arguments)."""

    scheme = SQS_STREAM_SCHEME

    def trigger_class(self) -> type[BaseEventTrigger]:
        from event_streams.triggers import StreamingSqsTrigger

        return StreamingSqsTrigger


class KafkaStreamMessageQueueProvider(BaseMessageQueueProvider):
    """``scheme="kafka+stream"`` -> :class:`event_streams.triggers.StreamingKafkaTrigger` (same keyword arguments)."""

    scheme = KAFKA_STREAM_SCHEME

    def trigger_class(self) -> type[BaseEventTrigger]:
        from event_streams.triggers import StreamingKafkaTrigger

        return StreamingKafkaTrigger
