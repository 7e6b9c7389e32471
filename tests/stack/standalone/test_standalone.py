"""`astro dev start --standalone` on a fresh copy of the project: astro-cli's own steps (devstack.standalone), the
brokers of `make brokers`, and one message per pipeline through to its effect (`make test-standalone`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devstack import brokers, pipelines, publish, standalone, summary

ROOT = Path(__file__).resolve().parents[3]
DAG_IDS = ["data_delivery_etl", "inference_execution", "iot_alerting"]
ENV_FILE = "standalone.env"  # astro dev start --standalone --env standalone.env


def fresh_copy(dest: Path) -> None:
    """The project as a fresh clone of this work tree has it: tracked files and new ones git does not ignore."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def runner_freeze(path: Path) -> Path:
    """Constraints for Airflow's dependencies: the native runner's tested virtualenv (standalone mode takes the
    runtime's freeze file from Astronomer's CDN instead), without the project's own editable provider."""
    frozen = subprocess.run([standalone.uv(), "pip", "freeze", "--python", sys.executable], check=True,
                            capture_output=True, text=True).stdout.splitlines()
    path.write_text("\n".join(line for line in frozen if line and not line.startswith("-e ") and " @ " not in line))
    return path


@pytest.fixture
def native_brokers(tmp_path: Path):
    from devstack.testing import unavailable_reason

    reason = unavailable_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"the standalone test cannot run in CI: {reason}")
        pytest.skip(reason)
    endpoints = brokers.up(ROOT / ".devstack" / "cache", tmp_path / "brokers")
    try:
        yield endpoints
    finally:
        brokers.down(tmp_path / "brokers")


def test_astro_dev_start_standalone_parses_the_dags_applies_the_connections_and_runs_each_pipeline(
    tmp_path: Path, native_brokers: dict[str, str], report_line
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    fresh_copy(project)
    started = time.monotonic()
    standalone.install(project, sys.executable, runner_freeze(tmp_path / "constraints.txt"))
    installed_s = time.monotonic() - started
    env = standalone.environment(project, project / ENV_FILE, base={k: v for k, v in os.environ.items()
                                                                     if not k.startswith(("AIRFLOW", "DEVSTACK"))
                                                                     and k != "PYTHONPATH"})
    proc = standalone.start(project, env, tmp_path / "standalone.log")
    try:
        standalone.wait_healthy(proc)
        assert standalone.apply_settings(project / "airflow_settings.yaml") == [
            "aws_default", "kafka_default", "events_db", "inference_endpoint"]
        deadline = time.monotonic() + 180
        while (found := standalone.dags())[0] != DAG_IDS and time.monotonic() < deadline:
            time.sleep(2)
        assert found == (DAG_IDS, 0), f"parsed {found[0]}, {found[1]} import errors"
        standalone.unpause(DAG_IDS)
        # The streams page answers (the project's plugins/ is loaded: standalone.env) and lists each watched DAG
        # once the scheduler has made the unpaused DAGs' watchers.
        while (page := standalone.streams_page_dags()) != DAG_IDS and time.monotonic() < deadline:
            time.sleep(2)
        assert page == DAG_IDS
        ready_s = time.monotonic() - started

        prefix = env["SQS_QUEUE_URL_PREFIX"]
        target = publish.SqsTarget(native_brokers["sqs"], prefix, "us-east-1")
        run_id = publish.new_run_id()
        landing = {"landing_dir": project / "include" / "data" / "landing"}  # ETL's files, in the project's landing root
        records = [r for spec in pipelines.pipelines()
                   for r in publish.publish(spec.name, 1, run_id=run_id, target=target, bootstrap=native_brokers["kafka"],
                                            **{k: v for k, v in landing.items() if k in {o.name for o in spec.options}})]
        reports = summary.collect(
            records, f"sqlite:///{project / standalone.STANDALONE_DIR / 'airflow.db'}",
            f"sqlite:///{project / 'include' / 'data' / 'events.db'}", bootstrap=native_brokers["kafka"],
            sqs=publish.make_sqs_client(native_brokers["sqs"], "us-east-1"), queue_url_prefix=prefix, timeout=240)
    finally:
        standalone.stop(proc)
    print(summary.render(reports))
    bad = {p: (r.missing, dict(r.runs)) for p, r in reports.items() if not r.ok}
    assert not bad, f"{bad}\n--- standalone.log (tail) ---\n{(tmp_path / 'standalone.log').read_text()[-6000:]}"
    assert {p: r.rows for p, r in reports.items()} == {"etl": 5, "iot": 1, "inference": 1}  # ETL: 5 orders a file
    report_line(f"standalone: venv {installed_s:.0f} s, ready (DAGs parsed and unpaused, on the streams page) {ready_s:.0f} s after the start; "
                + "; ".join(f"{p}: {r.runs.total()} run(s) {dict(r.runs)}, {r.rows} rows, outputs {r.outputs}"
                            for p, r in reports.items()))
