"""What inference execution needs from Airflow: the model backend and the SQS reply sender."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from event_streams.pipelines.sqs_source import send_sqs_messages
from include.inference_execution import settings

log = logging.getLogger(__name__)


@cache
def local_model() -> Any:
    """The packaged model, loaded (scikit-learn imported, SHA-256 checked) once per process."""
    from include.inference_execution.model import LocalModelPredictor

    return LocalModelPredictor.load()


def warm_up() -> None:
    """Load the local model now, in a process whose forks run tasks (plugins/inference_execution_plugin.py): each
    task then inherits it instead of importing scikit-learn and loading it. Never raises: a task loads it itself."""
    if settings.INFERENCE_BACKEND != "local":
        return
    try:
        log.info("inference model pre-loaded: %s", local_model().version)
    except Exception:
        log.exception("pre-loading the inference model failed; each task will load it")


def predictor(backend: str = settings.INFERENCE_BACKEND) -> Any:
    from include.inference_execution.model import HttpEndpointPredictor

    if backend == "local":
        return local_model()
    if backend == "http":
        from airflow.providers.http.hooks.http import HttpHook

        hook = HttpHook(method="POST", http_conn_id=settings.INFERENCE_HTTP_CONN_ID)

        def post_json(body: dict[str, Any]) -> dict[str, Any]:
            response = hook.run("predict", json=body, extra_options={"timeout": 60})
            return response.json()

        return HttpEndpointPredictor(post_json=post_json)
    raise ValueError(f"INFERENCE_BACKEND must be 'local' or 'http', not {backend!r}")


def sqs_reply_sender(queue_url: str) -> Callable[[Sequence[Any]], None]:
    """Send inference replies, each with its ``correlation_id`` as a message attribute."""

    def send(replies: Sequence[Any]) -> None:
        send_sqs_messages(
            queue_url,
            [(r.correlation_id, r.model_dump_json(), {"correlation_id": r.correlation_id}) for r in replies],
        )

    return send
