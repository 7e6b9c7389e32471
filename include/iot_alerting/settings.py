"""Env-driven settings of IoT alerting (shared ones: ``event_streams.pipelines.config``)."""

from __future__ import annotations

import os

IOT_READINGS_TOPIC: str = os.getenv("IOT_READINGS_TOPIC", "iot-readings")
IOT_ALERTS_TOPIC: str = os.getenv("IOT_ALERTS_TOPIC", "iot-alerts")
IOT_DLQ_TOPIC: str = os.getenv("IOT_DLQ_TOPIC", "iot-readings-dlq")
# The watcher's own consumer group (named after the DAG): a copy of the DAG on the same topic needs another one.
IOT_KAFKA_GROUP_ID: str = os.getenv("IOT_KAFKA_GROUP_ID", "airflow.iot_alerting")

# Readings this far from the time they are processed are dead-lettered.
IOT_MAX_READING_AGE_SECONDS: float = float(os.getenv("IOT_MAX_READING_AGE_SECONDS", str(7 * 24 * 3600)))
IOT_MAX_CLOCK_SKEW_SECONDS: float = float(os.getenv("IOT_MAX_CLOCK_SKEW_SECONDS", "300"))
