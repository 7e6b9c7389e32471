"""``event_streams.sqs``: one client per process and connection, and the batch calls' outcomes."""

from __future__ import annotations

import os
from typing import Any

import pytest

from event_streams import sqs


class FakeSqs:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[dict[str, Any]]]] = []

    def delete_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        self.calls.append(("delete", Entries))
        failed = [{"Id": e["Id"], "Code": "ReceiptHandleIsInvalid"} for e in Entries if e["ReceiptHandle"] == "stale"]
        return {"Successful": [e for e in Entries if e["ReceiptHandle"] != "stale"], "Failed": failed}

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        self.calls.append(("send", Entries))
        if len(self.calls) == 2:  # the second batch: SQS takes its first entry and fails the rest on its side
            return {"Successful": Entries[:1], "Failed": [{"Id": e["Id"], "Code": "InternalError",
                                                           "SenderFault": False} for e in Entries[1:]]}
        if len(self.calls) == 3:
            raise ConnectionError("endpoint unreachable")
        return {"Successful": Entries, "Failed": []}


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str | None, str | None]]:
    made: list[tuple[str | None, str | None]] = []

    class Hook:  # SqsHook's parts the client is made from: its session, endpoint, botocore config, verify
        config, verify = object(), None

        def __init__(self, aws_conn_id: str | None, region_name: str | None) -> None:
            self.key = (aws_conn_id, region_name)
            self.conn_config = self

        def get_service_endpoint_url(self, service_name: str) -> str:
            return f"http://{service_name}.local"

        def get_session(self, region_name: str | None = None) -> Hook:
            return self

        def client(self, service: str, endpoint_url: str, config: object, verify: object) -> FakeSqs:
            assert (service, endpoint_url, config, verify) == ("sqs", "http://sqs.local", Hook.config, None)
            made.append(self.key)
            return FakeSqs()

    import airflow.providers.amazon.aws.hooks.sqs as hooks

    monkeypatch.setattr(hooks, "SqsHook", Hook)
    monkeypatch.setattr(sqs, "_clients", {})
    return made


def test_a_process_makes_one_client_per_connection(made: list, monkeypatch: pytest.MonkeyPatch) -> None:
    first = sqs.client("aws_default")
    assert sqs.client("aws_default") is first and sqs.client("other") is not first
    assert made == [("aws_default", None), ("other", None)]
    monkeypatch.setattr(os, "getpid", lambda: -1)  # a forked child: its own client, not its parent's sockets
    assert sqs.client("aws_default") is not first and len(made) == 3


def test_deletes_go_in_batches_of_ten_and_a_stale_handle_is_only_logged(made: list) -> None:
    handles = [(f"m{i}", "stale" if i == 13 else f"rh{i}") for i in range(25)]
    assert sqs.delete_messages("q", handles) == 24
    fake = sqs.client("aws_default")
    assert [len(entries) for _, entries in fake.calls] == [10, 10, 5]


def test_a_send_that_fails_on_sqs_side_names_the_messages_it_sent(made: list) -> None:
    """The first batch went, the second only in part: the caller is told exactly which, to mark them done."""
    messages = [(f"m{i}", "{}", {}) for i in range(25)]
    with pytest.raises(sqs.SendFailed) as failed:
        sqs.send_messages("q", messages)
    assert failed.value.sent == [f"m{i}" for i in range(11)]
    with pytest.raises(sqs.SendFailed) as unreachable:  # the call itself fails on the next batch
        sqs.send_messages("q", messages[20:])
    assert unreachable.value.sent == [] and isinstance(unreachable.value.__cause__, ConnectionError)
