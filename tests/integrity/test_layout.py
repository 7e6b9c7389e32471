"""The layout (README.md "Layout", docs/layout.md): one shared core, one self-contained folder per pipeline, no
pipeline importing another's code, and no test-only hook in a pipeline's code.

* the provider distribution (``providers/event-streams``), the shared core (``event_streams.pipelines``) included,
  imports nothing of ``include`` or ``dags``: it installs and works alone;
* ``include/<pipeline>/`` imports only the core and itself (never another pipeline, never ``dags/``), and not
  ``faults`` (fault injection reaches a pipeline only as the ``after_effect`` hook a DAG task passes);
* ``dags/<pipeline>.py`` imports, of ``include``, only the core and ``include/<pipeline>/``, the folder named
  like it.

Imports are read with ``ast`` (module level and inside functions, absolute and relative), not executed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INCLUDE = ROOT / "include"
PROVIDER_SRC = ROOT / "providers" / "event-streams" / "src"
CORE = "event_streams.pipelines"
FAULTS = f"{CORE}.faults"
PIPELINES = sorted(p.name for p in INCLUDE.iterdir() if (p / "__init__.py").is_file())
DAG_FILES = sorted((ROOT / "dags").glob("*.py"))


def module_name(path: Path) -> str:
    base = PROVIDER_SRC if path.is_relative_to(PROVIDER_SRC) else ROOT
    parts = path.relative_to(base).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Dotted names of every module ``source`` imports (``from a.b import c`` gives ``a.b`` and ``a.b.c``: ``c`` may be a
    module). Relative imports are resolved against ``module``."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def project_imports(path: Path) -> set[str]:
    """The ``include.*`` and core (``event_streams.pipelines.*``) modules (and names) a file imports, ``include``
    itself left out."""
    names = imported_modules(path.read_text(), module_name(path), path.name == "__init__.py")
    return {n for n in names if n.startswith(("include.", "dags.", f"{CORE}.")) or n == CORE}


def owner(name: str) -> str:
    """The core, or ``include.<folder>`` of an imported dotted name: a pipeline folder (or another module)."""
    return CORE if name == CORE or name.startswith(f"{CORE}.") else ".".join(name.split(".")[:2])


def python_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def test_the_import_reader() -> None:
    src = """
import include.iot_alerting.rules
from include import data_delivery_etl
from event_streams.pipelines import db, config
from . import schemas
from .model import MODEL_DIR
from .. import iot_alerting
def f():
    from include.inference_execution.clients import predictor
"""
    found = imported_modules(src, "include.inference_execution.pipeline")
    owners = {owner(n) for n in found if n != "include"}
    assert owners == {"include.iot_alerting", "include.data_delivery_etl", "event_streams.pipelines",
                      "include.inference_execution"}
    assert "include.inference_execution.schemas" in found and "include.inference_execution.model" in found
    assert "event_streams.pipelines.db" in found and "event_streams.pipelines" in found


def test_there_is_one_pipeline_folder_per_dag() -> None:
    assert PIPELINES == ["data_delivery_etl", "inference_execution", "iot_alerting"]
    assert [p.stem for p in DAG_FILES] == PIPELINES, "each DAG file is named like its pipeline folder"


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_a_pipeline_imports_only_the_core_and_itself(pipeline: str) -> None:
    allowed = {CORE, f"include.{pipeline}"}
    files = python_files(INCLUDE / pipeline)
    assert files
    bad = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in files
        for name in project_imports(path)
        if owner(name) not in allowed
    }
    assert not bad, f"include/{pipeline} imports outside the core and itself: {sorted(bad)}"
    assert any(owner(n) == CORE for path in files for n in project_imports(path)), "reader found no core import"


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_no_test_only_hook_in_a_pipeline(pipeline: str) -> None:
    for path in python_files(INCLUDE / pipeline):
        names = project_imports(path)
        assert FAULTS not in names and f"{FAULTS}.maybe_fail" not in names, f"{path.relative_to(ROOT)} imports faults"
        called = {
            node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call)
        }
        assert "maybe_fail" not in called, f"{path.relative_to(ROOT)} calls maybe_fail"


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_a_dag_imports_only_the_core_and_its_pipeline(dag_file: Path) -> None:
    allowed = {CORE, f"include.{dag_file.stem}"}
    names = project_imports(dag_file)
    assert f"include.{dag_file.stem}" in {owner(n) for n in names}, "the DAG calls into its pipeline folder"
    bad = sorted(n for n in names if owner(n) not in allowed)
    assert not bad, f"{dag_file.name} imports outside the core and include/{dag_file.stem}: {bad}"


def test_the_provider_and_its_core_import_nothing_of_the_project() -> None:
    files = python_files(PROVIDER_SRC / "event_streams")
    assert PROVIDER_SRC / "event_streams" / "pipelines" / "airflow_io.py" in files
    bad = sorted(
        f"{path.relative_to(ROOT)}: {name}" for path in files for name in project_imports(path) if owner(name) != CORE
    )
    assert not bad, f"the provider imports from the project: {bad}"


PLUGIN_FILES = sorted((ROOT / "plugins").glob("*.py"))


@pytest.mark.parametrize("plugin", PLUGIN_FILES, ids=lambda p: p.name)
def test_a_plugin_imports_the_core_and_at_most_the_pipeline_it_is_named_after(plugin: Path) -> None:
    pipeline = plugin.stem.removesuffix("_plugin")
    allowed = {CORE} | ({f"include.{pipeline}"} if pipeline in PIPELINES else set())
    bad = sorted(n for n in project_imports(plugin) if owner(n) not in allowed)
    assert not bad, f"{plugin.name} imports outside {sorted(allowed)}: {bad}"


OPTIONAL_PLUGINS = {"event_streams_page"}  # the streams page (docs/metrics.md), optional in a copy


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_the_copy_manifest_has_the_plugins_a_pipeline_needs(pipeline: str) -> None:
    """The pipeline's own plugin, if it has one, is in its copy manifest (docs/copy/<pipeline>.yaml, shown by
    docs/copy-a-pipeline.md); the shared one (listener, pre-imports) is the provider's, registered by its
    distribution, so no project plugin is needed by all. The one other plugin, the streams page, is optional in a
    copy (it imports only the core)."""
    import yaml

    manifest = ROOT / "docs" / "copy" / f"{pipeline}.yaml"
    assert manifest.is_file(), f"no copy manifest for {pipeline}: {manifest.relative_to(ROOT)}"
    files = set(yaml.safe_load(manifest.read_text())[pipeline]["files"])
    needed = {f"plugins/{p.name}" for p in PLUGIN_FILES if p.stem == f"{pipeline}_plugin"}
    assert needed <= files, sorted(needed - files)
    assert all(p.stem.removesuffix("_plugin") in PIPELINES or p.stem in OPTIONAL_PLUGINS for p in PLUGIN_FILES), (
        "a plugin no pipeline owns")


def test_the_provider_registers_the_shared_plugin() -> None:
    """The stranded-events listener and the pre-imports come with the provider (entry point airflow.plugins)."""
    from importlib.metadata import entry_points

    [plugin] = [e for e in entry_points(group="airflow.plugins") if e.name == "event_streams"]
    loaded = plugin.load()
    assert [m.__name__ for m in loaded.listeners] == ["event_streams.stranded_events"]


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_the_copy_manifest_has_the_projects_dockerfile(pipeline: str) -> None:
    """A copy's Dockerfile lines (docs/copy/<pipeline>.yaml) are this project's Dockerfile, instruction for
    instruction: a setting added to one (as [workers] min_heartbeat_interval was) reaches the copies too."""
    import yaml

    manifest = yaml.safe_load((ROOT / "docs" / "copy" / f"{pipeline}.yaml").read_text())[pipeline]
    ours = [s for line in (ROOT / "Dockerfile").read_text().splitlines() if (s := line.strip()) and not s.startswith("#")]
    assert manifest["dockerfile"] == ours
