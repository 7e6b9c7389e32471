"""Tables of the data-delivery ETL, on the shared ``db.metadata`` (created by ``db.ensure_schema``)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Integer, String, Table, Text, UniqueConstraint

from event_streams.pipelines.db import UtcDateTime, metadata, utcnow

orders = Table(
    "orders",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("customer_id", String(64), nullable=False),
    Column("amount_cents", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("ordered_at", UtcDateTime(), nullable=False),
    Column("delivery_id", String(128), nullable=False),
    Column("source_sha256", String(64), nullable=False),
    Column("delivered_at", UtcDateTime(), nullable=False),  # of the notice: a row is replaced only by a newer one
)

etl_deliveries = Table(  # ledger: one row per distinct file content and per delivery_id ever loaded
    "etl_deliveries",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("delivery_id", String(128), nullable=False),
    Column("uri", Text, nullable=False),
    Column("rows_loaded", Integer, nullable=False),
    Column("message_id", String(256), nullable=False),
    Column("producer", String(128), nullable=False),
    Column("loaded_at", UtcDateTime(), nullable=False, default=utcnow),
    UniqueConstraint("delivery_id", name="uq_etl_deliveries_delivery_id"),  # a reused id never loads twice
)

etl_quarantine = Table(
    "etl_quarantine",
    metadata,
    Column("delivery_id", String(128), primary_key=True),
    Column("message_id", String(256), nullable=False),
    Column("uri", Text, nullable=False),
    Column("quarantined_uri", Text),
    Column("reason", Text, nullable=False),
    Column("recorded_at", UtcDateTime(), nullable=False, default=utcnow),
)
