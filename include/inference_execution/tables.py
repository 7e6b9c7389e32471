"""Tables of inference execution, on the shared ``db.metadata`` (created by ``db.ensure_schema``)."""

from __future__ import annotations

from sqlalchemy import Column, Float, String, Table

from event_streams.pipelines.db import UtcDateTime, metadata

predictions = Table(
    "inference_predictions",
    metadata,
    Column("request_id", String(128), primary_key=True),
    Column("message_id", String(256), nullable=False),
    Column("label", String(32), nullable=False),
    Column("probability", Float, nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("predicted_at", UtcDateTime(), nullable=False),
    Column("submitted_at", UtcDateTime()),
    Column("features_sha256", String(64)),  # a request_id reused with other features is refused
    # Set once the reply is sent: a redelivered request is deleted without a second reply (a run that died between
    # sending and setting this replies again; the reply carries the request id as correlation_id).
    Column("replied_at", UtcDateTime()),
)
