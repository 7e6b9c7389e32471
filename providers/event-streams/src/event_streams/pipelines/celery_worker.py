"""``[celery] celery_config_options`` of this project (set in the Dockerfile): Airflow's own Celery settings, unchanged,
plus one signal handler. A Celery worker's task processes are forks of its pool, itself forked from the worker's main
process, which never loads the plugins; so each task process loaded them, and with them scikit-learn and the inference
model: ~4 s of every task at rest on CeleryExecutor (Astro's executor) against ~0.1 s on LocalExecutor, whose task
processes inherit them from the scheduler. Loaded once in the main process before the pool starts, they are inherited
instead. Figures: docs/scale-out.md.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from celery.signals import worker_init

# The very object Airflow builds from its [celery] settings (the provider keeps it as is when it is this one).
CELERY_CONFIG: dict[str, Any] = DEFAULT_CELERY_CONFIG


@worker_init.connect
def load_plugins_before_the_pool_forks(**_: Any) -> None:
    """What a task process does first (``integrate_macros_plugins`` loads every plugin, once per process), done in
    the worker's main process: the pool and every task process fork from it with the plugins' imports and
    warm-ups (``plugins/inference_execution_plugin.py`` loads the model) already done."""
    from airflow.sdk.plugins_manager import integrate_macros_plugins

    integrate_macros_plugins()
