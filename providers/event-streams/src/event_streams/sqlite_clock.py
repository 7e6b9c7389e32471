"""Sub-second ``now()`` for Airflow's metadata database on SQLite (docs/performance.md "Where the time goes").

The scheduler starts a queued run only once ``dag_run.run_after <= now()``. SQLAlchemy compiles ``now()`` on SQLite
to ``CURRENT_TIMESTAMP``, which has whole seconds (``2026-11-26 13:40:05``) and is compared as text with the stored
microseconds (``2026-11-26 13:40:05.123456``), so every run waited for the next whole second. Loaded by the
provider's plugin (``event_streams.plugin``);
PostgreSQL (``astro dev start``) is not affected.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import now

# SQLAlchemy's storage format for SQLite date-times: six fraction digits. %f gives SS.SSS (milliseconds).
SQLITE_NOW = "(STRFTIME('%Y-%m-%d %H:%M:%f000', 'now'))"


@compiles(now, "sqlite")
def _sqlite_now(element: Any, compiler: Any, **kw: Any) -> str:
    return SQLITE_NOW
