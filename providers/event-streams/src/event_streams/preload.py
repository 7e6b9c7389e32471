"""What a process whose forks run tasks imports before it forks, so that every task process inherits it.

LocalExecutor forks its workers from the scheduler and each task process from a worker; a Celery worker forks its pool
the same way. The pipelines' core imports its brokers' and sink's modules inside its functions, so that parsing a DAG
file stays fast; a task process then imported them on every run (the SQLite hook alone took 0.15 s per task here).
The provider's plugin (``event_streams.plugin``) imports them once in the scheduler or Celery worker instead.

The API server configures SQLAlchemy's mappers (every relationship of Airflow's models) on its first ORM query, which is
the first task's ``run`` call: 2 s here, while that task waited. The plugin has it done when the API server starts.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import sys
from collections.abc import Iterable, Sequence

log = logging.getLogger(__name__)

#: What a pipeline's task imports on each run. The Kafka and SQS modules need the provider's extras: a module whose
#: dependency is not installed is skipped.
TASK_MODULES: tuple[str, ...] = (
    "event_streams.pipelines.airflow_io",
    "event_streams.pipelines.redelivery",
    "event_streams.kept_bodies",
    "event_streams.kafka_offsets",
    "event_streams.sqs",
    "airflow.providers.apache.kafka.hooks.produce",
    "airflow.providers.amazon.aws.hooks.sqs",
    "airflow.providers.sqlite.hooks.sqlite",
    "airflow.providers.postgres.hooks.postgres",
    "airflow.providers.standard.decorators.python",  # ``@task``, which every DAG file of the pipelines uses
)


def forks_task_processes(command: Sequence[str], executor: str, forked: bool) -> bool:
    """Whether a process's forks run tasks, so that what it imports is inherited by them: a Celery worker's main
    process (``airflow celery worker``), or a scheduler whose executors (``[core] executor``, aliases and module paths
    allowed) include LocalExecutor; a CeleryExecutor scheduler forks none. Never a forked child (``forked``): it
    inherits what its parent loaded."""
    if forked or not command:
        return False
    if command[0] == "celery":
        return True
    names = {item.strip().rsplit(":", 1)[-1].rsplit(".", 1)[-1] for item in executor.split(",")}
    return command[0] == "scheduler" and "LocalExecutor" in names


def forks_task_processes_here() -> bool:
    """``forks_task_processes`` for this process: its command line, ``[core] executor``, and whether it was forked."""
    from airflow.configuration import conf

    forked = multiprocessing.parent_process() is not None
    return forks_task_processes(sys.argv[1:2], conf.get("core", "executor"), forked)


def configures_mappers_at_start(command: Sequence[str]) -> bool:
    """Whether the process is an API server (``airflow api-server``), whose first task would otherwise wait while
    SQLAlchemy configures Airflow's mappers. Other components query the ORM as they start anyway; task processes
    never query it, and must not pay for it."""
    return command[:1] == ["api-server"]


def configure_mappers() -> None:
    """Configure SQLAlchemy's mappers now. Never raises: the first query configures them otherwise."""
    try:
        from sqlalchemy.orm import configure_mappers as configure

        configure()
    except Exception:
        log.exception("configuring the ORM's mappers at start failed; the first query will")


def preload(modules: Iterable[str] = TASK_MODULES) -> list[str]:
    """Import ``modules``; returns those imported. Never raises: a module that fails is left to the task to import
    (and to fail there, with its own error)."""
    loaded = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:  # an extra that is not installed
            log.debug("not pre-loading %s: %s", name, exc)
        except Exception:
            log.exception("pre-loading %s failed; each task will import it", name)
        else:
            loaded.append(name)
    log.info("pre-loaded %d modules for the task processes forked from here", len(loaded))
    return loaded
