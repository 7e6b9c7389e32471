"""Env-driven settings of the data-delivery ETL (shared ones: ``event_streams.pipelines.config``)."""

from __future__ import annotations

import os
from pathlib import Path

# include/data of the project this folder is in: /usr/local/airflow/include/data in the Astro image, the project's own
# folder under `astro dev start --standalone` or the native runner.
DATA_DIR: Path = Path(__file__).resolve().parents[1] / "data"

DELIVERY_QUEUE: str = os.getenv("DELIVERY_QUEUE", "data-deliveries")
DELIVERY_DLQ: str = os.getenv("DELIVERY_DLQ", "data-deliveries-dlq")

# Where bad delivered files are moved with a reason file (any ObjectStoragePath URI: file://, s3://, ...).
QUARANTINE_URI: str = os.getenv("QUARANTINE_URI", (DATA_DIR / "quarantine").as_uri())

# Where delivered files may be read from (docs/hostile-input.md): comma-separated roots; a delivery whose URI
# (resolved, symlinks included, for file://) is not under one of them is dead-lettered and its file never touched.
# Add s3://bucket/prefix roots for S3 (needs s3fs installed).
ETL_LANDING_ROOTS: tuple[str, ...] = tuple(
    r.strip() for r in os.getenv("ETL_LANDING_ROOTS", (DATA_DIR / "landing").as_uri()).split(",")
    if r.strip()
)
ETL_MAX_FILE_BYTES: int = int(os.getenv("ETL_MAX_FILE_BYTES", str(256 * 1024 * 1024)))
ETL_BATCH_SIZE: int = int(os.getenv("ETL_BATCH_SIZE", "50"))  # deliveries per mapped task
# How far ahead of now a notice's delivered_at may be (docs/hostile-input.md); a notice further ahead is
# dead-lettered: it would otherwise win over every later correction of its orders.
ETL_MAX_CLOCK_SKEW_SECONDS: float = float(os.getenv("ETL_MAX_CLOCK_SKEW_SECONDS", "300"))
