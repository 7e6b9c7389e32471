"""The streams page's API and page (a FastAPI app the plugin ``plugins/event_streams_page.py`` mounts on Airflow's
API server at ``/event-streams``): the figures of ``streams.overview``, the dead letters, and replay / discard.

Airflow does not put a plugin's app behind its auth by itself: every route here takes the signed-in user
(``get_user``: the UI's cookie or a bearer token) and checks the DAG's permissions with Airflow's auth manager —
reading needs GET on the DAG, replaying or discarding needs PUT on its runs. A replay is a manual run of the DAG with
the dead letters' original bodies (``{"messages": [...]}``), recorded once per dead letter with who and when.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations (``GetUserDep``, ``SessionDep``,
# imported inside ``create_app``) when they are declared.
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from event_streams.pipelines import db, streams

if TYPE_CHECKING:
    from fastapi import FastAPI
    from sqlalchemy import Engine

PAGE = Path(__file__).with_name("streams_page.html")


def events_engine() -> "Engine | None":
    """The events database, or ``None`` when its connection cannot be opened (the page still shows the rest)."""
    try:
        return db.engine()
    except Exception:  # a missing connection or a database that is down must not take the page down
        return None


class LazyApp:
    """The ASGI app, built on its first request: Airflow imports plugins in every process (task processes too), and
    only the API server ever calls this."""

    def __init__(self) -> None:
        self._app: "FastAPI | None" = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            self._app = create_app()
        await self._app(scope, receive, send)


def create_app() -> "FastAPI":
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.common.db.common import SessionDep
    from airflow.api_fastapi.core_api.security import GetUserDep, get_auth_manager, requires_access_dag
    from fastapi import Body, Depends, FastAPI, HTTPException
    from fastapi.responses import HTMLResponse

    app = FastAPI(title="Event streams", description=__doc__)

    def readable(user: Any, dag_ids: set[str]) -> set[str]:
        return get_auth_manager().get_authorized_dag_ids(user=user, method="GET") & dag_ids

    @app.get("/", response_class=HTMLResponse)
    def page(user: GetUserDep) -> str:
        return PAGE.read_text()

    @app.get("/api/streams")
    def overview(user: GetUserDep, session: SessionDep) -> dict[str, Any]:
        sections = streams.overview(session, events_engine())
        allowed = readable(user, {s["dag_id"] for s in sections})
        return {"sections": [s for s in sections if s["dag_id"] in allowed], "generated_at": db.utcnow().isoformat()}

    @app.get("/api/dead-letters")
    def dead_letters(user: GetUserDep, session: SessionDep, dag_id: str | None = None, reason: str | None = None,
                     before: datetime | None = None, limit: int = streams.DEAD_LETTERS_PAGE) -> dict[str, Any]:
        events = events_engine()
        if events is None:
            raise HTTPException(503, "the events database is unreachable")
        allowed = readable(user, {w for wt in streams.watchers(session) for w in wt.dag_ids})
        if dag_id is not None and dag_id not in allowed:
            raise HTTPException(403, f"no access to DAG {dag_id!r}")
        rows = streams.dead_letters(events, dag_id, reason, before, limit)
        return {"dead_letters": [r for r in rows if r["pipeline"] in allowed]}

    def act(action: str, dag_id: str, message_ids: list[str], user: Any, session: Any) -> dict[str, Any]:
        from airflow.api.common.trigger_dag import trigger_dag
        from airflow.utils.types import DagRunTriggeredByType

        events = events_engine()
        if events is None:
            raise HTTPException(503, "the events database is unreachable")

        def replay(pipeline: str, bodies: list[str]) -> str:
            run = trigger_dag(pipeline, triggered_by=DagRunTriggeredByType.REST_API, conf={"messages": bodies},
                              triggering_user_name=user.get_name(),
                              note=f"replay of {len(bodies)} dead letter(s) from the streams page", session=session)
            if run is None:
                raise HTTPException(409, f"DAG {pipeline!r} could not be triggered")
            return str(run.run_id)

        done = streams.act(events, dag_id, message_ids, action, user.get_name(), replay)
        if not done:
            raise HTTPException(404, f"no such dead letter of {dag_id!r}")
        return {"actions": [a.__dict__ for a in done]}

    edit_runs = [Depends(requires_access_dag("PUT", DagAccessEntity.RUN))]
    MessageIds = Annotated[list[str], Body()]  # the JSON body: the dead letters' message ids  # noqa: N806

    # ``:path``: a Kafka record's id is ``topic/partition/offset``
    @app.post("/api/dead-letters/{dag_id}/{message_id:path}/replay", dependencies=edit_runs)
    def replay(dag_id: str, message_id: str, user: GetUserDep, session: SessionDep) -> dict[str, Any]:
        return act("replayed", dag_id, [message_id], user, session)["actions"][0]

    @app.post("/api/dead-letters/{dag_id}/{message_id:path}/discard", dependencies=edit_runs)
    def discard(dag_id: str, message_id: str, user: GetUserDep, session: SessionDep) -> dict[str, Any]:
        return act("discarded", dag_id, [message_id], user, session)["actions"][0]

    @app.post("/api/dead-letters/{dag_id}/replay", dependencies=edit_runs)
    def replay_many(dag_id: str, message_ids: MessageIds, user: GetUserDep, session: SessionDep) -> dict[str, Any]:
        """Several dead letters of one DAG in one manual run (those not replayed or discarded before)."""
        return act("replayed", dag_id, message_ids, user, session)

    @app.post("/api/dead-letters/{dag_id}/discard", dependencies=edit_runs)
    def discard_many(dag_id: str, message_ids: MessageIds, user: GetUserDep, session: SessionDep) -> dict[str, Any]:
        return act("discarded", dag_id, message_ids, user, session)

    return app
