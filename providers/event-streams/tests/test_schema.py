"""event_streams.schema: tables created on a database nobody has made yet."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, Table, create_engine, inspect

from event_streams import schema


def test_a_sqlite_file_in_a_folder_that_does_not_exist_yet_gets_its_folder_and_tables(tmp_path: Path) -> None:
    # A fresh clone has no include/data/: the first task (or the triggerer) to open the events database makes it.
    path = tmp_path / "include" / "data" / "events.db"
    metadata = MetaData()
    Table("things", metadata, Column("id", Integer, primary_key=True))
    engine = create_engine(f"sqlite:///{path}")

    schema.create_all(metadata, engine, "test-things")

    assert path.is_file()
    assert inspect(engine).get_table_names() == ["things"]
