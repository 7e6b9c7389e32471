"""The pipelines the lab drives, found rather than named: every ``include/<dag_id>/samples.py`` defining ``SAMPLES``.

A pipeline folder brings its sample messages and its sink check (``event_streams.pipelines.samples_api``); the
publisher, the summary, the runner and the demo iterate ``pipelines()``, so a new folder with a samples module is
published to, summarized and waited for without editing devstack.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path

from event_streams.pipelines.samples_api import PipelineSamples

PACKAGE = "include"
MODULE = "samples"


def discover(package: str = PACKAGE) -> tuple[PipelineSamples, ...]:
    """``SAMPLES`` of every ``<package>/<folder>/samples.py``, in folder order. Each folder is named like its DAG, and
    no two pipelines share a short name."""
    found: list[PipelineSamples] = []
    for root in importlib.import_module(package).__path__:
        for folder in sorted(p for p in Path(root).iterdir() if (p / f"{MODULE}.py").is_file()):
            module = importlib.import_module(f"{package}.{folder.name}.{MODULE}")
            samples = getattr(module, "SAMPLES", None)
            if not isinstance(samples, PipelineSamples):
                raise TypeError(f"{module.__name__} defines no SAMPLES (a PipelineSamples)")
            if samples.dag_id != folder.name:
                raise ValueError(f"{module.__name__}: dag_id {samples.dag_id!r} is not its folder's name")
            found.append(samples)
    names = [p.name for p in found]
    if len(set(names)) != len(names):
        raise ValueError(f"two pipelines share a short name: {names}")
    return tuple(found)


@functools.cache
def pipelines() -> tuple[PipelineSamples, ...]:
    """The pipelines of this project (discovered once)."""
    return discover()


def names() -> tuple[str, ...]:
    return tuple(p.name for p in pipelines())


def get(name: str) -> PipelineSamples:
    """The pipeline with this short name (``etl``, ``iot``, ...)."""
    for p in pipelines():
        if p.name == name:
            return p
    raise KeyError(f"no pipeline named {name!r} (known: {', '.join(names())})")
