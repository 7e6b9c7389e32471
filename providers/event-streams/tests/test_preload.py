"""``event_streams.preload``: which processes pre-import the tasks' modules, and that a failing module is skipped."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from event_streams import preload


@pytest.mark.parametrize(("command", "executor", "forked", "loads"), [
    (["scheduler"], "LocalExecutor", False, True),
    (["scheduler"], "CeleryExecutor,LocalExecutor", False, True),
    (["scheduler"], "fast:airflow.executors.local_executor.LocalExecutor", False, True),
    (["scheduler"], "CeleryExecutor", False, False),  # its tasks run in Celery workers: nothing to inherit
    (["scheduler"], "LocalExecutor", True, False),  # a LocalExecutor worker: inherits the scheduler's modules
    (["celery"], "CeleryExecutor", False, True),  # the worker's main process, before its pool forks
    (["triggerer"], "LocalExecutor", False, False),
    ([], "LocalExecutor", False, False),
])
def test_modules_are_pre_loaded_only_where_task_processes_fork_from(
    command: list[str], executor: str, forked: bool, loads: bool
) -> None:
    assert preload.forks_task_processes(command, executor, forked) is loads


@pytest.mark.parametrize(("argv", "executor", "loads"), [
    (["airflow", "scheduler"], "LocalExecutor", True),
    (["airflow", "scheduler"], "CeleryExecutor", False),
    (["airflow", "celery", "worker"], "CeleryExecutor", True),
    (["airflow", "api-server"], "LocalExecutor", False),
])
def test_this_process_is_judged_by_its_command_line_and_the_configured_executor(
    argv: list[str], executor: str, loads: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", executor)

    assert preload.forks_task_processes_here() is loads


def test_a_missing_or_failing_module_is_skipped_and_the_rest_are_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "preload_ok.py").write_text("VALUE = 1\n")
    (tmp_path / "preload_broken.py").write_text("raise RuntimeError('broken at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("preload_ok", "preload_broken"):
        monkeypatch.delitem(sys.modules, name, raising=False)

    loaded = preload.preload(["preload_missing_extra", "preload_broken", "preload_ok"])

    assert loaded == ["preload_ok"]
    assert "preload_ok" in sys.modules
    assert "pre-loading preload_broken failed" in caplog.text


def test_every_task_module_of_the_installed_extras_imports() -> None:
    """The list names real modules: with the project's extras (sqs, kafka, postgres) installed, all of them load."""
    assert preload.preload() == list(preload.TASK_MODULES)
