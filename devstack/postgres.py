"""A throwaway PostgreSQL server for the native stack's Airflow metadata database (``DEVSTACK_DB=postgres``).

``astro dev start`` runs Airflow on PostgreSQL; the native runner defaults to SQLite (nothing to install), and
``DEVSTACK_DB=postgres make up`` (or ``make bench`` with ``--db postgres``) runs the same stack on a real PostgreSQL
server from Debian's packages (``apt-get install postgresql``): a private cluster in ``<state>/postgres``, listening
on 127.0.0.1 only, trust authentication, stopped by ``make down``. PostgreSQL refuses to run as root, so as root the
cluster belongs to the ``postgres`` user the package creates (and directories on the way to it get the search bit).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

PORT = int(os.environ.get("DEVSTACK_PG_PORT", "5433"))  # not 5432: leave a system server alone
DATABASE = "airflow"
LISTEN_ADDRESSES = "127.0.0.1"  # TCP on the loopback interface only


class PostgresError(RuntimeError):
    pass


def bindir() -> Path | None:
    """Where ``initdb``/``pg_ctl`` are: Debian keeps them in /usr/lib/postgresql/<version>/bin, off the PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def unavailable_reason() -> str | None:
    if bindir() is None:
        return "PostgreSQL server binaries not found (Debian: apt-get install postgresql)"
    return None


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(_as_owner(cmd), capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise PostgresError(f"{what} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")


def _ensure_owner() -> None:
    """As root, the server runs as the ``postgres`` user (PostgreSQL refuses to run as root). Debian's package creates
    it on install, but a machine image can carry the package without the user: create a system user then."""
    import grp
    import pwd

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        try:
            grp.getgrnam("postgres")
            group = ["--gid", "postgres"]  # the group can outlive the user
        except KeyError:
            group = ["--user-group"]
        subprocess.run(["useradd", "--system", *group, "--no-create-home", "--shell", "/usr/sbin/nologin",
                        "postgres"], check=True, capture_output=True, timeout=60)


def _let_postgres_through(directory: Path) -> None:
    """The ``postgres`` user must reach the cluster: add the search bit (only that: no listing) to any ancestor
    directory lacking it, e.g. a 0700 temporary directory of the benchmark or the tests."""
    for d in (directory, *directory.parents):
        mode = d.stat().st_mode
        if not mode & 0o001:
            d.chmod(mode | 0o001)


def url(port: int = PORT) -> str:
    return f"postgresql+psycopg2://postgres@127.0.0.1:{port}/{DATABASE}"


def server_options(data: Path, port: int = PORT) -> str:
    """``postgres`` options of the private server: TCP on the loopback interface only (``listen_addresses``), its
    Unix socket inside the data folder, and small and fast: a benchmark/test database on a
    laptop-class machine, durability not needed."""
    return (f"-c listen_addresses={LISTEN_ADDRESSES} -c port={port} -c unix_socket_directories={data}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")


def start(data: Path, log: Path, port: int = PORT) -> str:
    """Create the cluster on first use, start it (if not running) and the ``airflow`` database; returns its URL."""
    bins = bindir()
    if bins is None:
        raise PostgresError(unavailable_reason() or "no PostgreSQL")
    data.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch()
    if os.geteuid() == 0:
        _ensure_owner()
        _let_postgres_through(data.parent)
        shutil.chown(data, "postgres", "postgres")
        shutil.chown(log, "postgres", "postgres")
        data.chmod(0o700)
    if not (data / "PG_VERSION").exists():
        _run([str(bins / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"],
             "initdb")
    if not running(data):
        _run([str(bins / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
              "-o", server_options(data, port), "start"], "pg_ctl start")
    exists = subprocess.run(
        _as_owner([str(bins / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-tAc",
                   f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"]),
        capture_output=True, text=True, timeout=60,
    )
    if exists.stdout.strip() != "1":
        _run([str(bins / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", DATABASE], "createdb")
    return url(port)


def running(data: Path) -> bool:
    bins = bindir()
    if bins is None or not (data / "PG_VERSION").exists():
        return False
    if os.geteuid() == 0:
        # Again: pytest makes its temporary root 0700 at each session's start (another session meanwhile took the
        # search bit away: `pg_ctl status` then said "not running" and `down` left the server on).
        _let_postgres_through(data.parent)
    return subprocess.run(_as_owner([str(bins / "pg_ctl"), "-D", str(data), "status"]),
                          capture_output=True, timeout=30).returncode == 0


def stop(data: Path) -> None:
    """Stop the server (fast shutdown: clients disconnected, no wait for them)."""
    if running(data):
        bins = bindir()
        assert bins is not None
        _run([str(bins / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"], "pg_ctl stop")
