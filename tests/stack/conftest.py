"""The suites on a real native stack (Kafka, ElasticMQ, Airflow's own processes): ``make test-faults``, ``test-kafka``,
``test-ha``, ``test-postgres``, ``test-copy``; ``tests/stack/e2e`` and ``tests/stack/integration`` also run in
``make test``."""

from __future__ import annotations

import os

import pytest


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
