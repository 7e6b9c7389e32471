"""devstack.standalone: the env file and the environment, as astro-cli's standalone mode builds them."""

from __future__ import annotations

from pathlib import Path

from devstack import standalone


def test_the_env_file_is_read_as_astro_cli_reads_it(tmp_path: Path) -> None:
    env_file = tmp_path / "x.env"
    env_file.write_text("# a comment\n\nA='{\"k\": 1}'\nB=\"two words\"\nC=plain=with=equals\n  D = spaced\nnot a pair\n")
    assert standalone.load_env_file(env_file) == {"A": '{"k": 1}', "B": "two words", "C": "plain=with=equals",
                                                  "D ": " spaced"}


def test_the_env_file_overrides_the_inherited_environment_and_standalone_settings_override_both(tmp_path: Path) -> None:
    env_file = tmp_path / "x.env"
    env_file.write_text("AIRFLOW_HOME=/elsewhere\nFROM_FILE=1\nINHERITED=file\n")
    project = tmp_path / "project"
    env = standalone.environment(project, env_file, base={"INHERITED": "shell", "PATH": "/usr/bin", "PYTHONPATH": "/x"})
    assert env["INHERITED"] == "file" and env["FROM_FILE"] == "1"
    assert env["AIRFLOW_HOME"] == str(project / ".astro" / "standalone")
    assert env["PYTHONPATH"] == f"{project}:/x"
    assert env["PATH"] == f"{project / '.venv' / 'bin'}:/usr/bin"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(project / "dags")
