"""Gauges of what a watcher's broker holds, sent by the streaming triggers through Airflow's metrics system (StatsD,
DogStatsD or OpenTelemetry, as Airflow's ``[metrics]`` says; nothing when metrics are off) every ``gauge_seconds``:

* ``event_streams.sqs.<queue>.visible`` / ``.in_flight`` / ``.delayed`` (tag ``queue``);
* ``event_streams.kafka.<group>.<topic>.lag`` (end offset - the group's committed offset, summed over the
  partitions) and ``.unread`` (end offset - the watcher's read position) (tags ``group``, ``topic``).

Asking the broker is the trigger's business (it has the client); these functions only turn answers into gauges.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PREFIX = "event_streams"
SQS_ATTRIBUTES = {"visible": "ApproximateNumberOfMessages", "in_flight": "ApproximateNumberOfMessagesNotVisible",
                  "delayed": "ApproximateNumberOfMessagesDelayed"}


def _stats() -> Any:
    from airflow.sdk.observability import stats

    return stats


def sqs(queue_url: str, attributes: Mapping[str, Any]) -> dict[str, int]:
    """Send the queue's gauges from a ``GetQueueAttributes`` answer; returns what was sent."""
    queue = queue_url.rstrip("/").rsplit("/", 1)[-1]
    values = {name: int(attributes.get(attr, 0)) for name, attr in SQS_ATTRIBUTES.items()}
    stats = _stats()
    for name, value in values.items():
        stats.gauge(f"{PREFIX}.sqs.{queue}.{name}", value, tags={"queue": queue})
    return values


def kafka(group: str, ends: Mapping[tuple[str, int], int], committed: Mapping[tuple[str, int], int],
          positions: Mapping[tuple[str, int], int]) -> dict[str, dict[str, int]]:
    """Send lag and unread per topic of ``group``; a partition with no committed offset (or no position) counts
    from its end, i.e. not at all. Returns what was sent, per topic."""
    per_topic: dict[str, dict[str, int]] = {}
    for (topic, partition), end in ends.items():
        figures = per_topic.setdefault(topic, {"lag": 0, "unread": 0})
        done = committed.get((topic, partition), -1)
        read = positions.get((topic, partition), -1)
        figures["lag"] += max(0, end - done) if done >= 0 else 0
        figures["unread"] += max(0, end - read) if read >= 0 else 0
    stats = _stats()
    for topic, figures in per_topic.items():
        for name, value in figures.items():
            stats.gauge(f"{PREFIX}.kafka.{group}.{topic}.{name}", value, tags={"group": group, "topic": topic})
    return per_topic
