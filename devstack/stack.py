"""The native local stack: real Kafka and ElasticMQ (``devstack.brokers``) and real Airflow processes.

    python -m devstack.stack up       # brokers + scheduler, dag-processor, triggerer, api-server; DAGs unpaused
    python -m devstack.stack down     # stops everything it started, by PID, whatever state it is in
    python -m devstack.stack status
    DEVSTACK_DB=postgres python -m devstack.stack up   # Airflow on a private PostgreSQL server instead of SQLite
    DEVSTACK_PROFILE=ha python -m devstack.stack up    # scale-out: 2 schedulers, 2 triggerers, 2 Celery workers

Each Airflow component is its own process in its own session (so ``down`` signals the whole group: LocalExecutor
workers, API workers), with a PID file and a log in ``.devstack/run``. Every process carries
``DEVSTACK_PROCESS_OF`` in its environment; ``down`` finishes with a sweep of any process still carrying it, so an
orphan (e.g. a task process of a scheduler that was ``kill -9``-ed) cannot survive. ``airflow standalone`` is not
used: SIGTERM orphans its children and it does not restart a dead triggerer.

Everything listens on 127.0.0.1 only (``LISTEN_HOST``): Kafka and ElasticMQ (``devstack.brokers``), the API server,
PostgreSQL (``devstack.postgres``). The scheduler and the triggerer run without their ``serve-logs`` servers, which
Airflow binds to every interface with no setting to change it; the API server reads the task and trigger logs
from the log folder they share on this machine.

The JWT secret of the components is in ``<state>/jwt_secret`` (mode 0600) and never printed: ``env`` and
``env-json`` give ``AIRFLOW__API_AUTH__JWT_SECRET_CMD`` (Airflow reads the file) instead, and leave out anything
else named like a secret and connections with a password (``printable_env``).

Connections come from ``airflow_settings.yaml`` with only the hosts overridden (``devstack.astro_project``).

``DEVSTACK_PROFILE=ha`` (``HA_COMPONENTS``, ``ha_env``) runs what a scale-out deployment runs: two schedulers, two
triggerers and two Celery workers (CeleryExecutor; broker: a private Redis server, ``devstack.redis``; results: the
metadata database), always on PostgreSQL. ``down`` stops every component it finds a PID file for, whatever the
profile is now.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from devstack import brokers, pipelines, postgres, redis
from devstack.astro_project import connection_env, dockerfile_env

ROOT = Path(__file__).resolve().parents[1]
# The Astro project the stack runs: this repository, or another one (the copy test runs a fresh scaffold with one
# pipeline copied in): its dags/, plugins/, Dockerfile ENV lines and airflow_settings.yaml connections.
PROJECT = Path(os.environ.get("DEVSTACK_PROJECT", ROOT)).resolve()
STATE = Path(os.environ.get("DEVSTACK_HOME", ROOT / ".devstack")).resolve()
RUN = STATE / "run"
CACHE = Path(os.environ.get("DEVSTACK_CACHE", ROOT / ".devstack" / "cache")).resolve()  # jars: shared by stacks
AIRFLOW_HOME = STATE / "airflow"
DATA = STATE / "data"
API_PORT = int(os.environ.get("DEVSTACK_API_PORT", "8080"))
# Airflow's metadata database: "sqlite" (the default, nothing to install) or "postgres" (what `astro dev start` runs;
# a private server from Debian's packages, see devstack/postgres.py). The pipelines' own sink stays `events_db`.
DB = os.environ.get("DEVSTACK_DB", "sqlite")
PG_DATA = STATE / "postgres"
# Which processes run: "default" (one of each, LocalExecutor) or "ha" (scale-out with CeleryExecutor and Redis,
# on PostgreSQL whatever DEVSTACK_DB says: SQLite takes one writer, and the schedulers need row-level locks).
PROFILE = os.environ.get("DEVSTACK_PROFILE", "default")
REDIS_DATA = STATE / "redis"
# The default profile's components (devstack.bench and the tests read it); `components()` gives the active profile's.
COMPONENTS = ("scheduler", "dag-processor", "triggerer", "api-server")
# "-2" runs a second copy: schedulers and triggerers share the work through the database (row locks, trigger
# assignment), Celery workers through the broker's queue. One dag-processor and one API server, as on Astro.
HA_COMPONENTS = ("scheduler", "scheduler-2", "dag-processor", "triggerer", "triggerer-2", "worker", "worker-2",
                 "api-server")
PROFILES: dict[str, tuple[str, ...]] = {"default": COMPONENTS, "ha": HA_COMPONENTS}
# Task processes per Celery worker: 2 workers x 4 = 8 slots, the two schedulers' [core] parallelism (4 each).
WORKER_CONCURRENCY = 4
# Stop order of `down`, by kind: nothing new is scheduled or deferred first; workers finish (or are killed with) their
# tasks before the API server they report to goes.
STOP_ORDER = ("scheduler", "triggerer", "dag-processor", "worker", "api-server")
# The watcher-driven DAGs to unpause and wait for: every pipeline found (devstack.pipelines), or DEVSTACK_DAG_IDS
# (comma-separated, for a project with fewer).
_DAG_IDS_ENV = os.environ.get("DEVSTACK_DAG_IDS")
DAG_IDS = tuple(_DAG_IDS_ENV.split(",")) if _DAG_IDS_ENV is not None else tuple(p.dag_id for p in pipelines.pipelines())
LISTEN_HOST = brokers.HOST  # every server of the stack binds this (loopback) address only
SQS_ENDPOINT = f"http://{brokers.HOST}:{brokers.SQS_PORT}"
KAFKA_BOOTSTRAP = f"{brokers.HOST}:{brokers.KAFKA_PORT}"


# Set only in the environment of the processes this stack starts (never read from the caller's environment),
# so the final sweep of ``down`` can find their orphans without touching anything else.
MARKER = "DEVSTACK_PROCESS_OF"


class StackError(RuntimeError):
    pass


JWT_SECRET_VAR = "AIRFLOW__API_AUTH__JWT_SECRET"
# Variables whose value is never printed (env, env-json), by name: Airflow's secrets and anything named like one
# (an AWS_SECRET_ACCESS_KEY or a token inherited from the caller's environment).
SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|PRIVATE_KEY|ACCESS_KEY|FERNET_KEY|API_KEY",
                         re.IGNORECASE)


def _secret_path() -> Path:
    return STATE / "jwt_secret"


def _secret() -> str:
    """One JWT secret shared by every component of this stack (the execution API checks task tokens with it).

    The file is created with mode 0600 from the start and filled before it appears under its name (written to an
    exclusive temporary file, then hard-linked into place): no moment where it is readable by others, or empty.
    """
    path = _secret_path()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)  # fails if another process created it meanwhile: theirs is kept
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    secret = path.read_text().strip()
    if not secret:
        raise StackError(f"{path} is empty: delete it (a new secret is made on the next start)")
    return secret


def components(profile: str | None = None) -> tuple[str, ...]:
    """The Airflow components of a profile (the active one, ``DEVSTACK_PROFILE``, by default)."""
    profile = PROFILE if profile is None else profile
    if profile not in PROFILES:
        raise StackError(f"DEVSTACK_PROFILE={profile!r}: use one of {', '.join(PROFILES)}")
    return PROFILES[profile]


def component_kind(name: str) -> str:
    """``scheduler-2`` -> ``scheduler``: a numbered copy runs the same command as the first one."""
    return re.sub(r"-\d+$", "", name)


def metadata_db() -> str:
    """The metadata database the stack runs on: the HA profile forces PostgreSQL."""
    return "postgres" if PROFILE == "ha" else DB


def metadata_db_url() -> str:
    db = metadata_db()
    if db == "postgres":
        return postgres.url()
    if db != "sqlite":
        raise StackError(f"DEVSTACK_DB={db!r}: use sqlite or postgres")
    return f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}"


def ha_env() -> dict[str, str]:
    """What the HA profile adds to ``airflow_env``: ``fixed`` always wins (what makes it this profile), ``tunables``
    are defaults the caller's environment may override (a fault test may want other bounds)."""
    fixed = {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": redis.url(),
        # Task states go to the metadata database (the provider's recommendation), not to the broker: one server
        # less to keep, and the database is already the HA deployment's shared state.
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{postgres.url()}",
        # Flower is not started; should someone run `airflow celery flower`, it binds loopback, not 0.0.0.0.
        "AIRFLOW__CELERY__FLOWER_HOST": LISTEN_HOST,
        # Two schedulers are safe only with SELECT ... FOR UPDATE (the default; never to be turned off here).
        "AIRFLOW__SCHEDULER__USE_ROW_LEVEL_LOCKING": "True",
        # "host:triggerer-2" in job.hostname and task_instance.hostname (devstack/hostname.py): on one machine that is
        # how the HA suite tells which triggerer owns the watchers and which worker ran a task.
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "devstack.hostname.component_hostname",
        "PYTHONPATH": os.pathsep.join(dict.fromkeys([str(PROJECT), str(ROOT)])),
    }
    tunables = {
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(WORKER_CONCURRENCY),
        # One message reserved per free process: a killed worker holds back no task it had not started yet, and a
        # busy worker does not sit on tasks the other one could run.
        "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
        # Ack a task's message when the task ends, not when it is received: a worker killed mid-task leaves the
        # message unacknowledged in Redis, and the broker hands it to the other worker (the provider's default,
        # pinned here because redelivery depends on it).
        "AIRFLOW__CELERY__TASK_ACKS_LATE": "True",
        # Workers record STARTED: a scheduler adopting a dead scheduler's tasks finds them by their Celery state.
        "AIRFLOW__CELERY__TASK_TRACK_STARTED": "True",
        # Redis has no acks of its own: kombu keeps a delivered message in an "unacked" set, and puts it back on the
        # queue once it is older than visibility_timeout (the provider's default is 24 h: a killed worker's task
        # would wait a day). 30 s bounds redelivery; a task running longer than that is delivered a second time,
        # which the provider drops (the task-instance is already running: TaskAlreadyRunningError -> Ignore).
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "30",
        # ...but the sweep that puts messages back runs every unacked_restore_interval (10 s) x
        # unacked_restore_throttle (every 10th call) = 100 s by default in kombu 5.7: every 5 s instead, so a killed
        # worker's unstarted task is back on the queue within 30 + 5 s (< 60 s) for the surviving worker.
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__UNACKED_RESTORE_INTERVAL": "5",
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__UNACKED_RESTORE_THROTTLE": "1",
        # The sweep holds a lock in Redis that expires after 300 s: a worker killed while holding it would stop
        # every sweep for 5 minutes. A sweep takes milliseconds; 10 s is ample.
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__UNACKED_MUTEX_EXPIRE": "10",
        # A task that had started when its worker died stays "running" (its redelivered message is dropped as
        # above) until its heartbeat is [scheduler] task_instance_heartbeat_timeout old, and a dead scheduler's
        # tasks are adopted at [scheduler] orphaned_tasks_check_interval: the Dockerfile ships both (60 s, 30 s)
        # for every profile, and airflow_env applies them.
    }
    return {**tunables, **{k: os.environ[k] for k in tunables if k in os.environ}, **fixed}


def airflow_env() -> dict[str, str]:
    """The environment of every Airflow process of the native stack (and of the publisher and the tests)."""
    env = {**dockerfile_env(PROJECT / "Dockerfile"), **os.environ}  # like a container's ENV: the environment overrides
    env.update(connection_env(PROJECT / "airflow_settings.yaml", sqlite_path=DATA / "events.db"))
    env.update(
        {
            MARKER: str(STATE),
            "PYTHONPATH": str(PROJECT),
            "AIRFLOW_HOME": str(AIRFLOW_HOME),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_db_url(),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            # LocalExecutor starts `parallelism` workers: 32 by default, far too many for 2 cores.
            "AIRFLOW__CORE__PARALLELISM": os.environ.get("DEVSTACK_PARALLELISM", "4"),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{API_PORT}/execution/",
            JWT_SECRET_VAR: _secret(),
            "AIRFLOW__API__PORT": str(API_PORT),
            "AIRFLOW__API__HOST": LISTEN_HOST,
            # Off by default; should someone enable it, its server binds this instead of 0.0.0.0.
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": LISTEN_HOST,
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT / "plugins"),
            "EVENTS_FAULTS_DIR": str(STATE / "faults"),
            # New DAG files show up within 10 s (Airflow's default: 300 s); listing the folder is cheap. Each file is
            # parsed again every [dag_processor] min_file_process_interval, Airflow's default 30 s (a file edited
            # since its last parse goes first anyway): every parse writes each DAG to the metadata DB, and on SQLite
            # the tasks' API calls wait for that write (docs/performance.md).
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "SQS_QUEUE_URL_PREFIX": f"{SQS_ENDPOINT}/000000000000",
            "QUARANTINE_URI": (DATA / "quarantine").as_uri(),
            "LANDING_DIR": str(DATA / "landing"),
            "ETL_LANDING_ROOTS": (DATA / "landing").as_uri(),
            "SQS_ENDPOINT_URL": SQS_ENDPOINT,
            "KAFKA_BOOTSTRAP": KAFKA_BOOTSTRAP,
        }
    )
    if os.environ.get("DEVSTACK_AUTH") == "passwords":
        # Sign-in required: users admin and viewer, their passwords generated by Airflow's simple auth manager into
        # the file below when the API server starts (the streams page's tests sign in as each). Default: everyone is
        # an admin, as with `astro dev start`.
        env.update({"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
                    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
                    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(AIRFLOW_HOME / "passwords.json")})
    if PROFILE == "ha":
        env.update(ha_env())
    return env


def _connection_has_credentials(value: str) -> bool:
    """Whether an ``AIRFLOW_CONN_*`` value (JSON or URI) carries a password or a secret-like extra."""
    try:
        conn = json.loads(value)
    except ValueError:
        from urllib.parse import parse_qsl, urlsplit

        parts = urlsplit(value)
        return bool(parts.password) or any(SECRET_NAME.search(k) for k, _ in parse_qsl(parts.query))
    if not isinstance(conn, dict):
        return True  # not a connection we understand: keep it out
    extra = conn.get("extra") or {}
    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except ValueError:
            return True
    keys = [k for k, v in conn.items() if v] + [k for k, v in (extra.items() if isinstance(extra, dict) else ()) if v]
    return any(k == "password" or SECRET_NAME.search(k) for k in keys)


def printable_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` without secrets, fit to print: variables named like a secret (``SECRET_NAME``) and connections
    (``AIRFLOW_CONN_*``) with a password or secret-like extra are left out; the JWT secret is replaced by
    ``AIRFLOW__API_AUTH__JWT_SECRET_CMD``, with which Airflow reads it from its file (mode 0600)."""
    out = {
        k: v for k, v in env.items()
        if not SECRET_NAME.search(k) and not (k.startswith("AIRFLOW_CONN_") and _connection_has_credentials(v))
    }
    if JWT_SECRET_VAR in env:
        out[f"{JWT_SECRET_VAR}_CMD"] = f"cat {shlex.quote(str(_secret_path()))}"
    return out


def env_json() -> dict[str, str]:
    """What ``env-json`` prints (``devstack.testing`` reads it): the stack's environment without secrets, and where
    its data and logs are."""
    return {**printable_env(airflow_env()), "DEVSTACK_DATA": str(DATA), "DEVSTACK_RUN": str(RUN),
            "DEVSTACK_DB": metadata_db(), "DEVSTACK_PROFILE": PROFILE}


def _airflow() -> str:
    return str(Path(sys.executable).parent / "airflow")


def component_command(name: str) -> list[str]:
    """The command line of one Airflow component (``scheduler-2`` runs what ``scheduler`` runs).

    ``--skip-serve-logs``: the scheduler's, the triggerer's and the Celery worker's log servers bind every interface
    (``serve_logs`` hard-codes the host; ``[logging] worker_log_server_port`` / ``trigger_log_server_port`` set only
    the port). The API server runs on this machine and reads the log files directly, so they are not started at all.
    Each Celery worker gets its own node name (``worker-2@<host>``): two workers with one name confuse Celery's
    remote control (inspect, adoption checks).
    """
    kind = component_kind(name)
    if kind == "worker":
        # No --concurrency: its default is [celery] worker_concurrency, which ha_env sets (one place to change it).
        return [_airflow(), "celery", "worker", "--skip-serve-logs", "--celery-hostname", f"{name}@%h"]
    args = {
        "scheduler": ["--skip-serve-logs"],
        "triggerer": ["--skip-serve-logs"],
        "api-server": ["--host", LISTEN_HOST, "--port", str(API_PORT)],
    }
    return [_airflow(), kind, *args.get(kind, [])]


def _pid_file(name: str) -> Path:
    return RUN / f"airflow-{name}.pid"


def start_component(name: str, env: dict[str, str]) -> int:
    """Start one Airflow component detached, unless it already runs; returns its PID."""
    pid = brokers.running_pid(_pid_file(name))
    if pid is not None:
        return pid
    cmd = component_command(name)
    log = (RUN / f"airflow-{name}.log").open("ab")
    env = {**env, "DEVSTACK_COMPONENT": name}  # devstack.hostname: which process owns a watcher or ran a task
    proc = subprocess.Popen(cmd, cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _pid_file(name).write_text(str(proc.pid))
    with (RUN / "sessions").open("a") as f:  # every session this stack started, for the final sweep of `down`
        f.write(f"{proc.pid}\n")
    return proc.pid


def stop_component(name: str, timeout: float = 30) -> None:
    brokers.stop_pid(_pid_file(name), timeout)


def crash_component(name: str) -> int:
    """``kill -9`` a component and every process of its group (what a crashed container or pod leaves: nothing)."""
    pid = brokers.running_pid(_pid_file(name))
    if pid is None:
        raise StackError(f"{name} is not running")
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while brokers.running_pid(_pid_file(name)) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    _pid_file(name).unlink(missing_ok=True)
    return pid


def airflow_db(env: dict[str, str]) -> Any:
    from sqlalchemy import create_engine

    return create_engine(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])


def watcher_status(env: dict[str, str]) -> dict[str, Any]:
    """Which DAGs exist and are unpaused, and how many watcher triggers a triggerer has picked up."""
    from sqlalchemy import text

    with airflow_db(env).connect() as conn:
        dags = dict(conn.execute(text("SELECT dag_id, is_paused FROM dag WHERE NOT is_stale")).all())
        running = conn.execute(
            text(
                "SELECT COUNT(*) FROM asset_watcher w JOIN \"trigger\" t ON t.id = w.trigger_id"
                " WHERE t.triggerer_id IS NOT NULL"
            )
        ).scalar_one()
    return {"dags": dags, "watchers_running": running}


def wait_until(check, timeout: float, what: str, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:  # the DB may not have the tables yet
            last = exc
        time.sleep(interval)
    raise StackError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def wait_for_api_server(timeout: float) -> None:
    """Wait for the API server's port, then make the execution API's first request. The API server sets the execution
    API up on its first request (about 4 s here): without this, the first task after a start waits that long to begin
    (docs/performance.md)."""
    import urllib.request

    brokers.wait_for_port("127.0.0.1", API_PORT, timeout, pid=brokers.running_pid(_pid_file("api-server")))
    with urllib.request.urlopen(f"http://127.0.0.1:{API_PORT}/execution/health", timeout=60) as resp:
        resp.read()


def compile_project() -> None:
    """Write the bytecode of the project's own Python files (``__pycache__``, gitignored) before anything imports them.

    Where ``PYTHONDONTWRITEBYTECODE`` is set (this machine, many CI images) no process caches what it compiles, so
    every task process compiled its DAG file's modules from source again (the three DAG files' imports: 0.74 s from
    source, 0.26 s compiled, here; docs/performance.md). ``make venv`` does the same for site-packages (``uv pip install --compile-bytecode``).
    """
    import compileall

    for folder in ("dags", "include", "plugins", "providers"):
        if (PROJECT / folder).is_dir():
            compileall.compile_dir(PROJECT / folder, quiet=1)


def up(timeout: float = 240) -> dict[str, str]:
    """Start brokers and Airflow, unpause the DAGs, and wait until every watcher runs in the triggerer."""
    for d in (RUN, CACHE, AIRFLOW_HOME, DATA / "landing", DATA / "quarantine", STATE / "faults"):
        d.mkdir(parents=True, exist_ok=True)
    compile_project()
    names = components()  # an unknown DEVSTACK_PROFILE fails here, before anything starts
    endpoints = brokers.up(CACHE, RUN)
    if metadata_db() == "postgres":
        endpoints["metadata_db"] = postgres.start(PG_DATA, RUN / "postgres.log")
    if PROFILE == "ha":
        endpoints["celery_broker"] = redis.start(REDIS_DATA, RUN)
    env = airflow_env()
    subprocess.run([_airflow(), "db", "migrate"], cwd=PROJECT, env=env, check=True, capture_output=True)
    for name in names:
        start_component(name, env)
    try:
        wait_for_api_server(timeout)
        wait_until(lambda: set(DAG_IDS) <= set(watcher_status(env)["dags"]), timeout, "the DAGs to be parsed")
        paused = [d for d, p in watcher_status(env)["dags"].items() if p and d in DAG_IDS]
        for dag_id in paused:
            subprocess.run([_airflow(), "dags", "unpause", dag_id], cwd=PROJECT, env=env, check=True, capture_output=True)
        wait_until(lambda: watcher_status(env)["watchers_running"] >= len(DAG_IDS), timeout,
                   "every asset watcher to run in the triggerer")
    except BaseException:
        _print_logs()
        raise
    endpoints.update({"airflow_ui": f"http://127.0.0.1:{API_PORT}", "airflow_home": str(AIRFLOW_HOME),
                      "events_db": str(DATA / "events.db"), "logs": str(RUN)})
    return endpoints


def _print_logs(lines: int = 30) -> None:
    for name in components():
        print(f"--- {RUN / f'airflow-{name}.log'} (tail) ---\n{brokers.log_tail(RUN / f'airflow-{name}.log', lines)}",
              file=sys.stderr)


def _marked_pids() -> list[int]:
    """PIDs of processes (other than this one) whose environment carries this stack's marker, or that run in a
    session one of its components started. A task process retitles itself (``airflow worker -- <id>``, which
    overwrites the environment /proc shows) and moves to its own process group, but keeps its session: a task
    orphaned by a killed scheduler is found that way."""
    marker = f"{MARKER}={STATE}".encode()
    try:
        sessions = {int(x) for x in (RUN / "sessions").read_text().split()}
    except OSError:
        sessions = set()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            in_session = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3]) in sessions
            if in_session or marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def started_components() -> list[str]:
    """Every component with a PID file in the run folder, whatever profile started it, in ``STOP_ORDER``."""
    names = {p.name[len("airflow-"):-len(".pid")] for p in RUN.glob("airflow-*.pid")}

    def rank(name: str) -> tuple[int, str]:
        kind = component_kind(name)
        return (STOP_ORDER.index(kind) if kind in STOP_ORDER else len(STOP_ORDER), name)

    return sorted(names, key=rank)


def down(timeout: float = 30) -> list[int]:
    """Stop Airflow (API server last), then the brokers, then anything left that carries the marker."""
    for name in started_components():
        stop_component(name, timeout)
    brokers.down(RUN)
    redis.stop(RUN)  # whatever DEVSTACK_PROFILE says now: stop what an earlier `up` started
    postgres.stop(PG_DATA)  # whatever DEVSTACK_DB says now: stop what an earlier `up` started
    leftovers = _marked_pids()
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    (RUN / "sessions").unlink(missing_ok=True)
    return leftovers


def status() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in components():
        out[name] = brokers.running_pid(_pid_file(name))
    for name in ("kafka", "elasticmq"):
        out[name] = brokers.running_pid(RUN / f"{name}.pid")
    if metadata_db() == "postgres":
        out["postgres"] = postgres.running(PG_DATA)
    if PROFILE == "ha":
        out["redis"] = redis.running(RUN)
    return out


def _one(command: str, name: str | None) -> int:
    """Start, stop or crash one process of a running stack (what the fault suite and a supervisor do)."""
    if name in components():
        if command == "start":
            print(start_component(name, airflow_env()))
            if name == "api-server" and brokers.running_pid(_pid_file(name)) is not None:
                wait_for_api_server(120)
        elif command == "stop":
            stop_component(name)
        else:
            print(crash_component(name))
    elif name == "kafka":
        if command == "start":
            print(brokers.start_kafka(CACHE, RUN))
            brokers.wait_kafka_ready(KAFKA_BOOTSTRAP, 120)
        else:
            brokers.stop_pid(RUN / "kafka.pid", 30 if command == "stop" else 0.1)
    elif name == "elasticmq":
        if command == "start":
            print(brokers.start_elasticmq(CACHE, RUN))
        else:
            brokers.stop_pid(RUN / "elasticmq.pid", 30 if command == "stop" else 0.1)
    elif name == "redis" and PROFILE == "ha":
        if command == "start":
            print(redis.start(REDIS_DATA, RUN))
        else:
            redis.stop(RUN, 30 if command == "stop" else 0.1)
    else:
        others = ", kafka, elasticmq" + (", redis" if PROFILE == "ha" else "")
        raise SystemExit(f"unknown process {name!r}: one of {', '.join(components())}{others}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "env", "env-json", "start", "stop", "crash"])
    parser.add_argument("name", nargs="?",
                        help="for start/stop/crash: an Airflow component of the profile, or kafka / elasticmq / redis")
    args = parser.parse_args(argv)
    if args.command != "down":  # `down` goes by PID files, whatever the profile says
        try:
            components()
        except StackError as exc:
            raise SystemExit(str(exc)) from None
    if args.command in ("start", "stop", "crash"):
        return _one(args.command, args.name)
    if args.command == "up":
        started = time.monotonic()
        endpoints = up()
        print(f"stack up in {time.monotonic() - started:.0f}s")
        for key, value in endpoints.items():
            print(f"  {key:<13} {value}")
        print(f"  sqs queues    {SQS_ENDPOINT}/000000000000/<queue>   (UI of queue stats: http://127.0.0.1:9325)")
        print("  stop with    make down")
    elif args.command == "down":
        leftovers = down()
        print("stack down" + (f" (killed {len(leftovers)} leftover process(es): {leftovers})" if leftovers else ""))
    elif args.command == "status":
        processes = status()
        print(json.dumps(processes, indent=2))
        if processes.get("api-server") or processes.get("scheduler"):  # the streams, as the streams page shows them
            subprocess.run([sys.executable, "-m", "event_streams.pipelines.streams"], env=airflow_env(), cwd=ROOT,
                           timeout=120, check=False)
        return 0 if all(processes.values()) else 3
    elif args.command == "env-json":
        print(json.dumps(env_json()))
    else:
        env = printable_env(airflow_env())
        for key in sorted(k for k in env if k.startswith(("AIRFLOW", "SQS_", "KAFKA_", "LANDING", "QUARANTINE"))):
            print(f"export {key}={json.dumps(env[key])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
