# Moved to the installed distribution providers/event-streams (event_streams.kafka_offsets); re-exported here so
# existing imports keep working.
from event_streams.kafka_offsets import SafeKafkaConsumerHook, commit_settled, safe_consumer_config, settled_intervals, watermark  # noqa: F401,E501
