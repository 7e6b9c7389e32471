"""``[core] hostname_callable`` of the HA profile: the machine's name and the stack component (``host:worker-2``).

On one machine every scheduler, triggerer and worker has the same host name; with the component in it, Airflow's
own records (``job.hostname``, ``task_instance.hostname``) say which process owns a watcher or ran a task.
"""

from __future__ import annotations

import os
import socket


def component_hostname() -> str:
    return f"{socket.gethostname()}:{os.environ.get('DEVSTACK_COMPONENT', 'airflow')}"
