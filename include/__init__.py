"""Project code importable by every Airflow component (the triggerer included); README "Layout".

``event_pipelines/`` is the shared core; ``data_delivery_etl/``, ``iot_alerting/`` and ``inference_execution/`` hold
one pipeline each (named like its DAG) and import only the core, never each other (tests/integrity/test_layout.py).
Apply functions named by dotted path in a watcher must live here, not in ``dags/``: the triggerer does not import
from the DAG bundle. Astro images put the project root on ``sys.path``; the native runner sets ``PYTHONPATH``.
"""
