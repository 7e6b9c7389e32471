"""Registers the project's scheduler listener (see include/event_pipelines/stranded_events.py).

It also imports ``MessageQueueTrigger``'s module once in every Airflow process that loads plugins. That module
discovers the queue providers when it is imported (about 0.6 s here), and every DAG file imports it. Loaded in the
scheduler before LocalExecutor forks its workers, every task process then inherits it instead of paying that on
each parse of its DAG file (docs/performance.md).

On SQLite it gives the metadata database's ``now()`` sub-second precision (``include/event_pipelines/sqlite_clock.py``):
without it a queued run waits for the next whole second.
"""

import airflow.providers.common.messaging.triggers.msg_queue  # noqa: F401  (pre-import, see above)
from airflow.plugins_manager import AirflowPlugin

from include.event_pipelines import sqlite_clock, stranded_events  # noqa: F401  (sqlite_clock: on import)


class EventPipelinesPlugin(AirflowPlugin):
    name = "event_pipelines"
    listeners = [stranded_events]
