"""Project code importable by every Airflow component (the triggerer included); README "Layout".

``data_delivery_etl/``, ``iot_alerting/`` and ``inference_execution/`` hold one pipeline each (named like its DAG)
and import only the shared core (``event_streams.pipelines``, installed with the queue provider) and themselves,
never each other (tests/integrity/test_layout.py). Apply functions named by dotted path in a watcher must be
importable by the triggerer, which does not import from the DAG bundle: the core's are in the provider. Astro images
put the project root on ``sys.path``; the native runner sets ``PYTHONPATH``.
"""
