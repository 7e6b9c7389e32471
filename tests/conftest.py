"""Shared test setup: Airflow points at this project's dags/ and a throwaway AIRFLOW_HOME (unless already set,
as under ``astro dev pytest``), and the project root is importable (``include.*``, ``devstack.*``)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")

_REPORT: list[str] = []


@pytest.fixture(scope="session")
def report_line():
    """Append a line to pytest's terminal summary (measured figures such as DAG import times).

    A fixture, because ``import tests.conftest`` from a test module would load a second copy of this module
    whose list pytest never prints."""
    return _REPORT.append


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001 - pytest hook signature
    if _REPORT:
        terminalreporter.section("project report")
        for line in _REPORT:
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """A real native stack (Kafka, ElasticMQ, Airflow) of this test module's own, stopped afterwards. A module's
    ``STACK_ENV`` dict (e.g. shorter redelivery delays) is added to the stack's environment.

    Outside CI the module skips, with the reason, when Java/Maven are missing or the ports are in use; in CI it
    fails instead."""
    from devstack.testing import Stack, unavailable_reason

    reason = unavailable_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"tests on the real stack cannot run in CI: {reason}")
        pytest.skip(reason)
    s = Stack(tmp_path_factory.mktemp("devstack"), env=getattr(request.module, "STACK_ENV", None))
    try:
        s.up()
        yield s
    finally:
        s.down()
