"""The shared core of the three pipelines (README "Layout"); it imports no pipeline folder.

config.py (shared settings), messages.py (envelopes, decoding, dead-letter rows), db.py (shared tables, idempotent
writes), redelivery.py, runstats.py, faults.py, stranded_events.py (scheduler listener), triggers.py, watchers.py,
kafka_offsets.py, and airflow_io.py (the run's messages and their SQS/Kafka acknowledgement). Everything but the
Airflow-facing modules can be unit-tested with pydantic and SQLAlchemy alone.
"""
