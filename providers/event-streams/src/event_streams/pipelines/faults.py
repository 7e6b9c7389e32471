"""Fault injection for the fault suite (``make test-faults``): off unless ``EVENTS_FAULTS_DIR`` is set.

``maybe_fail("iot.after_commit")`` raises once if the file ``$EVENTS_FAULTS_DIR/iot.after_commit`` exists (and
removes it), so a test can make one task attempt die at a chosen point, after some of its effects and before the
rest, and check that the retry leaves nothing lost and nothing written twice. A marker whose text is ``always``
stays: every attempt fails there until the test removes it (a run that fails for good); ``times:<n>`` makes the next
n attempts fail there, then is removed (one run's attempts, and not the next run's). A marker ``hang:<seconds>``
makes the attempt that finds it wait there that long instead (and is removed): a task in flight, for a test to kill.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


class InjectedFault(RuntimeError):
    pass


def maybe_fail(point: str) -> None:
    folder = os.environ.get("EVENTS_FAULTS_DIR")
    if not folder:
        return
    marker = Path(folder) / point
    try:
        mode = marker.read_text().strip()
        if mode.startswith("times:") and int(mode.removeprefix("times:")) > 1:
            marker.write_text(f"times:{int(mode.removeprefix('times:')) - 1}")
        elif mode != "always":
            marker.unlink()
    except FileNotFoundError:
        return
    if mode.startswith("hang:"):
        time.sleep(float(mode.removeprefix("hang:")))
        return
    raise InjectedFault(f"injected fault at {point}")
