"""The watcher trigger of each source, in one place, with a one-line switch between the two designs.

``WATCHER_TRIGGERS=stream`` (default): ``StreamingSqsTrigger`` / ``StreamingKafkaTrigger`` from
``include/event_pipelines/triggers.py``. ``WATCHER_TRIGGERS=stock``: ``MessageQueueTrigger`` with the provider
triggers (``SqsSensorTrigger`` / ``AwaitMessageTrigger``), SQS made safe and fast (no delete on reception, long
polling). ``WATCHER_TRIGGERS=guide``: ``MessageQueueTrigger`` exactly as in Astronomer's guide, with the provider's
defaults (``waiter_delay=60``, ``wait_time_seconds=1``, ``max_messages=5``, delete on reception; Kafka
``poll_interval=5``): the benchmark's baseline, not for production.

The stock Kafka path cannot meet this project's guarantee: ``AwaitMessageTrigger`` commits the offset before the
trigger event is stored, so a triggerer crash in between loses the record. It also rejoins the consumer group for
every record. The stock SQS path is made safe here (``delete_message_on_reception=False``; the run deletes), but it
yields at most 10 messages and then exits. Figures: README "Delivery guarantees" and "Performance".
"""

from __future__ import annotations

from collections.abc import Sequence

from airflow.triggers.base import BaseEventTrigger

from include.event_pipelines import config


def _stock() -> bool:
    return config.WATCHER_TRIGGERS in ("stock", "guide")


def sqs_watcher_trigger(queue_url: str) -> BaseEventTrigger:
    if _stock():
        from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger

        tuned = {} if config.WATCHER_TRIGGERS == "guide" else {
            "max_messages": config.SQS_MAX_MESSAGES,
            "wait_time_seconds": config.SQS_WAIT_TIME_SECONDS,  # long poll instead of ...
            "waiter_delay": 0,  # ... the provider's 60 s sleep after an empty poll
            "visibility_timeout": config.SQS_VISIBILITY_TIMEOUT,
            "delete_message_on_reception": False,  # deleted by the run, once its effect is durable
        }
        return MessageQueueTrigger(scheme="sqs", sqs_queue=queue_url, aws_conn_id=config.AWS_CONN_ID, **tuned)
    from include.event_pipelines.triggers import StreamingSqsTrigger

    return StreamingSqsTrigger(
        sqs_queue=queue_url,
        aws_conn_id=config.AWS_CONN_ID,
        max_messages_per_event=config.SQS_MESSAGES_PER_EVENT,
        linger_seconds=config.EVENT_LINGER_SECONDS,
        wait_time_seconds=config.SQS_WAIT_TIME_SECONDS,
        visibility_timeout=config.SQS_RECEIVE_VISIBILITY_TIMEOUT,
        handover_after_seconds=config.SQS_RECEIVE_VISIBILITY_TIMEOUT / 2,
        handover_visibility_timeout=config.SQS_VISIBILITY_TIMEOUT,
        max_event_bytes=config.MAX_EVENT_BYTES,
        max_message_bytes=config.MAX_MESSAGE_BYTES,  # messages.MAX_BODY_BYTES
    )


def kafka_watcher_trigger(topics: Sequence[str]) -> BaseEventTrigger:
    if _stock():
        from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger

        tuned = {} if config.WATCHER_TRIGGERS == "guide" else {
            "poll_timeout": 1,
            "poll_interval": config.KAFKA_POLL_INTERVAL,
        }
        return MessageQueueTrigger(
            scheme="kafka",
            topics=list(topics),
            apply_function="include.event_pipelines.messages.kafka_message_to_event",
            kafka_config_id=config.KAFKA_CONN_ID,
            **tuned,
        )
    from include.event_pipelines.triggers import StreamingKafkaTrigger

    return StreamingKafkaTrigger(
        topics=list(topics),
        kafka_config_id=config.KAFKA_CONN_ID,
        max_messages_per_event=config.KAFKA_MESSAGES_PER_EVENT,
        linger_seconds=config.EVENT_LINGER_SECONDS,
        redelivery_seconds=config.KAFKA_REDELIVERY_SECONDS,
        max_event_bytes=config.MAX_EVENT_BYTES,
    )


def uses_streaming_triggers() -> bool:
    return not _stock()
