"""A task's hold on its messages: ``Holding`` keeps the messages a task process works on, and extends their lease
(SQS visibility) on a heartbeat in a daemon thread until the task ends.

What is settled (deleted) leaves the hold at once, so a heartbeat never extends it; what is still held when the task
fails for good is what its failure callback gives back: a mapped task's own batch, not its siblings'.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

from event_streams.pipelines.messages import Envelope

log = logging.getLogger(__name__)

Extend = Callable[[Sequence[Envelope]], object]


class Holding:
    """The messages this process holds (None: it never started holding any) and their heartbeat."""

    def __init__(self) -> None:
        self._held: dict[str, Envelope] | None = None
        self._lock = threading.Lock()

    def held(self) -> list[Envelope] | None:
        """The messages held and not settled; None if this process never held any (the callback then falls back
        to all of the run's messages)."""
        with self._lock:
            return None if self._held is None else list(self._held.values())

    def release(self, envelopes: Iterable[Envelope]) -> None:
        """``envelopes`` are settled: no heartbeat extends them any more, and no failure gives them back."""
        with self._lock:
            for e in envelopes:
                if self._held is not None:
                    self._held.pop(e.message_id, None)

    @contextmanager
    def hold(self, envelopes: Sequence[Envelope], extend: Extend, every: float) -> Iterator[None]:
        """Extend the lease of ``envelopes`` now and every ``every`` seconds while the block runs (in a daemon
        thread: a heartbeat that fails is logged and tried again next time, never raised into the task)."""
        with self._lock:
            self._held = {**(self._held or {}), **{e.message_id: e for e in envelopes}}
        extend(envelopes)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(every):
                pending = self.held() or []
                try:
                    extend(pending)
                except Exception:
                    log.warning("heartbeat: extending %d message(s) failed; trying again in %ss", len(pending), every,
                                exc_info=True)

        thread = threading.Thread(target=beat, name="message-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)
