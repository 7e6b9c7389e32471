"""The streams page in Airflow's UI: per watcher, the broker's backlog / in flight / lag, what Airflow holds, message
age, dead letters with replay and discard, and broker ↔ Airflow drift (docs/metrics.md "The streams page").

Its API and page are `event_streams.pipelines.streams_api`, mounted on the API server at `/event-streams` and
built on the first request; signed-in users only, with the DAGs' own permissions.
"""

from airflow.plugins_manager import AirflowPlugin

from event_streams.pipelines.streams_api import LazyApp


class EventStreamsPagePlugin(AirflowPlugin):
    name = "event_streams_page"
    fastapi_apps = [{"app": LazyApp(), "url_prefix": "/event-streams", "name": "Event streams"}]
    external_views = [
        {"name": "Event streams", "href": "/event-streams/", "url_route": "event-streams", "destination": "nav",
         "category": "browse"},
        {"name": "Streams", "href": "/event-streams/?dag_id={DAG_ID}", "url_route": "event-streams-dag",
         "destination": "dag"},
    ]
