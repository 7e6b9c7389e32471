"""Typed, Airflow-free logic of the three event-driven pipelines (ETL, IoT alerting, inference).

Modules named ``airflow_io`` are the only ones that import Airflow; everything else can be unit-tested with
nothing but pydantic, SQLAlchemy and scikit-learn installed.
"""
