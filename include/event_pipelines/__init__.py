"""The shared core of the three pipelines (README "Layout"); it imports no pipeline folder.

config.py (shared settings), messages.py (envelopes, decoding, dead-letter rows), db.py (shared tables, idempotent
writes), redelivery.py (runs that fail for good), runstats.py, faults.py (fault suite only), heartbeat.py (a task's
hold on its messages), stranded_events.py (scheduler listener), sqlite_clock.py, celery_worker.py, and
airflow_io.py (the run's messages and their SQS/Kafka acknowledgement through the provider, ``event_streams``).
Everything but the Airflow-facing modules can be unit-tested with pydantic and SQLAlchemy alone.
"""
