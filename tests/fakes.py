"""Stand-ins shared by tests of different folders (no broker, no Airflow)."""

from __future__ import annotations


class FakeKafkaMessage:
    """A record as ``confluent_kafka`` hands it over: to a producer's delivery callback, or to a watcher's apply
    function."""

    def __init__(self, topic: str, partition: int, offset: int, value: bytes | None, key: bytes | None) -> None:
        self._t, self._p, self._o, self._v, self._k = topic, partition, offset, value, key

    def value(self) -> bytes | None:
        return self._v

    def key(self) -> bytes | None:
        return self._k

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)

    def headers(self) -> None:
        return None
