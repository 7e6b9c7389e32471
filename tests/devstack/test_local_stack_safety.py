"""The native stack (devstack/) listens on the loopback interface only and never prints its secrets.

Nothing here starts a process: the checks read the configuration the stack would start with (the ElasticMQ conf it
derives, Kafka's server.properties, the Airflow environment and command lines, PostgreSQL's options) and call the
functions that build what ``env`` / ``env-json`` print.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from devstack import brokers, postgres, stack

LOOPBACK = "127.0.0.1"
ANY_INTERFACE = re.compile(r"(?<![\d.])0\.0\.0\.0(?![\d.])|\[::\]|(?<![\w:])::(?![\w:])")
SECRET_VALUE = "s3cr3t-value-that-must-never-be-printed"


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stack's state folder in tmp_path (never the checkout's .devstack)."""
    home = tmp_path / "state"
    monkeypatch.setattr(stack, "STATE", home)
    monkeypatch.setattr(stack, "RUN", home / "run")
    monkeypatch.setattr(stack, "AIRFLOW_HOME", home / "airflow")
    monkeypatch.setattr(stack, "DATA", home / "data")
    monkeypatch.setattr(stack, "DB", "sqlite")
    return home


def _uncommented(text: str) -> str:
    return "\n".join(line.split("#", 1)[0].split("//", 1)[0] for line in text.splitlines())


# --------------------------------------------------------------------------------------------------- ElasticMQ


def test_project_conf_binds_every_interface_for_docker_only() -> None:
    # The compose service needs 0.0.0.0 inside its container; the native runner must not use it as it is.
    binds = brokers.elasticmq_bind_hostnames(brokers.ELASTICMQ_CONF.read_text())
    assert binds == {"rest-sqs": ["0.0.0.0"], "rest-stats": ["0.0.0.0"]}


def test_derived_elasticmq_conf_binds_loopback_only(tmp_path: Path) -> None:
    derived = brokers.loopback_elasticmq_conf(brokers.ELASTICMQ_CONF, tmp_path)
    assert derived == tmp_path / brokers.LOOPBACK_CONF_NAME
    text = derived.read_text()
    binds = brokers.elasticmq_bind_hostnames(text)
    assert set(binds) == set(brokers.ELASTICMQ_SERVERS)
    assert all(values and set(values) == {LOOPBACK} for values in binds.values()), binds
    assert not ANY_INTERFACE.search(_uncommented(text)), "0.0.0.0 left in the derived conf"
    # Only the bind addresses changed: same queues, same redrive, same ports.
    original = brokers.ELASTICMQ_CONF.read_text()
    assert brokers.elasticmq_queue_names(derived) == brokers.elasticmq_queue_names(brokers.ELASTICMQ_CONF)
    for key in ("maxReceiveCount", "bind-port", "defaultVisibilityTimeout"):
        assert re.findall(rf"{key}\s*=\s*(\S+)", _uncommented(text)) == re.findall(
            rf"{key}\s*=\s*(\S+)", _uncommented(original)
        ), key


@pytest.mark.parametrize(
    "conf",
    [
        # no bind-hostname at all: ElasticMQ's own default (0.0.0.0) would apply
        'rest-sqs { enabled = true, bind-port = 9324 }\nqueues { q {} }\n',
        # inline, path-style and a later override block, as the broker smoke test writes
        'rest-sqs { enabled = true, bind-port = 9324, bind-hostname = "0.0.0.0" }\n'
        'rest-stats.bind-hostname = 0.0.0.0\n'
        '# bind-hostname = "0.0.0.0" in a comment\n'
        'rest-sqs { bind-hostname = "10.1.2.3" }\nqueues { q {} }\n',
    ],
)
def test_derived_conf_binds_loopback_whatever_the_source_says(tmp_path: Path, conf: str) -> None:
    source = tmp_path / "source.conf"
    source.write_text(conf)
    binds = brokers.elasticmq_bind_hostnames(brokers.loopback_elasticmq_conf(source, tmp_path).read_text())
    assert {server: values[-1] for server, values in binds.items()} == {"rest-sqs": LOOPBACK, "rest-stats": LOOPBACK}
    assert all(set(values) == {LOOPBACK} for values in binds.values())


def test_start_elasticmq_runs_the_loopback_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, data = tmp_path / "cache", tmp_path / "run"
    lib = brokers.lib_dir(cache, "elasticmq")
    lib.mkdir(parents=True)
    (lib / "elasticmq.jar").touch()
    spawned: list[list[str]] = []
    monkeypatch.setattr(brokers, "_java", lambda: "java")
    monkeypatch.setattr(brokers, "_check_free", lambda *a: None)
    monkeypatch.setattr(brokers, "_spawn", lambda cmd, *a: spawned.append(cmd) or 4242)
    assert brokers.start_elasticmq(cache, data) == 4242
    [cmd] = spawned
    [conf] = [Path(a.split("=", 1)[1]) for a in cmd if a.startswith("-Dconfig.file=")]
    assert conf == (data / brokers.LOOPBACK_CONF_NAME).resolve()
    assert set(sum(brokers.elasticmq_bind_hostnames(conf.read_text()).values(), [])) == {LOOPBACK}


def test_redrive_is_the_backstop_behind_the_applications_dead_lettering() -> None:
    from event_streams.pipelines import config

    conf = _uncommented(brokers.ELASTICMQ_CONF.read_text())
    counts = [int(n) for n in re.findall(r"maxReceiveCount\s*=\s*(\d+)", conf)]
    assert counts == [10, 10]
    # Every failed run is at least one receive: the queue's redrive must not dead-letter (without a reason) a message
    # before the application does (with one).
    assert all(n > config.MAX_FAILED_RUNS for n in counts)


# --------------------------------------------------------------------------------------------------- Kafka, PostgreSQL


def test_kafka_listens_on_loopback_only(tmp_path: Path) -> None:
    assert brokers.HOST == LOOPBACK
    props = dict(line.split("=", 1) for line in brokers.kafka_properties(tmp_path).splitlines() if "=" in line)
    for key in ("listeners", "advertised.listeners"):
        for listener in props[key].split(","):
            assert re.fullmatch(rf"[A-Z]+://{re.escape(LOOPBACK)}:\d+", listener), (key, listener)
    assert props["controller.quorum.voters"].split("@", 1)[1].startswith(f"{LOOPBACK}:")


def test_postgres_listens_on_loopback_only(tmp_path: Path) -> None:
    options = postgres.server_options(tmp_path / "pg", 5433)
    assert re.findall(r"-c listen_addresses=(\S+)", options) == [LOOPBACK]
    assert f"unix_socket_directories={tmp_path / 'pg'}" in options  # not /tmp or /var/run, open to other users
    assert postgres.url().startswith(f"postgresql+psycopg2://postgres@{LOOPBACK}:")


# --------------------------------------------------------------------------------------------------- Airflow


def test_airflow_env_binds_and_connects_to_loopback(state: Path) -> None:
    env = stack.airflow_env()
    assert env["AIRFLOW__API__HOST"] == LOOPBACK
    assert env["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST"] == LOOPBACK
    hosts = {k: v for k, v in env.items() if k.startswith("AIRFLOW__") and re.search(r"_HOST(NAME)?$", k)}
    assert hosts and set(hosts.values()) == {LOOPBACK}, hosts
    for key in ("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "SQS_ENDPOINT_URL", "SQS_QUEUE_URL_PREFIX"):
        assert env[key].startswith(f"http://{LOOPBACK}:"), key
    assert env["KAFKA_BOOTSTRAP"].startswith(f"{LOOPBACK}:")
    stack_set = {k: v for k, v in env.items() if os.environ.get(k) != v}
    assert not [k for k, v in stack_set.items() if ANY_INTERFACE.search(v)]


def test_airflow_components_start_no_server_on_every_interface() -> None:
    from airflow.cli.cli_parser import get_parser

    commands = {name: stack.component_command(name) for name in stack.COMPONENTS}
    # serve_logs binds every interface (host="" in airflow/utils/serve_logs/core.py, no setting): not started.
    for name in ("scheduler", "triggerer"):
        assert "--skip-serve-logs" in commands[name], name
    api = commands["api-server"]
    assert api[api.index("--host") + 1] == LOOPBACK
    parser = get_parser()
    for name, cmd in commands.items():
        args = parser.parse_args(cmd[1:])  # what `airflow <component> ...` accepts
        if name in ("scheduler", "triggerer"):
            assert args.skip_serve_logs is True
        if name == "api-server":
            assert args.host == LOOPBACK


def test_airflow_log_servers_still_bind_every_interface() -> None:
    # If a future Airflow lets the log servers' host be configured, they can run again, bound to LOOPBACK.
    import inspect

    from airflow.utils.serve_logs import core

    assert 'host=""' in inspect.getsource(core.serve_logs)


# --------------------------------------------------------------------------------------------------- secrets


def test_secret_file_is_created_0600_exclusively(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[tuple[int, int]] = []
    real_open = os.open

    def spy(path, flags, mode=0o777, *args, **kwargs):
        opened.append((flags, mode))
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    old_umask = os.umask(0)  # the mode must not depend on a umask
    try:
        secret = stack._secret()
    finally:
        os.umask(old_umask)
    assert any(flags & os.O_CREAT and flags & os.O_EXCL and mode == 0o600 for flags, mode in opened), opened
    path = state / "jwt_secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(secret) >= 32 and secret == path.read_text().strip()
    assert stack._secret() == secret  # read back, not made again
    assert [p.name for p in state.iterdir()] == ["jwt_secret"]  # no temporary file left


def test_secret_is_read_back_stripped(state: Path) -> None:
    state.mkdir(parents=True)
    (state / "jwt_secret").write_text(f"  {SECRET_VALUE}\n\n")
    assert stack._secret() == SECRET_VALUE
    (state / "jwt_secret").write_text("\n")
    with pytest.raises(stack.StackError, match="empty"):
        stack._secret()


@pytest.fixture
def secret_env(state: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state.mkdir(parents=True)
    (state / "jwt_secret").write_text(SECRET_VALUE)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_VALUE)
    monkeypatch.setenv("SOME_SERVICE_TOKEN", SECRET_VALUE)
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": "postgres", "password": SECRET_VALUE}))
    monkeypatch.setenv("AIRFLOW_CONN_LEGACY", f"postgres://user:{SECRET_VALUE}@db:5432/x")
    return state


def test_env_json_leaves_secrets_out(secret_env: Path) -> None:
    assert stack.airflow_env()[stack.JWT_SECRET_VAR] == SECRET_VALUE  # the components do get it
    out = stack.env_json()
    assert SECRET_VALUE not in json.dumps(out)
    assert stack.JWT_SECRET_VAR not in out
    assert not [k for k in out if stack.SECRET_NAME.search(k) and not k.endswith("_CMD")]
    # An Airflow CLI run with this environment (devstack.testing: `airflow dags pause`) reads the same secret.
    assert out[f"{stack.JWT_SECRET_VAR}_CMD"] == f"cat {secret_env / 'jwt_secret'}"
    # Connections without credentials stay (the stack's Kafka and events DB); with credentials they go.
    assert "AIRFLOW_CONN_KAFKA_DEFAULT" in out and "AIRFLOW_CONN_EVENTS_DB" in out
    assert "AIRFLOW_CONN_WAREHOUSE" not in out and "AIRFLOW_CONN_LEGACY" not in out


def test_env_json_has_what_the_stack_tests_read(secret_env: Path) -> None:
    out = stack.env_json()
    # devstack/testing.py, tests/stack/e2e, tests/stack/faults and devstack/bench.py read these.
    for key in ("AIRFLOW__API__PORT", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW_HOME", "DEVSTACK_DATA",
                "DEVSTACK_RUN", "SQS_ENDPOINT_URL", "SQS_QUEUE_URL_PREFIX", "KAFKA_BOOTSTRAP", "EVENTS_FAULTS_DIR",
                "LANDING_DIR", "AIRFLOW__CORE__DAGS_FOLDER"):
        assert out.get(key), key
    assert out["DEVSTACK_DATA"] == str(stack.DATA) and out["DEVSTACK_RUN"] == str(stack.RUN)


def test_airflow_reads_the_secret_through_the_cmd_variable(secret_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.configuration import conf

    monkeypatch.delenv(stack.JWT_SECRET_VAR, raising=False)
    monkeypatch.setenv(f"{stack.JWT_SECRET_VAR}_CMD", stack.env_json()[f"{stack.JWT_SECRET_VAR}_CMD"])
    assert conf.get("api_auth", "jwt_secret") == SECRET_VALUE


@pytest.mark.parametrize("command", ["env-json", "env"])
def test_printed_environment_has_no_secret(secret_env: Path, command: str, capsys: pytest.CaptureFixture) -> None:
    assert stack.main([command]) == 0
    printed = capsys.readouterr().out
    assert SECRET_VALUE not in printed
    assert f"{stack.JWT_SECRET_VAR}_CMD" in printed
    assert not re.search(rf"\b{stack.JWT_SECRET_VAR}[=\"]", printed)
