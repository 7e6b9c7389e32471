"""
## IoT alerting (Apache Kafka)

Sensor readings arrive on the `iot-readings` topic. Each run evaluates *all* readings coalesced into it, in
timestamp order per device, against a rule per sensor type with **hysteresis** (raise at one threshold, clear
only past a second one on the safe side), using per-device state kept in the `iot_device_state` table between
runs. State changes publish `raised` / `cleared` events to `iot-alerts`, keyed by device, each with a
`dedup_key`; readings that trip nothing publish nothing. Bad readings go to `iot-readings-dlq` (original key,
bytes and headers, then headers `reason` and `source_message_id`) and to the `dead_letters` table. Offsets are
committed after all that, in the watcher's own consumer group (`airflow.iot_alerting`), never past a reading no
run settled; the readings of a run that fails for good are read again, and dead-lettered with the error after
`MAX_FAILED_RUNS` failed runs (docs/delivery-guarantees.md "Runs that fail for good").

`max_active_runs=4`: runs start while the ones before them work, and each applies a partition's readings only
once the runs before it have settled the earlier ones (`KAFKA_ORDER_WAIT_SECONDS`), so device state is applied in
order; when a run fails for good, the later readings of its partitions wait for its re-read
(docs/delivery-guarantees.md "Kafka topics as production writes them"). Alerts leave through an outbox, only once
the state change that caused them is stored.

Example reading (schema: `include/iot_alerting/schemas.py:SensorReading`; rules: `iot_alerting/rules.py`):

```json
{"device_id": "pump-0042", "sensor": "temperature", "value": 81.5, "unit": "C", "ts": "2026-11-24T08:00:00Z"}
```

The streaming trigger is installed (`providers/event-streams`) and the apply function lives in `include/`: the
triggerer does not import from `dags/`.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger
from airflow.sdk import Asset, AssetWatcher, dag, task
from pendulum import datetime, duration

from event_streams.pipelines import airflow_io, config
from include.iot_alerting import clients, settings
from include.iot_alerting.pipeline import process_readings

# Watcher trigger: "kafka+stream" is this project's streaming trigger (providers/event-streams); the run commits.
readings_trigger = MessageQueueTrigger(
    scheme="kafka+stream",
    topics=[settings.IOT_READINGS_TOPIC],
    apply_function="event_streams.pipelines.messages.kafka_message_to_event",
    kafka_config_id=config.KAFKA_CONN_ID,
    group_id=settings.IOT_KAFKA_GROUP_ID,  # its own consumer group
    settled_conn_id=config.DB_CONN_ID,  # where runs record settled offsets (it resumes there if the broker lost them)
)
readings = Asset("kafka_iot_readings", watchers=[AssetWatcher(name="iot_readings_watcher", trigger=readings_trigger)])
source = airflow_io.KafkaSource(settings.IOT_DLQ_TOPIC)


@dag(
    schedule=[readings],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=4,
    doc_md=__doc__,
    default_args={"owner": "iot-ops", "retries": 3, "retry_delay": duration(seconds=10),
                  "on_failure_callback": airflow_io.on_failure(readings, source)},
    tags=["event-driven", "kafka", "iot"],
)
def iot_alerting() -> None:
    @task(multiple_outputs=False)  # one XCom for the outcome, not one per key (what a dict return type implies)
    def evaluate_and_alert(**context: Any) -> dict[str, Any]:
        """Every record of this run (all coalesced asset events): apply the rules, publish state changes, persist
        state and readings; then dead letters and offsets. One task, so a run costs one task process."""
        envelopes = airflow_io.to_envelopes(airflow_io.run_messages(context, readings, source))
        publish = clients.kafka_publisher(settings.IOT_ALERTS_TOPIC)
        outcome = process_readings(envelopes, airflow_io.engine(), publish, after_effect=airflow_io.fault_point)
        source.settle(envelopes, outcome.dead_letters)
        return outcome.as_dict()

    evaluate_and_alert()


iot_alerting()
