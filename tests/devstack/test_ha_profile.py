"""The native stack's HA profile (``DEVSTACK_PROFILE=ha``): its components and their command lines, the Celery
settings as the provider reads them, ``down``/``start``/``stop`` by component name, and the private Redis broker.

No Airflow process runs here. The last tests start a real Redis server (Debian's ``redis-server``, on 127.0.0.1:6380
in tmp_path) and skip, with the reason, when it is not installed or the port is taken.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from devstack import brokers, postgres, redis, stack

LOOPBACK = "127.0.0.1"
ANY_INTERFACE = re.compile(r"(?<![\d.])0\.0\.0\.0(?![\d.])|\[::\]|(?<![\w:])::(?![\w:])")
HA = ("scheduler", "scheduler-2", "dag-processor", "triggerer", "triggerer-2", "worker", "worker-2", "api-server")
TRANSPORT = "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__"


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stack's state folder in tmp_path (never the checkout's .devstack), default profile, SQLite."""
    home = tmp_path / "state"
    for name, value in {"STATE": home, "RUN": home / "run", "AIRFLOW_HOME": home / "airflow", "DATA": home / "data",
                        "PG_DATA": home / "postgres", "REDIS_DATA": home / "redis", "DB": "sqlite",
                        "PROFILE": "default"}.items():
        monkeypatch.setattr(stack, name, value)
    for var in [v for v in os.environ if v.startswith(("AIRFLOW__CELERY", "AIRFLOW__SCHEDULER__"))]:
        monkeypatch.delenv(var)  # the caller's environment may override tunables: start from none
    return home


@pytest.fixture
def ha(state: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(stack, "PROFILE", "ha")
    return state


# --------------------------------------------------------------------------------------------------- components


def test_profiles_components() -> None:
    assert stack.components("ha") == HA
    assert stack.components("default") == stack.COMPONENTS == ("scheduler", "dag-processor", "triggerer",
                                                                "api-server")
    with pytest.raises(stack.StackError, match="DEVSTACK_PROFILE"):
        stack.components("bogus")


def test_active_profile_decides_components_and_database(ha: Path) -> None:
    assert stack.components() == HA
    assert stack.metadata_db() == "postgres"  # although DB is "sqlite"
    assert stack.metadata_db_url() == postgres.url()


def test_ha_command_lines() -> None:
    commands = {name: stack.component_command(name) for name in HA}
    assert {name: cmd[0] for name, cmd in commands.items()} == dict.fromkeys(HA, stack._airflow())
    # A numbered copy runs exactly what the first one runs.
    assert commands["scheduler-2"] == commands["scheduler"] == [stack._airflow(), "scheduler", "--skip-serve-logs"]
    assert commands["triggerer-2"] == commands["triggerer"] == [stack._airflow(), "triggerer", "--skip-serve-logs"]
    for name in ("worker", "worker-2"):
        cmd = commands[name]
        assert cmd[1:3] == ["celery", "worker"]
        assert "--skip-serve-logs" in cmd  # its log server would bind every interface
        assert cmd[cmd.index("--celery-hostname") + 1] == f"{name}@%h"  # one Celery node name per worker
    api = commands["api-server"]
    assert api[api.index("--host") + 1] == LOOPBACK
    assert not [n for n, cmd in commands.items() if ANY_INTERFACE.search(" ".join(cmd))]


def test_ha_command_lines_parse_with_airflows_cli(ha: Path, tmp_path: Path) -> None:
    """What ``airflow celery worker ...`` (the celery provider's CLI, present only with CeleryExecutor) and the other
    components accept, parsed by Airflow's own parser in a fresh interpreter with the HA environment."""
    script = (
        "import json, sys\n"
        "from airflow.cli.cli_parser import get_parser\n"
        "parser = get_parser()\n"
        "out = {}\n"
        "for name, cmd in json.loads(sys.argv[1]).items():\n"
        "    args = vars(parser.parse_args(cmd[1:]))\n"
        "    out[name] = {k: args.get(k) for k in ('skip_serve_logs', 'celery_hostname', 'concurrency', 'host')}\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, **stack.ha_env(), "AIRFLOW_HOME": str(tmp_path / "cli-home"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    commands = {name: stack.component_command(name) for name in HA}
    out = subprocess.run([sys.executable, "-c", script, json.dumps(commands)], env=env, capture_output=True,
                         text=True, timeout=180, check=True)
    parsed = json.loads(out.stdout.strip().splitlines()[-1])
    for name in ("scheduler", "scheduler-2", "triggerer", "triggerer-2", "worker", "worker-2"):
        assert parsed[name]["skip_serve_logs"] is True, name
    assert parsed["worker"]["celery_hostname"] == "worker@%h"
    assert parsed["worker-2"]["celery_hostname"] == "worker-2@%h"
    # --concurrency is not on the command line: its default is [celery] worker_concurrency from the environment.
    assert parsed["worker"]["concurrency"] == parsed["worker-2"]["concurrency"] == stack.WORKER_CONCURRENCY
    assert parsed["api-server"]["host"] == LOOPBACK


# --------------------------------------------------------------------------------------------------- environment


def test_ha_env_celery_on_loopback_and_the_metadata_db(ha: Path) -> None:
    env = stack.airflow_env()
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    broker = urlsplit(env["AIRFLOW__CELERY__BROKER_URL"])
    assert (broker.scheme, broker.hostname, broker.port) == ("redis", LOOPBACK, redis.PORT)
    assert broker.password is None  # nothing secret to print or commit
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+" + env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == postgres.url()
    assert urlsplit(env["AIRFLOW__CELERY__RESULT_BACKEND"]).hostname == LOOPBACK
    hosts = {k: v for k, v in env.items() if k.startswith("AIRFLOW__") and re.search(r"_HOST(NAME)?$", k)}
    assert "AIRFLOW__CELERY__FLOWER_HOST" in hosts and set(hosts.values()) == {LOOPBACK}, hosts
    stack_set = {k: v for k, v in env.items() if os.environ.get(k) != v}
    assert not [k for k, v in stack_set.items() if ANY_INTERFACE.search(v)]
    assert env["AIRFLOW__SCHEDULER__USE_ROW_LEVEL_LOCKING"] == "True"


def test_ha_env_redelivers_a_killed_workers_task_within_a_minute(ha: Path) -> None:
    env = stack.airflow_env()
    assert env["AIRFLOW__CELERY__TASK_ACKS_LATE"] == "True"
    assert env["AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER"] == "1"
    # A message is put back once older than the visibility timeout, by a sweep every interval x throttle seconds.
    visibility = int(env[f"{TRANSPORT}VISIBILITY_TIMEOUT"])
    sweep = int(env[f"{TRANSPORT}UNACKED_RESTORE_INTERVAL"]) * int(env[f"{TRANSPORT}UNACKED_RESTORE_THROTTLE"])
    assert visibility + sweep <= 60
    assert int(env[f"{TRANSPORT}UNACKED_MUTEX_EXPIRE"]) <= 60
    assert int(env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"]) <= 120
    assert int(env["AIRFLOW__CELERY__WORKER_CONCURRENCY"]) == stack.WORKER_CONCURRENCY


def test_ha_tunables_yield_to_the_callers_environment_but_not_the_executor(ha: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"{TRANSPORT}VISIBILITY_TIMEOUT", "7")
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
    monkeypatch.setenv("AIRFLOW__CELERY__BROKER_URL", "redis://elsewhere:6379/0")
    env = stack.airflow_env()
    assert env[f"{TRANSPORT}VISIBILITY_TIMEOUT"] == "7"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"] == redis.url()


def test_default_profile_is_unchanged(state: Path) -> None:
    env = stack.airflow_env()
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite:///")
    # Only what the Dockerfile ships for every executor (celery_config_options, which LocalExecutor never reads)
    assert [k for k in env if k.startswith("AIRFLOW__CELERY")] == ["AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS"]
    assert stack.env_json()["DEVSTACK_PROFILE"] == "default"


def test_celery_workers_load_the_plugins_before_their_pool_forks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Dockerfile's ``celery_config_options``: Airflow's own Celery configuration object, unchanged, and a
    ``worker_init`` receiver (the worker's main process, before the pool forks) that loads the plugins."""
    from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
    from celery.signals import worker_init

    from event_streams.pipelines import celery_worker

    path = stack.airflow_env()["AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS"]
    module, _, name = path.rpartition(".")
    assert module == celery_worker.__name__ and getattr(celery_worker, name) is DEFAULT_CELERY_CONFIG
    loaded: list[str] = []
    monkeypatch.setattr("airflow.sdk.plugins_manager.integrate_macros_plugins", lambda: loaded.append("plugins"))
    worker_init.send(sender=None)
    assert loaded == ["plugins"]


def test_celery_config_as_the_provider_builds_it(ha: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The provider's own ``get_default_celery_config`` on the HA environment: what the workers and the schedulers'
    executors hand to Celery. The transport options arrive as numbers, under names kombu's Redis transport reads."""
    from airflow.configuration import conf
    from airflow.providers.celery.executors.default_celery import get_default_celery_config
    from kombu.transport.redis import Channel

    for key, value in stack.airflow_env().items():
        if key.startswith(("AIRFLOW__CELERY", "AIRFLOW__CORE__EXECUTOR", "AIRFLOW__DATABASE__")):
            monkeypatch.setenv(key, value)
    config = get_default_celery_config(conf)
    assert config["broker_url"] == redis.url()
    assert config["result_backend"] == f"db+{postgres.url()}"
    assert config["task_acks_late"] is True
    assert config["task_track_started"] is True
    assert config["worker_prefetch_multiplier"] == 1
    assert config["worker_concurrency"] == stack.WORKER_CONCURRENCY
    options = config["broker_transport_options"]
    assert options == {"visibility_timeout": 30, "unacked_restore_interval": 5, "unacked_restore_throttle": 1,
                       "unacked_mutex_expire": 10}
    assert set(options) <= set(Channel.from_transport_options)


# --------------------------------------------------------------------------------------------------- start/stop


def test_down_stops_every_component_with_a_pid_file_whatever_the_profile(state: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    run = state / "run"
    run.mkdir(parents=True)
    for name in HA:  # left by an earlier `DEVSTACK_PROFILE=ha up`; the profile is "default" now
        (run / f"airflow-{name}.pid").write_text("999999\n")
    stopped: list[str] = []
    monkeypatch.setattr(stack, "stop_component", lambda name, timeout=30: stopped.append(name))
    monkeypatch.setattr(stack.brokers, "down", lambda run: stopped.append("brokers"))
    monkeypatch.setattr(stack.redis, "stop", lambda run, timeout=20: stopped.append("redis"))
    monkeypatch.setattr(stack.postgres, "stop", lambda data: stopped.append("postgres"))
    monkeypatch.setattr(stack, "_marked_pids", list)
    stack.down()
    assert stopped == ["scheduler", "scheduler-2", "triggerer", "triggerer-2", "dag-processor", "worker", "worker-2",
                       "api-server", "brokers", "redis", "postgres"]


def test_start_stop_crash_accept_every_component_of_the_profile(ha: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(stack, "airflow_env", dict)
    monkeypatch.setattr(stack, "start_component", lambda name, env: calls.append(("start", name)) or 1)
    monkeypatch.setattr(stack, "stop_component", lambda name, timeout=30: calls.append(("stop", name)))
    monkeypatch.setattr(stack, "crash_component", lambda name: calls.append(("crash", name)) or 1)
    for name in HA:
        for command in ("start", "stop", "crash"):
            assert stack.main([command, name]) == 0
    assert calls == [(c, n) for n in HA for c in ("start", "stop", "crash")]
    with pytest.raises(SystemExit, match="unknown process 'worker-3'"):
        stack.main(["stop", "worker-3"])
    monkeypatch.setattr(stack, "PROFILE", "default")
    with pytest.raises(SystemExit, match="unknown process 'worker-2'"):
        stack.main(["stop", "worker-2"])


def test_status_lists_the_profiles_processes(ha: Path) -> None:
    out = stack.status()
    assert list(out)[: len(HA)] == list(HA)
    assert {"kafka", "elasticmq", "postgres", "redis"} <= set(out)
    assert not any(out.values())  # nothing runs in tmp_path


def test_unknown_profile_is_refused_before_anything_starts(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack, "PROFILE", "bogus")
    monkeypatch.setattr(stack.brokers, "up", lambda *a, **k: pytest.fail("brokers started"))
    with pytest.raises(SystemExit, match="DEVSTACK_PROFILE='bogus'"):
        stack.main(["up"])


# --------------------------------------------------------------------------------------------------- Redis


def test_redis_config_binds_loopback_only(tmp_path: Path) -> None:
    text = redis.config(tmp_path / "redis", 6380)
    directives = [line.split(None, 1) for line in text.splitlines() if line.strip() and not line.startswith("#")]
    values: dict[str, list[str]] = {}
    for key, *rest in directives:
        values.setdefault(key.lower(), []).append(rest[0].strip() if rest else "")
    assert values["bind"] == [LOOPBACK]
    assert values["protected-mode"] == ["yes"]
    assert values["port"] == ["6380"]
    assert values["dir"] == [str(tmp_path / "redis")]
    assert "unixsocket" not in values  # TCP only
    assert "requirepass" not in values  # nothing secret in the state folder or the repository
    assert not ANY_INTERFACE.search(text)
    assert redis.url(6380) == f"redis://{LOOPBACK}:6380/0"


def _redis_skip_reason() -> str | None:
    reason = redis.unavailable_reason()
    if reason:
        return reason
    with socket.socket() as s:
        if s.connect_ex((LOOPBACK, redis.PORT)) == 0:
            return f"port {redis.PORT} is in use (an HA stack is running?)"
    return None


@pytest.fixture
def redis_server(tmp_path: Path):
    """A real private Redis server in tmp_path (what ``up`` starts), stopped afterwards whatever happens."""
    reason = _redis_skip_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"the Redis test cannot run in CI: {reason}")
        pytest.skip(reason)
    data, run = tmp_path / "redis", tmp_path / "run"
    try:
        yield data, run, redis.start(data, run)
    finally:
        redis.stop(run)


def test_private_redis_starts_answers_and_stops(redis_server) -> None:
    import redis as redis_client

    data, run, url = redis_server
    assert url == f"redis://{LOOPBACK}:{redis.PORT}/0"
    pid = redis.running(run)
    assert pid and "redis-server" in brokers._cmdline(pid)
    assert os.getpgid(pid) == pid  # its own process group, as every process of the stack
    client = redis_client.Redis.from_url(url, socket_timeout=5)
    try:
        assert client.ping() is True
        assert client.config_get("bind") == {"bind": LOOPBACK}
        assert client.config_get("protected-mode") == {"protected-mode": "yes"}
        assert client.config_get("port") == {"port": str(redis.PORT)}
        # Queued messages survive a restart (append-only file in the data folder).
        client.lpush("devstack-test", "queued")
    finally:
        client.close()
    assert redis.start(data, run) == url  # already running: same server, no second one
    assert redis.running(run) == pid
    assert redis.stop(run) is True
    assert redis.running(run) is None and not redis.ping()
    redis.start(data, run)
    client = redis_client.Redis.from_url(url, socket_timeout=5)
    try:
        assert client.lrange("devstack-test", 0, -1) == [b"queued"]
    finally:
        client.close()


CELERY_APP = """
import json, os, time
from celery import Celery

app = Celery("devstack_ha_test", broker=os.environ["TEST_BROKER_URL"])
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, task_default_queue="devstack-ha-test",
                broker_transport_options=json.loads(os.environ["TEST_TRANSPORT_OPTIONS"]),
                worker_hijack_root_logger=False)


@app.task
def run(marks):
    with open(marks, "a") as f:
        f.write(f"{os.environ['TEST_WORKER']} {time.time()}\\n")
    time.sleep(float(os.environ["TEST_HOLD_S"]))
"""


def _celery_worker(app_dir: Path, name: str, url: str, options: dict, hold_s: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(app_dir), "TEST_BROKER_URL": url, "TEST_WORKER": name,
           "TEST_TRANSPORT_OPTIONS": json.dumps(options), "TEST_HOLD_S": str(hold_s)}
    cmd = [sys.executable, "-m", "celery", "-A", "devstack_ha_tasks", "worker", "--pool", "solo", "--hostname",
           f"{name}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "WARNING"]
    return subprocess.Popen(cmd, cwd=app_dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _marks(path: Path) -> list[tuple[str, float]]:
    if not path.exists():
        return []
    return [(w, float(t)) for w, t in (line.split() for line in path.read_text().splitlines())]


def test_a_killed_workers_task_is_redelivered_to_the_other_worker(redis_server, tmp_path: Path) -> None:
    """Real Celery workers on the private Redis, acks late, with the HA profile's transport option names (values
    scaled down to seconds): ``worker-1`` takes the task and is ``kill -9``-ed mid-task; ``worker-2`` gets it once
    the message is older than the visibility timeout, at the next sweep (the workers' event-loop timer)."""
    _, _, url = redis_server
    options = {"visibility_timeout": 4, "unacked_restore_interval": 1, "unacked_restore_throttle": 1,
               "unacked_mutex_expire": 10}
    app_dir, marks = tmp_path / "app", tmp_path / "marks"
    app_dir.mkdir()
    (app_dir / "devstack_ha_tasks.py").write_text(CELERY_APP)
    workers = [_celery_worker(app_dir, "worker-1", url, options, hold_s=120)]
    try:
        env = {**os.environ, "PYTHONPATH": str(app_dir), "TEST_BROKER_URL": url,
               "TEST_TRANSPORT_OPTIONS": json.dumps(options)}
        subprocess.run([sys.executable, "-c", f"from devstack_ha_tasks import run; run.delay({str(marks)!r})"],
                       cwd=app_dir, env=env, check=True, timeout=60)
        deadline = time.monotonic() + 60
        while not _marks(marks) and time.monotonic() < deadline:
            time.sleep(0.1)
        [(first, started)] = _marks(marks)
        assert first == "worker-1"
        os.killpg(workers[0].pid, signal.SIGKILL)  # mid-task: the message stays unacknowledged in Redis
        workers[0].wait(timeout=10)
        workers.append(_celery_worker(app_dir, "worker-2", url, options, hold_s=0))
        deadline = time.monotonic() + 60
        while len(_marks(marks)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [w for w, _ in _marks(marks)] == ["worker-1", "worker-2"]
        redelivered_after = _marks(marks)[1][1] - started
        # Not before the visibility timeout; within it plus one sweep, plus worker-2's start-up on this machine.
        assert options["visibility_timeout"] <= redelivered_after < options["visibility_timeout"] + 1 + 20, \
            redelivered_after
    finally:
        for worker in workers:
            try:
                os.killpg(worker.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            worker.wait(timeout=10)


def test_the_celery_executor_imports() -> None:
    """The scheduler loads it by name; with celery 5.7.0 its module failed to import (``retry`` gone from
    ``celery.backends.database``) and both schedulers of the HA profile exited at start."""
    from airflow.providers.celery.executors.celery_executor import CeleryExecutor

    assert CeleryExecutor.__name__ == "CeleryExecutor"
