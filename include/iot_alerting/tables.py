"""Tables of IoT alerting, on the shared ``db.metadata`` (created by ``db.ensure_schema``)."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Float, Integer, String, Table, Text

from event_streams.pipelines.db import UtcDateTime, metadata

iot_readings = Table(
    "iot_readings",
    metadata,
    Column("message_id", String(256), primary_key=True),
    Column("device_id", String(128), nullable=False),
    Column("sensor", String(32), nullable=False),
    Column("value", Float, nullable=False),
    Column("unit", String(16), nullable=False),
    Column("ts", UtcDateTime(), nullable=False),
)

iot_device_state = Table(
    "iot_device_state",
    metadata,
    Column("device_id", String(128), primary_key=True),
    Column("sensor", String(32), primary_key=True),
    Column("alerting", Boolean, nullable=False),
    Column("last_value", Float, nullable=False),
    Column("last_ts", UtcDateTime(), nullable=False),
    Column("changed_at", UtcDateTime(), nullable=False),
)

iot_alerts = Table(  # every alert the state changes caused, keyed on the dedup key the alert carries
    "iot_alerts",
    metadata,
    Column("dedup_key", String(256), primary_key=True),
    Column("device_id", String(128), nullable=False),
    Column("sensor", String(32), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("value", Float, nullable=False),
    Column("ts", UtcDateTime(), nullable=False),
    Column("message_id", String(256), nullable=False),
)

iot_alert_outbox = Table(  # alerts stored with their state change and not yet published; deleted once acknowledged
    "iot_alert_outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),  # publishing order: the order they were stored
    Column("dedup_key", String(256), nullable=False, unique=True),
    Column("event", Text, nullable=False),  # the AlertEvent as JSON, exactly as it is published
)
