"""The distribution as Airflow sees it: provider info, queue providers, MessageQueueTrigger resolution, environment
defaults, the record form, the SQS helpers, and no import from the project's include/."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import event_streams
from event_streams import payload, sqs
from event_streams.triggers import StreamingKafkaTrigger, StreamingSqsTrigger

SRC = Path(event_streams.__file__).resolve().parent
QUEUES = ["event_streams.queues.SqsStreamMessageQueueProvider", "event_streams.queues.KafkaStreamMessageQueueProvider"]


# --- registration ----------------------------------------------------------------------------------------------------
def test_provider_info_passes_airflow_schema_validation() -> None:
    from airflow.providers_manager import _create_provider_info_schema_validator

    info = event_streams.get_provider_info()
    _create_provider_info_schema_validator().validate(info)
    assert info["queues"] == QUEUES
    assert info["package-name"] == importlib.metadata.metadata("airflow-provider-event-streams")["Name"]


def test_entry_point_is_installed() -> None:
    eps = importlib.metadata.entry_points(group="apache_airflow_provider")
    assert "event_streams:get_provider_info" in {ep.value for ep in eps}


def test_providers_manager_lists_both_queue_providers() -> None:
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert "airflow-provider-event-streams" in manager.providers
    names = manager.queue_class_names
    assert set(QUEUES) <= set(names)
    assert "airflow.providers.amazon.aws.queues.sqs.SqsMessageQueueProvider" in names  # the stock ones stay


def test_queue_module_imports_neither_msg_queue_nor_the_triggers() -> None:
    code = ("import sys, event_streams.queues as q; "
            "print(q.SqsStreamMessageQueueProvider().scheme_matches('sqs+stream'), "
            "'airflow.providers.common.messaging.triggers.msg_queue' in sys.modules, "
            "'event_streams.triggers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False", "False"]


@pytest.mark.parametrize(
    ("scheme", "kwargs", "classpath"),
    [
        ("sqs+stream", {"sqs_queue": "http://sqs.local/0/q", "aws_conn_id": "aws_default"},
         "event_streams.triggers.StreamingSqsTrigger"),
        ("kafka+stream", {"topics": ["t"], "kafka_config_id": "kafka_default"},
         "event_streams.triggers.StreamingKafkaTrigger"),
        ("sqs", {"sqs_queue": "http://sqs.local/0/q", "aws_conn_id": "aws_default"},
         "airflow.providers.amazon.aws.triggers.sqs.SqsSensorTrigger"),
        ("kafka", {"topics": ["t"], "kafka_config_id": "kafka_default", "apply_function": "json.dumps"},
         "airflow.providers.apache.kafka.triggers.await_message.AwaitMessageTrigger"),
    ],
)
def test_message_queue_trigger_resolves_each_scheme(scheme: str, kwargs: dict[str, Any], classpath: str) -> None:
    from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger

    path, stored = MessageQueueTrigger(scheme=scheme, **kwargs).serialize()
    assert path == classpath
    assert kwargs.items() <= stored.items()


@pytest.mark.parametrize(
    ("scheme", "kwargs", "streaming_only", "classpath"),
    [
        ("sqs+stream", {"sqs_queue": "http://sqs.local/0/q", "aws_conn_id": "aws_default"}, {"kept_conn_id": "events_db"},
         "airflow.providers.amazon.aws.triggers.sqs.SqsSensorTrigger"),
        ("kafka+stream", {"topics": ["t"], "kafka_config_id": "kafka_default", "apply_function": "json.dumps"},
         {"group_id": "airflow.g", "settled_conn_id": "events_db"},
         "airflow.providers.apache.kafka.triggers.await_message.AwaitMessageTrigger"),
    ],
)
def test_stock_setting_builds_the_stock_trigger_from_the_same_arguments(
        monkeypatch: pytest.MonkeyPatch, scheme: str, kwargs: dict[str, Any], streaming_only: dict[str, Any],
        classpath: str) -> None:
    """The benchmark's baseline: the DAG unchanged, the stock trigger with the arguments it takes and its defaults."""
    from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger

    from event_streams import queues

    monkeypatch.setenv(queues.TRIGGERS_ENV, "stock")
    assert not queues.streaming()
    path, stored = MessageQueueTrigger(scheme=scheme, **kwargs, **streaming_only).serialize()
    assert path == classpath
    assert kwargs.items() <= stored.items() and not streaming_only.keys() & stored.keys()


def test_shared_setting_builds_airflows_shared_stream_for_kafka_and_the_stock_sqs_trigger(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger

    from event_streams import queues

    monkeypatch.setenv(queues.TRIGGERS_ENV, "shared")
    assert not queues.streaming() and queues.trigger_kind() == "shared"
    path, stored = MessageQueueTrigger(scheme="kafka+stream", topics=["t"], kafka_config_id="k", group_id="g",
                                       settled_conn_id="events_db",
                                       apply_function="event_streams.pipelines.messages.kafka_message_to_event"
                                       ).serialize()
    assert path == "airflow.providers.apache.kafka.triggers.shared_stream.KafkaSharedStreamTrigger"
    assert stored == {"topics": ["t"], "kafka_config_id": "k", "poll_timeout": 1.0, "dlq_topic": None}
    path, _ = MessageQueueTrigger(scheme="sqs+stream", sqs_queue="http://sqs.local/0/q", kept_conn_id="e").serialize()
    assert path == "airflow.providers.amazon.aws.triggers.sqs.SqsSensorTrigger"


def test_an_unknown_trigger_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from event_streams import queues

    monkeypatch.setenv(queues.TRIGGERS_ENV, "stream")
    assert queues.streaming()
    monkeypatch.setenv(queues.TRIGGERS_ENV, "shard")
    with pytest.raises(ValueError, match="EVENT_STREAMS_TRIGGERS='shard'"):
        queues.streaming()


# --- arguments -------------------------------------------------------------------------------------------------------
def test_tuning_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    sqs_trigger = StreamingSqsTrigger(sqs_queue="q")
    assert (sqs_trigger.max_messages_per_event, sqs_trigger.linger_seconds, sqs_trigger.wait_time_seconds,
            sqs_trigger.visibility_timeout, sqs_trigger.handover_after_seconds,
            sqs_trigger.handover_visibility_timeout, sqs_trigger.max_event_bytes,
            sqs_trigger.max_message_bytes) == (100, 0.25, 20, 20, 10.0, 300, 1024 * 1024, 256 * 1024)
    for name, value in {"SQS_MESSAGES_PER_EVENT": "7", "KAFKA_MESSAGES_PER_EVENT": "9", "EVENT_LINGER_SECONDS": "0.5",
                        "SQS_WAIT_TIME_SECONDS": "3", "SQS_RECEIVE_VISIBILITY_TIMEOUT": "40",
                        "SQS_VISIBILITY_TIMEOUT": "600", "KAFKA_REDELIVERY_SECONDS": "30",
                        "MAX_EVENT_BYTES": "2048", "MAX_MESSAGE_BYTES": "512"}.items():
        monkeypatch.setenv(name, value)
    s = StreamingSqsTrigger(sqs_queue="q")
    assert (s.max_messages_per_event, s.linger_seconds, s.wait_time_seconds, s.visibility_timeout,
            s.handover_after_seconds, s.handover_visibility_timeout, s.max_event_bytes,
            s.max_message_bytes) == (7, 0.5, 3, 40, 20.0, 600, 2048, 512)
    k = StreamingKafkaTrigger(topics=["t"])
    assert (k.max_messages_per_event, k.linger_seconds, k.redelivery_seconds, k.max_event_bytes,
            k.max_message_bytes) == (9, 0.5, 30.0, 2048, 512)
    assert StreamingSqsTrigger(sqs_queue="q", max_messages_per_event=1).max_messages_per_event == 1  # argument wins
    # what the DAG parser resolved is stored: the triggerer does not read its own environment
    assert StreamingSqsTrigger(**s.serialize()[1]).serialize() == s.serialize()


class Record:
    def __init__(self, value: bytes | None, key: Any = b"k", timestamp: int = 1_700_000_000_000,
                 headers: list[tuple[str, bytes | None]] | None = None) -> None:
        self._value, self._key, self._ts, self._headers = value, key, timestamp, headers

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> Any:
        return self._key

    def timestamp(self) -> tuple[int, int]:
        return 1, self._ts

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        return self._headers

    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return 2

    def offset(self) -> int:
        return 9


def test_kafka_record_is_json_safe_and_bounded() -> None:
    assert payload.kafka_record(Record(b'{"a": 1}')) == {
        "source": "kafka", "message_id": "t/2/9", "body": '{"a": 1}', "topic": "t", "partition": 2, "offset": 9,
        "key": "k", "broker_timestamp_ms": 1_700_000_000_000}
    assert payload.kafka_record(Record(b"\xff\xfe"))["body_b64"] == "//4="
    big = payload.kafka_record(Record(b"x" * 11, key=None, timestamp=0), max_body_bytes=10)
    assert big["body_omitted_bytes"] == 11 and not big.keys() & {"body", "body_b64", "key", "broker_timestamp_ms"}


def test_kafka_record_keeps_key_bytes_and_where_the_read_started() -> None:
    odd = payload.kafka_record(Record(b"{}", key=b"\xff\x00dev"), read_from=4)
    assert odd["key_b64"] == "/wBkZXY=" and "key" not in odd
    assert odd["read_from"] == 4
    assert "read_from" not in payload.kafka_record(Record(b"{}"), read_from=9)  # the record's own offset
    for stamp in (2**62, -5, payload.MAX_TIMESTAMP_MS + 1):  # a broker timestamp no datetime holds is left out
        assert "broker_timestamp_ms" not in payload.kafka_record(Record(b"{}", timestamp=stamp))


def test_kafka_record_keeps_every_header_in_order() -> None:
    headers = [("trace", b"abc"), ("bin", b"\xff\x00"), ("none", None), ("trace", b"again")]
    record = payload.kafka_record(Record(b"{}", headers=headers))
    assert record["headers"] == [{"key": "trace", "value": "abc"}, {"key": "bin", "value_b64": "/wA="},
                                 {"key": "none"}, {"key": "trace", "value": "again"}]
    assert "headers" not in payload.kafka_record(Record(b"{}", headers=[]))
    assert payload.header_bytes(record["headers"]) == len("traceabc" "bin/wA=" "none" "traceagain")


class Consumer:
    def __init__(self, records: list[Record]) -> None:
        self.records = records

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        taken, self.records = self.records[:num_messages], self.records[num_messages:]
        for r in taken:
            r.error = lambda: None  # type: ignore[attr-defined]
        return taken


def test_kafka_apply_function_replaces_the_built_in_record_form() -> None:
    trigger = StreamingKafkaTrigger(topics=["t"], apply_function="event_streams.payload.kafka_record",
                                    apply_function_kwargs={"max_body_bytes": 1}, linger_seconds=0)
    trigger._consumer = Consumer([Record(b"abc")])
    assert trigger.gather() == [payload.kafka_record(Record(b"abc"), max_body_bytes=1)]
    default = StreamingKafkaTrigger(topics=["t"], max_message_bytes=2, linger_seconds=0)
    default._consumer = Consumer([Record(b"abc")])
    assert default.gather()[0]["body_omitted_bytes"] == 3


# --- SQS acknowledgement helpers -------------------------------------------------------------------------------------
class FakeSqs:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[dict[str, Any]]]] = []

    def _answer(self, name: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append((name, entries))
        bad = [e for e in entries if e.get("ReceiptHandle") == "gone"]
        return {"Successful": [{"Id": e["Id"]} for e in entries if e not in bad],
                "Failed": [{"Id": e["Id"], "Code": "ReceiptHandleIsInvalid"} for e in bad]}

    def delete_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        return self._answer("delete", Entries)

    def change_message_visibility_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        return self._answer("visibility", Entries)

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append(("send", Entries))
        return {"Successful": [{"Id": e["Id"]} for e in Entries]}


def test_sqs_helpers_go_in_batches_of_ten_and_skip_stale_handles(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeSqs()
    monkeypatch.setattr(sqs, "client", lambda *a, **k: fake)
    handles = [(f"m{i}", f"rh{i}") for i in range(23)] + [("old", "gone")]
    assert sqs.delete_messages("q", handles) == 23
    assert [len(e) for n, e in fake.calls] == [10, 10, 4]
    assert sqs.change_visibility("q", handles[:3], 30) == 3
    assert fake.calls[-1][1][0] == {"Id": "0", "ReceiptHandle": "rh0", "VisibilityTimeout": 30}
    sqs.send_messages("q", [("a", "body", {"reason": "r"})])
    assert fake.calls[-1] == ("send", [{"Id": "0", "MessageBody": "body",
                                        "MessageAttributes": {"reason": {"DataType": "String", "StringValue": "r"}}}])
    assert sqs.delete_messages("q", []) == 0 and sqs.change_visibility("q", [], 1) == 0


def test_safe_text_escapes_what_sqs_refuses_and_keeps_the_rest() -> None:
    assert sqs.safe_text("extra key '\x07\x00' not allowed; naïve ✓ \U0001f600", 1000) == \
        "extra key '\\x07\\x00' not allowed; naïve ✓ \U0001f600"
    assert sqs.safe_text("a\udc80b\ufffe", 100) == "a\\udc80b\\ufffe"  # a lone surrogate, a non-character
    assert sqs.safe_text("x" * 2000, 1000) == "x" * 999 + "…"
    assert sqs.safe_text("\t\n\r kept", 20) == "\t\n\r kept"


@given(st.text(max_size=300))
def test_safe_text_is_always_acceptable_to_sqs(value: str) -> None:
    out = sqs.safe_text(value, 200)
    assert len(out) <= 200 and sqs._REFUSED.search(out) is None
    out.encode("utf-8")  # no lone surrogate is left


def test_sends_go_in_batches_bounded_by_count_and_bytes() -> None:
    big = [(f"m{i}", "x" * 100_000, {"reason": "r"}) for i in range(5)]
    small = [(f"s{i}", "{}", {}) for i in range(12)]
    assert [[m[0] for m in b] for b in sqs.send_batches(big)] == [["m0", "m1"], ["m2", "m3"], ["m4"]]
    assert [len(b) for b in sqs.send_batches(small)] == [10, 2]
    alone = [("huge", "x" * 300_000, {}), ("next", "{}", {})]
    assert [[m[0] for m in b] for b in sqs.send_batches(alone)] == [["huge"], ["next"]]


def test_fifo_queues_get_a_group_and_a_deduplication_id_per_message() -> None:
    assert sqs.fifo_fields("http://q/000000000000/replies", "m-1") == {}
    fields = sqs.fifo_fields("http://q/000000000000/replies.fifo", "m-1")
    assert fields["MessageGroupId"] == fields["MessageDeduplicationId"] and len(fields["MessageGroupId"]) == 64
    assert fields != sqs.fifo_fields("http://q/000000000000/replies.fifo", "m-2")


# --- independence from the project -----------------------------------------------------------------------------------
def test_the_distribution_never_imports_the_project() -> None:
    for path in SRC.glob("*.py"):
        text = path.read_text()
        assert "from include" not in text and "import include" not in text, path.name
    code = ("import sys; import event_streams.queues, event_streams.triggers, event_streams.kafka_offsets, "
            "event_streams.sqs, event_streams.payload; print(any(m.split('.')[0] == 'include' for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=SRC.parent, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
