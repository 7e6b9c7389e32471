"""Pre-loads the inference model in the processes that fork task processes (README "Performance").

LocalExecutor forks its workers from the scheduler, and each task process from a worker; a Celery worker forks its
pool the same way. Loaded there once, scikit-learn and the packaged model are inherited by every task process
instead of being imported and loaded by each (about 1 s per task here). Other Airflow processes skip it, and so do
the forked children (LocalExecutor workers, task processes), which load plugins again but inherit the model.
"""

import multiprocessing
import sys

from airflow.plugins_manager import AirflowPlugin

from include.inference_execution import hooks

if sys.argv[1:2] in (["scheduler"], ["celery"]) and multiprocessing.parent_process() is None:
    hooks.warm_up()


class InferenceExecutionPlugin(AirflowPlugin):
    name = "inference_execution"
