"""Native local stack: the project's own installer and runner for Kafka, SQS and Airflow, without Docker."""
