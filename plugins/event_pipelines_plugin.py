"""Registers the project's scheduler listener (see include/event_pipelines/stranded_events.py)."""

from airflow.plugins_manager import AirflowPlugin

from include.event_pipelines import stranded_events


class EventPipelinesPlugin(AirflowPlugin):
    name = "event_pipelines"
    listeners = [stranded_events]
