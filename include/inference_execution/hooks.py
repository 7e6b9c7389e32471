"""What inference execution needs from Airflow: the model backend and the SQS reply sender."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from include.event_pipelines.airflow_io import send_sqs_messages
from include.inference_execution import settings


def predictor(backend: str = settings.INFERENCE_BACKEND) -> Any:
    from include.inference_execution.model import HttpEndpointPredictor, LocalModelPredictor

    if backend == "local":
        return LocalModelPredictor.load()
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
