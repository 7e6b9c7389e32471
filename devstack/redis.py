"""A throwaway Redis server: the Celery broker of the native stack's HA profile (``DEVSTACK_PROFILE=ha``).

``DEVSTACK_PROFILE=ha make up`` runs Airflow with ``CeleryExecutor``; its broker is a private Redis server from
Debian's packages (``apt-get install redis-server``): its own config file and data in ``<state>/redis``, listening on
127.0.0.1:6380 only (``DEVSTACK_REDIS_PORT``; not 6379, so a system server is left alone), ``protected-mode yes``,
no password (nothing but this machine can reach it), started by ``up`` and stopped by ``down`` by its PID file.
Redis is fine running as root, so unlike ``devstack.postgres`` there is no user to switch to.

Stdlib only (the readiness check speaks RESP over a socket), so ``down`` works without the ``redis`` client.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

from devstack import brokers

PORT = int(os.environ.get("DEVSTACK_REDIS_PORT", "6380"))  # not 6379: leave a system server alone
BIND = "127.0.0.1"  # TCP on the loopback interface only
BINARY = "redis-server"


class RedisError(RuntimeError):
    pass


def binary() -> str | None:
    """``redis-server`` on the PATH, or where Debian's package puts it (root's PATH may lack /usr/bin in CI shells)."""
    found = shutil.which(BINARY)
    if found:
        return found
    return f"/usr/bin/{BINARY}" if Path(f"/usr/bin/{BINARY}").exists() else None


def unavailable_reason() -> str | None:
    if binary() is None:
        return "redis-server not found (Debian: apt-get install redis-server)"
    return None


def url(port: int = PORT, db: int = 0) -> str:
    """The Celery broker URL: no password, the server answers on loopback only."""
    return f"redis://{BIND}:{port}/{db}"


def config(data: Path, port: int = PORT) -> str:
    """``redis.conf`` of the private server. Only this file is read (not Debian's /etc/redis/redis.conf)."""
    return "\n".join(
        [
            "# Written by devstack/redis.py: the HA profile's Celery broker, on the loopback interface only.",
            f"bind {BIND}",
            # Refuses clients from other interfaces should a bind ever widen while no password is set.
            "protected-mode yes",
            f"port {port}",  # and no `unixsocket` line: TCP only, no socket file in a folder open to other users
            "daemonize no",  # the runner keeps the PID and stops the process group itself
            "supervised no",
            'logfile ""',  # stdout, which the runner sends to <run>/redis.log
            f"dir {data}",
            # Queued task messages survive a stop/start of the broker (a fault test, a crash): the append-only file,
            # flushed every second; no RDB snapshots, which would fork a copy of the server now and then.
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            "",
        ]
    )


def _pid_file(run: Path) -> Path:
    return run / "redis.pid"


def running(run: Path) -> int | None:
    """PID of the server started with this run folder, if it is running."""
    return brokers.running_pid(_pid_file(run))


def ping(port: int = PORT, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((BIND, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start(data: Path, run: Path, port: int = PORT, timeout: float = 30) -> str:
    """Write the config, start the server (unless it runs) and wait until it answers PING; returns its URL."""
    exe = binary()
    if exe is None:
        raise RedisError(unavailable_reason() or "no redis-server")
    data, run = Path(data).resolve(), Path(run).resolve()
    if running(run) is None:
        try:
            brokers._check_free("redis", port)  # another server on the port would answer our PINGs
        except brokers.BrokerError as exc:
            raise RedisError(str(exc)) from exc
        data.mkdir(parents=True, exist_ok=True)
        conf = data / "redis.conf"
        conf.write_text(config(data, port))
        # Like the brokers' JVMs: its own session (``stop`` signals the group), output to the log, PID to a file.
        brokers._spawn([exe, str(conf)], run / "redis.log", _pid_file(run), data)
    deadline = time.monotonic() + timeout
    while not ping(port):
        pid = running(run)
        if pid is None or time.monotonic() > deadline:
            what = "exited" if pid is None else f"did not answer PING on {BIND}:{port} within {timeout:.0f}s"
            raise RedisError(f"redis-server {what}\n--- {run / 'redis.log'} (tail) ---\n"
                             f"{brokers.log_tail(run / 'redis.log')}")
        time.sleep(0.1)
    return url(port)


def stop(run: Path, timeout: float = 20) -> bool:
    """SIGTERM (Redis flushes its append-only file and exits), SIGKILL after ``timeout``; ``True`` if it ran.
    Only a process whose command line names ``redis-server`` is signalled (a stale PID may have been reused)."""
    return brokers.stop_pid(_pid_file(Path(run)), timeout, expect=BINARY)
