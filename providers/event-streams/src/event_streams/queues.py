"""Queue providers for ``MessageQueueTrigger``: ``sqs+stream`` and ``kafka+stream``.

Only ``base_provider`` is imported here: importing ``msg_queue`` (which discovers these classes) would be circular.
The trigger module is imported when a trigger is built, not when providers are discovered.

``EVENT_STREAMS_TRIGGERS=stock`` (in every Airflow component's environment) makes the two schemes build the stock
provider triggers instead (``SqsSensorTrigger``, ``AwaitMessageTrigger``, given only the arguments they take), and
``shared`` builds Airflow 3.3's shared-stream ``KafkaSharedStreamTrigger`` for Kafka (no SQS one has shipped:
``SqsSensorTrigger``): the benchmark's baselines, so that DAGs name one scheme and carry no switch.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from airflow.providers.common.messaging.providers.base_provider import BaseMessageQueueProvider

if TYPE_CHECKING:
    from airflow.triggers.base import BaseEventTrigger

SQS_STREAM_SCHEME = "sqs+stream"
KAFKA_STREAM_SCHEME = "kafka+stream"
TRIGGERS_ENV = "EVENT_STREAMS_TRIGGERS"
TRIGGER_KINDS = ("stream", "stock", "shared")


def streaming() -> bool:
    """Whether the ``+stream`` schemes build this distribution's streaming triggers (``EVENT_STREAMS_TRIGGERS``
    unset or ``stream``), not the stock ones (``stock``, ``shared``), which acknowledge on their own before the run."""
    return trigger_kind() == "stream"


def trigger_kind() -> str:
    """``EVENT_STREAMS_TRIGGERS``: ``stream`` (the default), ``stock`` or ``shared``."""
    kind = os.getenv(TRIGGERS_ENV, "stream") or "stream"
    if kind not in TRIGGER_KINDS:
        raise ValueError(f"{TRIGGERS_ENV}={kind!r}: expected one of {', '.join(TRIGGER_KINDS)}")
    return kind


def stock(trigger: type[BaseEventTrigger]) -> Callable[..., BaseEventTrigger]:
    """Build ``trigger`` from the keyword arguments it takes, leaving out the streaming triggers' own (the events
    database, the consumer group): ``MessageQueueTrigger`` passes its keyword arguments whole."""
    accepted = set(inspect.signature(trigger).parameters)

    def build(**kwargs: Any) -> BaseEventTrigger:
        return trigger(**{k: v for k, v in kwargs.items() if k in accepted})

    return build


class SqsStreamMessageQueueProvider(BaseMessageQueueProvider):
    """``scheme="sqs+stream"`` -> :class:`event_streams.triggers.StreamingSqsTrigger` (same keyword arguments),
    or ``SqsSensorTrigger`` with ``EVENT_STREAMS_TRIGGERS=stock`` or ``shared``."""

    scheme = SQS_STREAM_SCHEME

    def trigger_class(self) -> Callable[..., BaseEventTrigger]:  # type: ignore[override]  # it is only called
        if not streaming():
            from airflow.providers.amazon.aws.triggers.sqs import SqsSensorTrigger

            return stock(SqsSensorTrigger)
        from event_streams.triggers import StreamingSqsTrigger

        return StreamingSqsTrigger


class KafkaStreamMessageQueueProvider(BaseMessageQueueProvider):
    """``scheme="kafka+stream"`` -> :class:`event_streams.triggers.StreamingKafkaTrigger` (same keyword arguments),
    or ``AwaitMessageTrigger`` with ``EVENT_STREAMS_TRIGGERS=stock``, ``KafkaSharedStreamTrigger`` with ``shared``."""

    scheme = KAFKA_STREAM_SCHEME

    def trigger_class(self) -> Callable[..., BaseEventTrigger]:  # type: ignore[override]  # it is only called
        if trigger_kind() == "shared":
            from airflow.providers.apache.kafka.triggers.shared_stream import KafkaSharedStreamTrigger

            return stock(KafkaSharedStreamTrigger)
        if not streaming():
            from airflow.providers.apache.kafka.triggers.await_message import AwaitMessageTrigger

            return stock(AwaitMessageTrigger)
        from event_streams.triggers import StreamingKafkaTrigger

        return StreamingKafkaTrigger
