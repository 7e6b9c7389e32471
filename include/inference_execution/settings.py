"""Env-driven settings of inference execution (shared ones: ``event_streams.pipelines.config``)."""

from __future__ import annotations

import os

INFERENCE_REQUEST_QUEUE: str = os.getenv("INFERENCE_REQUEST_QUEUE", "inference-requests")
INFERENCE_REPLY_QUEUE: str = os.getenv("INFERENCE_REPLY_QUEUE", "inference-replies")
INFERENCE_REQUEST_DLQ: str = os.getenv("INFERENCE_REQUEST_DLQ", "inference-requests-dlq")

# "local" answers with the packaged scikit-learn model; "http" posts to the endpoint of INFERENCE_HTTP_CONN_ID.
INFERENCE_BACKEND: str = os.getenv("INFERENCE_BACKEND", "local")
INFERENCE_HTTP_CONN_ID: str = os.getenv("INFERENCE_HTTP_CONN_ID", "inference_endpoint")
INFERENCE_BATCH_SIZE: int = int(os.getenv("INFERENCE_BATCH_SIZE", "1000"))
