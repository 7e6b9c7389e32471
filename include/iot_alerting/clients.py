"""What IoT alerting needs from Airflow: the Kafka producer of alert events."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from event_streams.pipelines import config


def kafka_publisher(topic: str) -> Callable[[Sequence[Any]], None]:
    """A function that produces pydantic events (key: ``device_id``, header ``dedup_key``) and waits for acks.

    The producer is created on first use, so a run whose readings trip nothing never connects.
    """

    @cache
    def producer() -> Any:
        from airflow.providers.apache.kafka.hooks.produce import KafkaProducerHook

        return KafkaProducerHook(kafka_config_id=config.KAFKA_CONN_ID).get_producer()

    def publish(events: Sequence[Any]) -> None:
        errors: list[str] = []

        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(f"{msg.key()!r}: {err}")

        for ev in events:
            producer().produce(
                topic,
                key=ev.device_id.encode(),
                value=ev.model_dump_json().encode(),
                headers={"dedup_key": ev.dedup_key.encode()},
                on_delivery=on_delivery,
            )
            producer().poll(0)
        remaining = producer().flush(30)
        if remaining or errors:
            raise RuntimeError(f"{remaining} alert(s) unacknowledged, {len(errors)} failed: {errors[:3]}")

    return publish
