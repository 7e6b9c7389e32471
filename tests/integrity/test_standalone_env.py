"""standalone.env (`astro dev start --standalone --env standalone.env`) carries what standalone mode would otherwise
lose: the connections of airflow_settings.yaml pointed at the native brokers, and the Dockerfile's Airflow settings."""

from __future__ import annotations

import json
from pathlib import Path

from devstack.astro_project import NATIVE_ENDPOINTS, connection_env, dockerfile_env
from devstack.standalone import load_env_file

ROOT = Path(__file__).resolve().parents[2]
ENV = load_env_file(ROOT / "standalone.env")
NOT_IN_STANDALONE = {"AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS"}  # standalone mode runs LocalExecutor


def test_every_connection_of_airflow_settings_is_there_pointed_at_the_native_brokers() -> None:
    expected = connection_env(ROOT / "airflow_settings.yaml", NATIVE_ENDPOINTS, Path("include/data/events.db"))
    got = {k: json.loads(v) for k, v in ENV.items() if k.startswith("AIRFLOW_CONN_")}
    assert got == {k: json.loads(v) for k, v in expected.items()}
    assert ENV["SQS_QUEUE_URL_PREFIX"].startswith(json.loads(ENV["AIRFLOW_CONN_AWS_DEFAULT"])["extra"]["endpoint_url"])


def test_every_airflow_setting_of_the_dockerfile_is_there_with_its_value() -> None:
    expected = {k: v for k, v in dockerfile_env(ROOT / "Dockerfile").items() if k not in NOT_IN_STANDALONE}
    assert expected, "the Dockerfile has no ENV AIRFLOW__ line: this test would check nothing"
    assert {k: ENV.get(k) for k in expected} == expected


def test_the_servers_it_starts_listen_on_loopback_and_it_loads_the_projects_plugins() -> None:
    assert ENV["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert ENV["AIRFLOW__CORE__PLUGINS_FOLDER"] == "plugins"
