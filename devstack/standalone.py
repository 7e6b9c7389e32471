"""`astro dev start --standalone`, step for step, without the Astro CLI (astro-cli ``airflow/standalone.go``).

Its steps, in the project folder: a uv virtualenv ``.venv``; Airflow pinned; ``uv pip install -r requirements.txt``
with Airflow and the Task SDK held at their versions; the environment it builds (the env file, then ``PYTHONPATH`` =
the project, ``AIRFLOW_HOME`` = ``.astro/standalone``, its fixed local Fernet key, all users admins, ...);
``airflow standalone``; and, once the API server answers, ``airflow_settings.yaml`` applied through the REST API.
One step differs: the CLI pins Airflow's dependencies with a freeze file from Astronomer's CDN, which this machine
cannot reach; the caller passes a constraints file instead (the test: the native runner's tested virtualenv).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

AIRFLOW_VERSION = "3.3.2"
TASK_SDK_VERSION = "1.3.2"
STANDALONE_DIR = Path(".astro") / "standalone"
PORT = 8080
# astro-cli's own fixed key for standalone mode (and its docker compose template): local metadata only, not a secret.
FERNET_KEY = "d6Vefz3G9U_ynXB3cr7y_Ak35tAHkEGAVxuz_B-jzWw="


def uv() -> str:
    return shutil.which("uv") or str(Path(sys.executable).parent / "uv")


def load_env_file(path: Path) -> dict[str, str]:
    """astro-cli's ``LoadEnvFile``: ``KEY=VALUE`` lines, ``#`` comments and blank lines skipped, one pair of
    surrounding quotes stripped from the value."""
    out: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[key] = value
    return out


def install(project: Path, python: str, constraints: Path | None = None) -> Path:
    """The virtualenv standalone mode makes: ``.venv`` in the project, Airflow, then the project's requirements.txt
    (run from the project folder, so a relative path there is the project's). Returns its Python."""
    subprocess.run([uv(), "venv", "-q", "--python", python, "--allow-existing", ".venv"], cwd=project, check=True)
    venv_python = project / ".venv" / "bin" / "python"
    pins = ["-c", str(constraints)] if constraints else []
    subprocess.run([uv(), "pip", "install", "-q", "--python", str(venv_python), f"apache-airflow=={AIRFLOW_VERSION}",
                    *pins], cwd=project, check=True)
    subprocess.run([uv(), "pip", "install", "-q", "--python", str(venv_python), "-r", "requirements.txt",
                    f"apache-airflow=={AIRFLOW_VERSION}", f"apache-airflow-task-sdk=={TASK_SDK_VERSION}"],
                   cwd=project, check=True)
    return venv_python


def environment(project: Path, env_file: Path | None, base: Mapping[str, str] = os.environ,
                port: int = PORT) -> dict[str, str]:
    """The environment of ``airflow standalone``: the inherited one, the env file over it, then the settings
    standalone mode always sets (Airflow 3) over both."""
    env = dict(base)
    if env_file is not None and env_file.is_file():
        env.update(load_env_file(env_file))
    venv_bin = project / ".venv" / "bin"
    pythonpath = f"{project}:{base['PYTHONPATH']}" if base.get("PYTHONPATH") else str(project)
    env.update({
        "PATH": f"{venv_bin}:{base.get('PATH', '')}",
        "PYTHONPATH": pythonpath,
        "AIRFLOW_HOME": str(project / STANDALONE_DIR),
        "ASTRONOMER_ENVIRONMENT": "local",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(project / "dags"),
        "AIRFLOW__CORE__FERNET_KEY": FERNET_KEY,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{port}/execution/",
        "AIRFLOW__API__SECRET_KEY": "astro-standalone",
        "AIRFLOW__API_AUTH__JWT_SECRET": "astro-standalone",
        "NO_PROXY": "*",
        "no_proxy": "*",
    })
    if port != PORT:
        env["AIRFLOW__API__PORT"] = str(port)
    return env


def start(project: Path, env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``airflow standalone`` in the project folder, in a process group of its own (stopped with ``stop``)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen([str(project / ".venv" / "bin" / "airflow"), "standalone"], cwd=project, env=dict(env),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM to the whole group (as ``astro dev stop`` does), SIGKILL to what is left after ``timeout``."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                proc.poll()
                return
            time.sleep(0.5)


def _request(url: str, token: str | None = None, method: str = "GET", body: Any = None, timeout: float = 10) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - a local URL built here
        raw = resp.read()
    return json.loads(raw) if raw else None


def wait_healthy(proc: subprocess.Popen[bytes], port: int = PORT, timeout: float = 300) -> None:
    """Until the API server reports healthy (astro-cli polls ``/api/v2/monitor/health``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"airflow standalone exited with {proc.returncode}")
        try:
            health = _request(f"http://localhost:{port}/api/v2/monitor/health")
            if health.get("metadatabase", {}).get("status") == "healthy":
                return
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(1)
    raise TimeoutError(f"the API server on port {port} was not healthy after {timeout:.0f} s")


def token(port: int = PORT) -> str:
    """A JWT from the simple auth manager, which (all users admins) hands one to anyone who asks."""
    return str(_request(f"http://localhost:{port}/auth/token")["access_token"])


def apply_settings(settings: Path, port: int = PORT) -> list[str]:
    """The connections of ``airflow_settings.yaml`` (Astro's ``conn_*`` schema) created through the REST API, as
    astro-cli's settings import does; returns their ids."""
    conns = ((yaml.safe_load(settings.read_text()) or {}).get("airflow") or {}).get("connections") or []
    auth = token(port)
    done = []
    for c in conns:
        body: dict[str, Any] = {"connection_id": c["conn_id"], "conn_type": c["conn_type"]}
        for field in ("host", "schema", "login", "password", "port", "description"):
            if c.get(f"conn_{field}") not in (None, ""):
                body[field] = c[f"conn_{field}"]
        if c.get("conn_extra"):
            body["extra"] = json.dumps(c["conn_extra"])
        _request(f"http://localhost:{port}/api/v2/connections", auth, "POST", body)
        done.append(c["conn_id"])
    return done


def dags(port: int = PORT) -> tuple[list[str], int]:
    """The DAG ids Airflow has parsed, and how many import errors it has recorded."""
    auth = token(port)
    listed = _request(f"http://localhost:{port}/api/v2/dags?limit=100", auth)
    errors = _request(f"http://localhost:{port}/api/v2/importErrors", auth)
    return sorted(d["dag_id"] for d in listed["dags"]), int(errors["total_entries"])


def streams_page_dags(port: int = PORT) -> list[str]:
    """The DAGs the streams page (plugins/event_streams_page.py) shows: it answers only if Airflow loaded the
    project's plugins folder."""
    sections = _request(f"http://localhost:{port}/event-streams/api/streams", token(port))["sections"]
    return sorted(s["dag_id"] for s in sections)


def unpause(dag_ids: list[str], port: int = PORT) -> None:
    auth = token(port)
    for dag_id in dag_ids:
        _request(f"http://localhost:{port}/api/v2/dags/{dag_id}", auth, "PATCH", {"is_paused": False})
