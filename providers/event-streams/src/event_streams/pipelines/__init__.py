"""What a DAG fed by these triggers calls, shared by every pipeline: installed with the provider, so a copied
pipeline needs its DAG file, its ``include/`` folder and one requirements line. It imports no project code.

config.py (shared settings), messages.py (envelopes, decoding, dead-letter rows), db.py (the events database's
engine, shared tables, idempotent writes), redelivery.py (runs that fail for good), runstats.py, faults.py (fault
suite only), heartbeat.py (a task's hold on its messages), celery_worker.py, and airflow_io.py (what a DAG calls:
the run's messages, the failure callback, map batches), sqs_source.py and kafka_source.py (taking, holding,
dead-lettering and acknowledging messages through the provider's modules), streams.py and streams_api.py (the
streams page's data and API; its plugin is the project's ``plugins/event_streams_page.py``).
samples_api.py is the contract of each pipeline's ``samples.py`` (sample messages and sink checks for the lab).
Everything but the Airflow-facing modules can be unit-tested with pydantic and SQLAlchemy alone.
"""
