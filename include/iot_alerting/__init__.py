"""IoT alerting (``dags/iot_alerting.py``): schemas, rules with hysteresis, the evaluation logic, its tables and
settings, and its clients (the Kafka alert producer, from a provider hook). Imports only ``event_streams.pipelines``."""
