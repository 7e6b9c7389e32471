"""``event_streams.payload.describe`` and the triggers' ``BatchEvent``: the line Airflow logs for each event names
the batch and never carries a message's content."""

from __future__ import annotations

from typing import Any

from airflow.triggers.base import TriggerEvent

from event_streams import payload
from event_streams.triggers import BatchEvent

SECRET = "card=4111111111111111"


def _kafka(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {payload.SOURCE: payload.KAFKA_BATCH, payload.GROUP_ID: "airflow-iot", payload.RECORDS: records}


def test_a_kafka_batch_is_described_by_its_offset_ranges_per_partition() -> None:
    records = [{"topic": "t", "partition": p, "offset": o, "body": SECRET} for p, o in [(1, 7), (0, 3), (1, 5), (0, 4)]]

    assert payload.describe(_kafka(records)) == "4 Kafka records (group airflow-iot): t/0@3..4, t/1@5..7"


def test_an_sqs_batch_is_described_by_its_count_and_first_and_last_ids() -> None:
    batch = [{"MessageId": f"m-{i}", "ReceiptHandle": "rh", "Body": SECRET} for i in range(3)]

    assert payload.describe({"status": "success", payload.MESSAGE_BATCH: batch}) == "3 SQS messages: m-0 .. m-2"
    assert payload.describe({payload.MESSAGE_BATCH: batch[:1]}) == "1 SQS messages: m-0"


def test_hostile_shapes_are_described_without_raising() -> None:
    assert payload.describe(_kafka([{"offset": "x"}, "not a record", {"topic": "t", "partition": 0, "offset": 1}])) \
        == "3 Kafka records (group airflow-iot): t/0@1..1"
    assert payload.describe({payload.MESSAGE_BATCH: [None, 5]}) == "2 SQS messages"
    assert payload.describe(SECRET) == "a payload of type str"
    many = [{"topic": "t", "partition": p, "offset": 0} for p in range(12)]
    assert payload.describe(_kafka(many)).endswith("and 4 more partitions")


def test_the_event_logged_by_the_triggerer_carries_no_content_and_its_payload_is_unchanged() -> None:
    event_payload = _kafka([{"topic": "t", "partition": 0, "offset": 1, "body": SECRET}])
    event = BatchEvent(event_payload)

    assert SECRET not in repr(event) and SECRET not in str(event) and SECRET not in f"{event!r}"
    assert repr(event) == "TriggerEvent<1 Kafka records (group airflow-iot): t/0@1..1>"
    # what the trigger runner sends to the triggerer's supervisor, which stores it with the asset event
    assert TriggerEvent.model_validate(event.model_dump()).payload == event_payload
