"""
## A second DAG on `iot-readings` (the e2e suite's, not the template's)

What a user builds by copying `iot_alerting` for another consumer of the same topic: its watcher reads in its own
consumer group (`airflow.iot_readings_audit`), so its offsets and settled ranges are its own. Its one task keeps
every record's id in `iot_readings_audit`, then commits.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger
from airflow.sdk import Asset, AssetWatcher, dag, task
from pendulum import datetime
from sqlalchemy import Column, MetaData, String, Table

from event_streams.pipelines import airflow_io, config, db
from include.iot_alerting import settings

GROUP_ID = "airflow.iot_readings_audit"
audit = Table("iot_readings_audit", MetaData(), Column("message_id", String(256), primary_key=True))

readings_trigger = MessageQueueTrigger(
    scheme="kafka+stream",
    topics=[settings.IOT_READINGS_TOPIC],
    apply_function="event_streams.pipelines.messages.kafka_message_to_event",
    kafka_config_id=config.KAFKA_CONN_ID,
    group_id=GROUP_ID,
    settled_conn_id=config.DB_CONN_ID,
)
readings = Asset("kafka_iot_readings_audit", watchers=[AssetWatcher(name="iot_readings_audit_watcher",
                                                                    trigger=readings_trigger)])
source = airflow_io.KafkaSource(settings.IOT_DLQ_TOPIC)


@dag(schedule=[readings], start_date=datetime(2026, 1, 1), catchup=False, max_active_runs=1,
     default_args={"retries": 2}, tags=["event-driven", "kafka", "e2e"], doc_md=__doc__)
def iot_readings_audit() -> None:
    @task
    def record(**context: Any) -> int:
        envelopes = airflow_io.to_envelopes(airflow_io.run_messages(context, readings, source))
        engine = airflow_io.engine()
        audit.create(engine, checkfirst=True)
        with engine.begin() as conn:
            db.insert_ignore(conn, audit, [{"message_id": e.message_id} for e in envelopes])
        source.settle(envelopes, [])
        return len(envelopes)

    record()


iot_readings_audit()
