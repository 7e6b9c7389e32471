"""What the data-delivery ETL needs from Airflow: storage paths (``ObjectStoragePath``: file://, s3://, ...)."""

from __future__ import annotations

from typing import Any


def storage_path(uri: str) -> Any:
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(uri)
