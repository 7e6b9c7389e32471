"""Project code importable by every Airflow component (the triggerer included).

Astro images put the project root (``/usr/local/airflow``) on ``sys.path``; the native runner does the same
through ``PYTHONPATH``. Apply functions named by dotted path in a watcher must live here, not in ``dags/``,
because the triggerer does not import from the DAG bundle.
"""
