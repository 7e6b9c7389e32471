"""IoT alerting (``dags/iot_alerting.py``): schemas, rules with hysteresis, the evaluation logic, its tables and
settings, and its Airflow hooks (the Kafka alert producer). Imports only ``include.event_pipelines``."""
