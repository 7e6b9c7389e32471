"""Per-run figures (``event_streams.pipelines.runstats``): how long a run's messages waited, from the producer's
timestamps, with hostile bodies and broker timestamps left out of the wait only."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from event_streams.pipelines.messages import Envelope
from event_streams.pipelines.runstats import summarize


def test_run_stats_use_the_producer_timestamp() -> None:
    start = datetime(2026, 11, 24, 8, 0, 10, tzinfo=timezone.utc)
    envs = [
        Envelope(source="kafka", message_id="t/0/1", body="{}", broker_timestamp_ms=int(start.timestamp() * 1000) - 4000),
        Envelope(source="sqs", message_id="a", body=json.dumps({"submitted_at": "2026-11-24T08:00:09Z"})),
        Envelope(source="sqs", message_id="b", body=json.dumps({"submitted_at": "2026-11-24T08:00:00Z"})),
        Envelope(source="sqs", message_id="c", body="not json"),
        Envelope(source="sqs", message_id="d", body="[" * 100_000),  # RecursionError in json.loads
        Envelope(source="sqs", message_id="e", body='{"submitted_at": "9999-12-31T23:59:59-01:00"}'),
        Envelope(source="manual", message_id="m", body=json.dumps({"submitted_at": "2026-11-23T00:00:00Z"})),
    ]
    assert summarize(start, envs, "submitted_at") == {"messages": 7, "wait_p50_s": 4.0, "wait_max_s": 10.0}
    assert summarize(start, [], "submitted_at") == {"messages": 0, "wait_p50_s": None, "wait_max_s": None}


def test_a_broker_timestamp_no_datetime_holds_leaves_only_that_message_out_of_the_wait() -> None:
    start = datetime(2026, 11, 24, 8, 0, 10, tzinfo=timezone.utc)
    envs = [Envelope(source="kafka", message_id="t/0/0", broker_timestamp_ms=2**62),
            Envelope(source="kafka", message_id="t/0/1", broker_timestamp_ms=int((start.timestamp() - 4) * 1000))]
    assert summarize(start, envs, None) == {"messages": 2, "wait_p50_s": 4.0, "wait_max_s": 4.0}
