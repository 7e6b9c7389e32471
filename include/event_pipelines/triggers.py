# Moved to the installed distribution providers/event-streams (the triggerer imports it from site-packages); this
# re-export keeps existing imports working. Use MessageQueueTrigger(scheme="sqs+stream" | "kafka+stream") in DAGs.
from event_streams.triggers import StreamingKafkaTrigger, StreamingSqsTrigger, kafka_body_bytes, sqs_body_bytes  # noqa: F401
