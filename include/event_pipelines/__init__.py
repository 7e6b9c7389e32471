"""The shared core of the three pipelines (README "Layout"); it imports no pipeline folder.

config.py (shared settings), messages.py (envelopes, decoding, dead-letter rows), db.py (the events database's
engine, shared tables, idempotent writes), redelivery.py (runs that fail for good), runstats.py, faults.py (fault
suite only), heartbeat.py (a task's hold on its messages), celery_worker.py, and airflow_io.py (what a DAG calls:
the run's messages, the failure callback, map batches), sqs_source.py and kafka_source.py (taking, holding,
dead-lettering and acknowledging messages through the provider, ``event_streams``, which also brings the scheduler
listener and its plugin).
samples_api.py is the contract of each pipeline's ``samples.py`` (sample messages and sink checks for the lab).
Everything but the Airflow-facing modules can be unit-tested with pydantic and SQLAlchemy alone.
"""
