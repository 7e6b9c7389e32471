"""The project's Astro settings, for the native runner: the same files serve ``astro dev start`` and ``make up``.

* ``airflow_settings.yaml`` (Astro's ``conn_*`` schema) becomes ``AIRFLOW_CONN_*`` variables. Only endpoints differ,
  so the runner overrides hosts (``sqs:9324`` -> ``127.0.0.1:9324`` ...) and the SQLite file path, nothing else.
* The ``ENV AIRFLOW__...`` lines of the ``Dockerfile`` (the Airflow configuration baked into the Astro image) are
  applied as they are.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

# Compose-network endpoint -> the same service as the native runner starts it on this machine.
NATIVE_ENDPOINTS: dict[str, str] = {
    "sqs:9324": "127.0.0.1:9324",
    "kafka:19092": "127.0.0.1:9092",
    "inference-server:8000": "127.0.0.1:8000",
}


def load_connections(path: Path) -> list[dict[str, Any]]:
    data = yaml.safe_load(path.read_text()) or {}
    return list((data.get("airflow") or {}).get("connections") or [])


def _replace_hosts(value: Any, endpoints: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        for old, new in endpoints.items():
            value = value.replace(old, new)
        return value
    if isinstance(value, dict):
        return {k: _replace_hosts(v, endpoints) for k, v in value.items()}
    return value


def connection_json(conn: Mapping[str, Any], endpoints: Mapping[str, str], sqlite_path: Path | None) -> str:
    """One connection as the JSON that Airflow reads from an ``AIRFLOW_CONN_<ID>`` variable."""
    out: dict[str, Any] = {"conn_type": conn["conn_type"]}
    for field in ("host", "schema", "login", "password", "port"):
        value = conn.get(f"conn_{field}")
        if value not in (None, ""):
            out[field] = value
    if conn.get("conn_extra"):
        out["extra"] = conn["conn_extra"]
    out = _replace_hosts(out, endpoints)
    if conn["conn_type"] == "sqlite" and sqlite_path is not None:
        out["host"] = str(sqlite_path)
    return json.dumps(out)


def connection_env(
    settings: Path, endpoints: Mapping[str, str] = NATIVE_ENDPOINTS, sqlite_path: Path | None = None
) -> dict[str, str]:
    """``{"AIRFLOW_CONN_AWS_DEFAULT": "{...}", ...}`` for every connection of the settings file."""
    return {
        f"AIRFLOW_CONN_{c['conn_id'].upper()}": connection_json(c, endpoints, sqlite_path)
        for c in load_connections(settings)
    }


_ENV_LINE = re.compile(r"^\s*ENV\s+(.+)$", re.IGNORECASE)


def dockerfile_env(dockerfile: Path, prefix: str = "AIRFLOW__") -> dict[str, str]:
    """``ENV KEY=VALUE`` (several per line allowed, shell quoting) and ``ENV KEY VALUE`` lines whose key starts
    with ``prefix``. Continuation lines are not supported: the project's Dockerfile keeps one ``ENV`` per line."""
    out: dict[str, str] = {}
    for line in dockerfile.read_text().splitlines():
        match = _ENV_LINE.match(line)
        if not match:
            continue
        words = shlex.split(match.group(1), comments=True)
        if words and "=" not in words[0]:
            pairs = [(words[0], " ".join(words[1:]))]
        else:
            pairs = [tuple(w.split("=", 1)) for w in words]  # type: ignore[misc]
        out.update({k: v for k, v in pairs if k.startswith(prefix)})
    return out
