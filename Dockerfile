# The -base image is Astro Runtime 3.3-2 without its ONBUILD steps. They are written out below, in the same order but
# for one change: the queue provider (providers/event-streams) is copied before requirements.txt is installed,
# because requirements.txt installs it by path. The ONBUILD steps would install requirements.txt before the project
# is copied, and the path would not exist yet. `astro dev start --standalone` runs none of this file: it installs
# requirements.txt from the project folder, where the path exists.
FROM astrocrpublic.azurecr.io/runtime:3.3-2-base

COPY packages.txt .
USER root
RUN /usr/local/bin/install-system-packages
COPY requirements.txt .
COPY --chown=astro:0 providers/event-streams providers/event-streams
RUN /usr/local/bin/install-python-dependencies
USER astro
COPY --chown=astro:0 . .

# Airflow settings for event-driven DAGs. The native runner (`make up`, `make bench`, the tests) applies these same
# ENV lines (devstack/settings.py reads them), so what docs/performance.md measured is what ships.

# How long an idle scheduler naps between loops (default 1 s). It bounds how soon a new asset event becomes a DAG run
# and how soon a queued run starts: 0.2 s takes about 1 s off publish -> run start (docs/performance.md).
ENV AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME=0.2

# A task whose supervisor died (a LocalExecutor worker, a child of the scheduler, or a Celery worker) stops
# heartbeating and stays "running" until its last heartbeat is this old; then it is failed and retried. The default,
# 300 s, blocked iot_alerting (max_active_runs=1) for five minutes after a scheduler crash. A task's supervisor
# heartbeats every few seconds, so 60 s is a dozen missed heartbeats.
ENV AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT=60
# A task's supervisor sees its process exit only between waits of up to [workers] min_heartbeat_interval (default 5 s).
# When the task's sockets close a moment before its process can be reaped, the supervisor waits out the whole interval
# with nothing left to watch, and the task holds its executor slot: under load a quarter of the tasks here held theirs
# 5 s past their end (docs/performance.md). 1 s bounds that; the cost is one heartbeat per running task per second.
ENV AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL=1
# ...but a restarted scheduler takes over the tasks of the dead one (and so their heartbeat check) only when it looks
# for orphans: at start, too soon (the dead one's heartbeat is younger than [scheduler] scheduler_health_check_threshold,
# 30 s), then every orphaned_tasks_check_interval (default 300 s). 30 s bounds it: the orphaned task is reset and retried.
ENV AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL=30

# With two or more triggerers, the watchers of one that died are taken over by another once its last heartbeat (every
# 5 s, [triggerer] job_heartbeat_sec) is this old; until then no message is consumed. The default, 30 s, is six missed
# heartbeats; 15 s is three, and bounds the takeover to about 20 s (docs/scale-out.md, measured by make test-ha).
ENV AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD=15

# CeleryExecutor (Astro's): each Celery worker loads the plugins (and so the inference model) once, before forking its
# pool, instead of every task process loading them (~4 s per task at rest; docs/scale-out.md). Airflow's own Celery
# settings are unchanged. LocalExecutor does not read it.
ENV AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS=event_streams.pipelines.celery_worker.CELERY_CONFIG
