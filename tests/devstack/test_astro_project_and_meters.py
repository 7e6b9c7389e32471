from __future__ import annotations

from pathlib import Path

from airflow.models import Connection

from devstack.astro_project import connection_env, dockerfile_env

ROOT = Path(__file__).resolve().parents[2]


def test_native_runner_reuses_airflow_settings_overriding_only_hosts(tmp_path: Path) -> None:
    env = connection_env(ROOT / "airflow_settings.yaml", sqlite_path=tmp_path / "events.db")
    conns = {k: Connection.from_json(v, conn_id=k) for k, v in env.items()}
    assert set(env) == {"AIRFLOW_CONN_AWS_DEFAULT", "AIRFLOW_CONN_KAFKA_DEFAULT", "AIRFLOW_CONN_EVENTS_DB",
                        "AIRFLOW_CONN_INFERENCE_ENDPOINT"}
    aws = conns["AIRFLOW_CONN_AWS_DEFAULT"].extra_dejson
    assert aws == {"region_name": "us-east-1", "endpoint_url": "http://127.0.0.1:9324"}
    kafka = conns["AIRFLOW_CONN_KAFKA_DEFAULT"].extra_dejson
    assert kafka["bootstrap.servers"] == "127.0.0.1:9092" and kafka["enable.auto.commit"] is False
    assert kafka["group.id"] == "event-driven-airflow"
    db = conns["AIRFLOW_CONN_EVENTS_DB"]
    assert (db.conn_type, db.host) == ("sqlite", str(tmp_path / "events.db"))


def test_native_runner_applies_the_dockerfile_airflow_config(tmp_path: Path) -> None:
    shipped = dockerfile_env(ROOT / "Dockerfile")
    assert shipped["AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME"] == "0.2"
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "FROM x\nENV AIRFLOW__A__B=1 OTHER=2 AIRFLOW__C__D='two words'\nenv AIRFLOW__E__F 3 4\n# ENV AIRFLOW__G__H=5\n"
    )
    assert dockerfile_env(dockerfile) == {"AIRFLOW__A__B": "1", "AIRFLOW__C__D": "two words", "AIRFLOW__E__F": "3 4"}


def test_idle_cpu_of_a_group_keeps_the_seconds_of_children_that_exited(tmp_path: Path) -> None:
    """A child that exits between two samples moves its CPU time into its parent's cutime/cstime: the group's total
    must not drop (the benchmark once printed dag-processor: -2.6 % of a core)."""
    import os

    from devstack.bench import group_cpu_seconds

    tick = os.sysconf("SC_CLK_TCK")

    def proc(members: dict[int, tuple[int, int, int, int]], pgrp: int = 42) -> Path:
        root = tmp_path / f"proc{len(list(tmp_path.iterdir()))}"
        for pid, (utime, stime, cutime, cstime) in members.items():
            (root / str(pid)).mkdir(parents=True)
            fields = ["S", "1", str(pgrp)] + ["0"] * 8 + [str(utime), str(stime), str(cutime), str(cstime)] + ["0"] * 5
            (root / str(pid) / "stat").write_text(f"{pid} (airflow dag-processor) " + " ".join(fields))
        (root / "self").mkdir(parents=True)
        return root

    before = group_cpu_seconds(42, proc({42: (100, 50, 0, 0), 43: (30, 10, 0, 0)}))
    after = group_cpu_seconds(42, proc({42: (101, 50, 30, 10)}))  # 43 exited and was reaped by 42
    assert before == 190 / tick and after == 191 / tick


def test_cpu_of_a_process_tree_counts_descendants_only(tmp_path: Path) -> None:
    """bench-workers meters PostgreSQL by parentage (its backends are the postmaster's children, not its group):
    the postmaster, its children and theirs count; a process elsewhere does not."""
    import os

    from devstack.bench import tree_cpu_seconds

    tick = os.sysconf("SC_CLK_TCK")
    for pid, ppid, utime in [(10, 1, 5), (11, 10, 7), (12, 11, 3), (13, 1, 1000)]:
        (tmp_path / str(pid)).mkdir()
        fields = ["S", str(ppid), "1"] + ["0"] * 8 + [str(utime), "1", "0", "0"] + ["0"] * 5
        (tmp_path / str(pid) / "stat").write_text(f"{pid} (postgres: a backend) " + " ".join(fields))
    assert tree_cpu_seconds(10, tmp_path) == (5 + 7 + 3 + 3) / tick
    assert tree_cpu_seconds(99, tmp_path) == 0


def test_resident_memory_of_a_group_sums_its_members_only(tmp_path: Path) -> None:
    """The benchmark's memory figure per stage: the RSS pages of every process in the group, nothing else."""
    import os

    from devstack.bench import group_rss_mb

    page = os.sysconf("SC_PAGE_SIZE")
    for pid, pgrp, resident in [(42, 42, 1000), (43, 42, 500), (44, 7, 90000)]:
        (tmp_path / str(pid)).mkdir()
        fields = ["S", "1", str(pgrp)] + ["0"] * 17
        (tmp_path / str(pid) / "stat").write_text(f"{pid} (airflow scheduler) " + " ".join(fields))
        (tmp_path / str(pid) / "statm").write_text(f"99999 {resident} 10 1 0 5 0")
    assert group_rss_mb(42, tmp_path) == 1500 * page / 1e6
    assert group_rss_mb(5, tmp_path) == 0
