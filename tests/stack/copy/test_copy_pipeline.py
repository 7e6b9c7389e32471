"""Copy each pipeline into a fresh Astro project exactly as docs/copy-a-pipeline.md says.

The scaffold has the files `astro dev init` writes for Airflow 3 (Dockerfile, requirements.txt, packages.txt,
airflow_settings.yaml, .astro/ with Astro's DAG integrity test, dags/ with an example DAG, include/, plugins/, tests/);
per pipeline, the test copies the paths of its manifest (docs/copy/<pipeline>.yaml), adds its requirement and
Dockerfile lines and its connections, builds a virtualenv from the scaffold's own requirements.txt (the provider with
the pipeline's broker extra is a line of it), checks that the other broker's packages were not
installed, runs Astro's integrity test there, then the pipeline's end-to-end test on the real stack running the
scaffold (the runner's own needs added to the virtualenv first: it creates Kafka topics with confluent-kafka).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
PIPELINES = ("iot_alerting", "data_delivery_etl", "inference_execution")
E2E = {"iot_alerting": "iot", "data_delivery_etl": "etl", "inference_execution": "inference"}  # pytest -k
# What a copy must not pull in: the other broker's client and provider.
NOT_INSTALLED = {
    "iot_alerting": ("apache-airflow-providers-amazon", "boto3", "botocore", "aiobotocore"),
    "data_delivery_etl": ("apache-airflow-providers-apache-kafka", "confluent-kafka"),
    "inference_execution": ("apache-airflow-providers-apache-kafka", "confluent-kafka"),
}
LAB = ("confluent-kafka==2.16.1",)  # the native runner's own needs (Kafka topics), added after the check

# What `astro dev init` writes (Astro CLI 1.x, Airflow 3), with contents reduced to what the test needs; Astro's
# two tests are the ones this repository keeps (fixed for Airflow 3.3.2).
SCAFFOLD = {
    "Dockerfile": "FROM astrocrpublic.azurecr.io/runtime:3.3-2\n",
    "requirements.txt": "# Astro Runtime includes the following pre-installed providers packages: "
                        "https://www.astronomer.io/docs/astro/runtime-image-architecture#provider-packages\n",
    "packages.txt": "",
    ".dockerignore": "astro\n.git\n.env\nairflow_settings.yaml\nlogs/\n.venv\nairflow.db\nairflow.cfg\n",
    ".gitignore": ".git\n.env\n.DS_Store\nairflow_settings.yaml\n__pycache__/\nastro\n.venv\nairflow-webserver.pid\n"
                  "webserver_config.py\nairflow.cfg\nairflow.db\n",
    ".env": "",
    "README.md": "Overview\n========\n\nWelcome to Astronomer!\n",
    "airflow_settings.yaml": "airflow:\n  connections: []\n  pools: []\n  variables: []\n",
    ".astro/config.yaml": "project:\n  name: copied-project\n",
    "dags/.airflowignore": "",
    "dags/exampledag.py": '''"""
## Example DAG (the scaffold's own)
"""
from airflow.sdk import dag, task
from pendulum import datetime


@dag(start_date=datetime(2025, 4, 22), schedule="@daily", catchup=False, doc_md=__doc__,
     default_args={"owner": "Astro", "retries": 3}, tags=["example"])
def example_astronauts():
    @task
    def get_astronauts() -> list[dict]:
        return [{"craft": "ISS", "name": "Oleg Kononenko"}]

    get_astronauts()


example_astronauts()
''',
    "include/.gitkeep": "",
    "plugins/.gitkeep": "",
}
FROM_THIS_REPO = (".astro/test_dag_integrity_default.py", ".astro/dag_integrity_exceptions.txt",
                  "tests/dags/test_dag_example.py")


def copy_list(pipeline: str) -> dict:
    """The copy manifest of ``pipeline``: docs/copy/<pipeline>.yaml (shown by docs/copy-a-pipeline.md)."""
    manifest = ROOT / "docs" / "copy" / f"{pipeline}.yaml"
    assert manifest.is_file(), f"no copy manifest for {pipeline}: {manifest.relative_to(ROOT)}"
    return yaml.safe_load(manifest.read_text())[pipeline]


def make_project(dest: Path, pipeline: str) -> dict:
    for name, content in SCAFFOLD.items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_text(content)
    for name in FROM_THIS_REPO:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    example_test = dest / "tests/dags/test_dag_example.py"  # Astro's approves every tag; this repository lists its own
    text = example_test.read_text()
    assert "APPROVED_TAGS = {" in text
    example_test.write_text(re.sub(r"APPROVED_TAGS = \{[^}]*\}", "APPROVED_TAGS = {}", text))
    spec = copy_list(pipeline)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", ".pytest_cache")
    for path in spec["files"]:
        src = ROOT / path
        assert src.exists(), f"docs/copy/{pipeline}.yaml lists {path}, which does not exist"
        (dest / path).parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest / path, ignore=ignore, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dest / path)
    with (dest / "requirements.txt").open("a") as f:
        f.write("\n".join(spec["requirements"]) + "\n")
    lines = list(spec["dockerfile"])
    dockerfile = (dest / "Dockerfile").read_text().splitlines()
    if lines and lines[0].startswith("FROM "):  # the manifest's FROM replaces the scaffold's
        dockerfile = [lines.pop(0) if line.startswith("FROM ") else line for line in dockerfile]
    (dest / "Dockerfile").write_text("\n".join(dockerfile + lines) + "\n")
    ours = yaml.safe_load((ROOT / "airflow_settings.yaml").read_text())["airflow"]["connections"]
    settings = yaml.safe_load((dest / "airflow_settings.yaml").read_text())
    settings["airflow"]["connections"] = [c for c in ours if c["conn_id"] in spec["connections"]]
    assert [c["conn_id"] for c in settings["airflow"]["connections"]] == spec["connections"]
    (dest / "airflow_settings.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    return spec


def make_venv(project: Path) -> Path:
    """The scaffold's own virtualenv: Airflow and its requirements.txt, installed from the project folder (as the
    Dockerfile's install step and `astro dev start --standalone` do), nothing else."""
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    venv = project / ".venv"
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([uv, "pip", "install", "-q", "--python", str(python), "apache-airflow==3.3.2", "pytest==9.2.0",
                    "-r", "requirements.txt"], check=True, cwd=project)
    return python


def installed(python: Path, names: tuple[str, ...]) -> list[str]:
    """Which of these distributions the virtualenv of ``python`` has."""
    script = "import importlib.metadata as m, sys\nfor n in sys.argv[1:]:\n    try: m.distribution(n); print(n)\n" \
             "    except m.PackageNotFoundError: pass"
    out = subprocess.run([str(python), "-c", script, *names], check=True, capture_output=True, text=True).stdout
    return out.split()


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_a_pipeline_copied_into_a_fresh_astro_project_passes_astro_checks_and_runs_end_to_end(
    pipeline: str, tmp_path: Path, report_line
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    spec = make_project(project, pipeline)
    python = make_venv(project)
    assert installed(python, NOT_INSTALLED[pipeline]) == [], f"the {pipeline} copy pulled in another broker's packages"
    copied = [p for p in project.rglob("*") if p.is_file() and ".venv" not in p.parts]
    shipped = [p for p in copied if not any(str(p.relative_to(project)).startswith(n) for n in (*SCAFFOLD, *FROM_THIS_REPO))]

    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "home"), "AIRFLOW__CORE__DAGS_FOLDER": str(project / "dags"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "PYTHONPATH": str(project)}
    astro = subprocess.run([str(python), "-m", "pytest", "-p", "no:cacheprovider", "-q",
                            ".astro/test_dag_integrity_default.py", "tests/dags"],
                           cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert astro.returncode == 0, astro.stdout[-3000:] + astro.stderr[-3000:]
    astro_summary = astro.stdout.strip().splitlines()[-1]

    if not (shutil.which("java") and shutil.which("mvn")):
        pytest.fail("java and mvn are needed for the end-to-end part") if os.environ.get("CI") else pytest.skip("no java")
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    subprocess.run([uv, "pip", "install", "-q", "--python", str(python), *LAB], check=True)
    e2e_env = {**os.environ, "DEVSTACK_PROJECT": str(project), "DEVSTACK_DAG_IDS": pipeline,
               "AIRFLOW_HOME": str(tmp_path / "e2e-home"), "PYTHONPATH": str(ROOT)}
    e2e = subprocess.run([str(python), "-m", "pytest", "-p", "no:cacheprovider", "-q",
                          "tests/stack/e2e/test_pipelines_e2e.py", "-k", E2E[pipeline]],
                         cwd=ROOT, env=e2e_env, capture_output=True, text=True, timeout=1200)
    assert e2e.returncode == 0, e2e.stdout[-5000:] + e2e.stderr[-3000:]
    e2e_summary = e2e.stdout.strip().splitlines()[-1]
    assert "1 passed" in e2e_summary
    report_line(f"copy {pipeline}: {len(spec['files'])} paths ({len(shipped)} files), "
                f"{len(spec['requirements'])} requirement lines, {len(spec['dockerfile'])} Dockerfile lines, "
                f"connections {spec['connections']}; Astro's tests: {astro_summary}; e2e from the scaffold: {e2e_summary}")
