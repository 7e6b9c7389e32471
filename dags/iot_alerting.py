"""
## IoT alerting (Apache Kafka)

Sensor readings arrive on the `iot-readings` topic. Each run evaluates *all* readings coalesced into it, in
timestamp order per device, against a rule per sensor type with **hysteresis** (raise at one threshold, clear
only past a second one on the safe side), using per-device state kept in the `iot_device_state` table between
runs. State changes publish `raised` / `cleared` events to `iot-alerts`, keyed by device, each with a
`dedup_key`; readings that trip nothing publish nothing. Bad readings go to `dead_letters` with their reason.

`max_active_runs=1`: device state is applied in order, one run at a time.

Example reading (schema: `include/event_pipelines/iot/schemas.py:SensorReading`; rules: `iot/rules.py`):

```json
{"device_id": "pump-0042", "sensor": "temperature", "value": 81.5, "unit": "C", "ts": "2026-11-24T08:00:00Z"}
```

The apply function lives in `include/` because the triggerer does not import from `dags/`.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger
from airflow.sdk import Asset, AssetWatcher, dag, task
from pendulum import datetime, duration

from include.event_pipelines import airflow_io, config
from include.event_pipelines.iot.pipeline import process_readings

readings_trigger = MessageQueueTrigger(
    scheme="kafka",
    topics=[config.IOT_READINGS_TOPIC],
    apply_function="include.event_pipelines.messages.kafka_message_to_event",
    kafka_config_id=config.KAFKA_CONN_ID,
    poll_timeout=1,
    poll_interval=config.KAFKA_POLL_INTERVAL,
)
readings = Asset("kafka_iot_readings", watchers=[AssetWatcher(name="iot_readings_watcher", trigger=readings_trigger)])


@dag(
    schedule=[readings],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    default_args={"owner": "iot-ops", "retries": 3, "retry_delay": duration(seconds=10)},
    tags=["event-driven", "kafka", "iot"],
)
def iot_alerting() -> None:
    @task
    def collect_readings(**context: Any) -> list[dict[str, Any]]:
        """Every Kafka record of this run (one asset event per record, all coalesced events)."""
        return airflow_io.run_messages(context, readings)

    @task
    def evaluate_and_alert(messages: list[dict[str, Any]]) -> dict[str, Any]:
        """Apply the rules, publish state changes to the alert topic, then persist state and readings."""
        publish = airflow_io.kafka_publisher(config.IOT_ALERTS_TOPIC)
        return process_readings(airflow_io.to_envelopes(messages), airflow_io.engine(), publish).as_dict()

    evaluate_and_alert(collect_readings())


iot_alerting()
