"""Pre-loads the inference model in the processes that fork task processes (docs/performance.md).

LocalExecutor forks its workers from the scheduler, and each task process from a worker; a Celery worker forks its
pool the same way, and loads the plugins before it does (`event_streams.pipelines.celery_worker`). Loaded there
once, scikit-learn and the packaged model are inherited by every task process instead of being imported and loaded
by each (1 s per task at rest here, more under load). Other Airflow processes skip it (a CeleryExecutor scheduler
too: it forks no task), and so do the forked children (LocalExecutor workers, task processes), which may load
plugins again but inherit the model (`event_streams.preload.forks_task_processes_here`).
"""

from airflow.plugins_manager import AirflowPlugin

from event_streams.preload import forks_task_processes_here
from include.inference_execution import clients

if forks_task_processes_here():
    clients.warm_up()


class InferenceExecutionPlugin(AirflowPlugin):
    name = "inference_execution"
