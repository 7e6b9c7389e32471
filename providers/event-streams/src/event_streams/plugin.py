"""The provider's Airflow plugin, registered by the distribution itself (entry point ``airflow.plugins``): a project
that installs the provider needs no file in ``plugins/`` for it, in Docker and in standalone mode alike.

* ``stranded_events``: the scheduler listener that re-queues asset events no DAG run consumed (apache/airflow#56050).
* ``sqlite_clock``: sub-second ``now()`` for Airflow's metadata database on SQLite (on import).
* ``MessageQueueTrigger``'s module is imported once in every Airflow process that loads plugins. It discovers the
  queue providers when it is imported (about 0.6 s), and every DAG file imports it; loaded in the scheduler before
  LocalExecutor forks its workers, every task process inherits it instead of paying that on each parse of its DAG
  file (the project's docs/performance.md).
* ``preload``: in a scheduler running LocalExecutor or a Celery worker, the modules a pipeline's task imports on each
  run, imported once before the task processes are forked; in the API server, SQLAlchemy's mappers configured at
  start instead of on the first task's ``run`` call (the same page).
"""

from __future__ import annotations

import sys

import airflow.providers.common.messaging.triggers.msg_queue  # noqa: F401  (pre-import, see above)
from airflow.plugins_manager import AirflowPlugin

from event_streams import preload, sqlite_clock, stranded_events  # noqa: F401  (sqlite_clock: on import)

if preload.forks_task_processes_here():
    preload.preload()
if preload.configures_mappers_at_start(sys.argv[1:2]):
    preload.configure_mappers()


class EventStreamsPlugin(AirflowPlugin):
    name = "event_streams"
    listeners = [stranded_events]
