"""Data-delivery ETL: validate a "data ready" message and its file, transform, load once, or quarantine.

A file is loaded in one transaction together with its ledger row (keyed on the file's SHA-256), so a file is
either fully loaded or not at all, and the same content delivered twice (same or another message) changes
nothing. A file that fails validation is moved to the quarantine location with a ``<name>.reason.json`` beside
it and a row in ``etl_quarantine``; nothing of it is loaded.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal, Protocol

from pydantic import ValidationError
from sqlalchemy import Engine, select

from include.event_pipelines import db
from include.event_pipelines.faults import maybe_fail
from include.event_pipelines.etl.schemas import CSV_HEADER, DeliveryNotice, OrderRow
from include.event_pipelines.messages import Envelope, PoisonMessage, dead_letter_row, decode, validation_summary

log = logging.getLogger(__name__)

PIPELINE = "data_delivery_etl"
MAX_FILE_BYTES = 256 * 1024 * 1024


class StoragePath(Protocol):
    """What the ETL needs of a path: ``ObjectStoragePath`` in Airflow, ``pathlib.Path`` in unit tests."""

    @property
    def name(self) -> str: ...
    def exists(self) -> bool: ...
    def read_bytes(self) -> bytes: ...
    def write_bytes(self, data: bytes) -> int: ...
    def write_text(self, data: str) -> int: ...
    def unlink(self) -> None: ...
    def mkdir(self, parents: bool = ..., exist_ok: bool = ...) -> None: ...
    def __truediv__(self, other: str) -> StoragePath: ...


Status = Literal["loaded", "duplicate", "quarantined", "dead_letter"]


@dataclass(frozen=True)
class DeliveryOutcome:
    message_id: str
    status: Status
    delivery_id: str | None = None
    rows: int = 0
    reason: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def dead_letters(self) -> list[dict[str, object]]:
        """This message as a dead letter, if it is one (for the DLQ)."""
        return [{"message_id": self.message_id, "reason": self.reason}] if self.status == "dead_letter" else []


class InvalidFile(ValueError):
    """The delivered file cannot be loaded as announced; the reason goes to the quarantine record."""


def parse_orders(data: bytes, notice: DeliveryNotice) -> list[dict[str, object]]:
    """Check the file against its notice and return the transformed records, or raise ``InvalidFile``."""
    if len(data) > MAX_FILE_BYTES:
        raise InvalidFile(f"file is {len(data)} bytes, over the {MAX_FILE_BYTES}-byte limit")
    digest = hashlib.sha256(data).hexdigest()
    if digest != notice.sha256:
        raise InvalidFile(f"checksum mismatch: file sha256 {digest}, message says {notice.sha256} (truncated?)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidFile(f"file is not UTF-8 text (byte {exc.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header) != CSV_HEADER:
        raise InvalidFile(f"header is {header!r}, expected {list(CSV_HEADER)!r}")
    records: list[dict[str, object]] = []
    for line_no, values in enumerate(reader, start=2):
        if not values:
            continue
        if len(values) != len(CSV_HEADER):
            raise InvalidFile(f"line {line_no}: {len(values)} fields, expected {len(CSV_HEADER)}")
        try:
            row = OrderRow.model_validate(dict(zip(CSV_HEADER, values, strict=True)))
        except ValidationError as exc:
            raise InvalidFile(f"line {line_no}: {validation_summary(exc)}") from None
        records.append(row.to_record(notice.delivery_id, notice.sha256))
    if len(records) != notice.row_count:
        raise InvalidFile(f"file has {len(records)} data rows, message says {notice.row_count}")
    ids = [r["order_id"] for r in records]
    if len(set(ids)) != len(ids):
        raise InvalidFile("file repeats an order_id")
    return records


def load_records(engine: Engine, notice: DeliveryNotice, message_id: str, records: list[dict[str, object]]) -> bool:
    """Load a validated file atomically. Returns False (and writes nothing) if this content was loaded before."""
    ledger = {
        "sha256": notice.sha256,
        "delivery_id": notice.delivery_id,
        "uri": notice.uri,
        "rows_loaded": len(records),
        "message_id": message_id,
        "producer": notice.producer,
        "loaded_at": db.utcnow(),
    }
    with engine.begin() as conn:
        # The ledger insert is the guard: under concurrency the second loader finds the row and does nothing.
        if db.insert_ignore(conn, db.etl_deliveries, [ledger]) == 0:
            return False
        db.upsert(conn, db.orders, records)  # a later delivery of the same order_id corrects it
    return True


def already_loaded(engine: Engine, sha256: str) -> bool:
    with engine.connect() as conn:
        return conn.execute(select(db.etl_deliveries.c.sha256).where(db.etl_deliveries.c.sha256 == sha256)).first() is not None


def loaded_with_other_content(engine: Engine, notice: DeliveryNotice) -> str | None:
    """The SHA-256 of a file already loaded under this delivery_id, if it is not this notice's file."""
    t = db.etl_deliveries
    with engine.connect() as conn:
        shas = conn.execute(select(t.c.sha256).where(t.c.delivery_id == notice.delivery_id)).scalars().all()
    return next((sha for sha in shas if sha != notice.sha256), None)


def quarantine(
    engine: Engine, notice: DeliveryNotice, message_id: str, source: StoragePath, root: StoragePath, reason: str
) -> str | None:
    """Move the file aside with its reason, record it, and return where it went (None if there was no file)."""
    target: StoragePath | None = None
    if source.exists():
        folder = root / notice.delivery_id
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / source.name
        target.write_bytes(source.read_bytes())
        (folder / f"{source.name}.reason.json").write_text(
            json.dumps({"message_id": message_id, "uri": notice.uri, "reason": reason}, indent=2)
        )
    with engine.begin() as conn:
        db.insert_ignore(
            conn,
            db.etl_quarantine,
            [
                {
                    "delivery_id": notice.delivery_id,
                    "message_id": message_id,
                    "uri": notice.uri,
                    "quarantined_uri": str(target) if target is not None else None,
                    "reason": reason,
                    "recorded_at": db.utcnow(),
                }
            ],
        )
    if target is not None:
        source.unlink()  # only once the record is durable: a crash before this re-quarantines the same file
    return str(target) if target is not None else None


def process_delivery(
    envelope: Envelope, engine: Engine, resolve: Callable[[str], StoragePath], quarantine_root: StoragePath
) -> DeliveryOutcome:
    """Handle one "data ready" message end to end. Idempotent: safe to run again for the same message."""
    mid = envelope.message_id
    try:
        notice = decode(envelope, DeliveryNotice)
    except PoisonMessage as exc:
        log.error("Dead-lettering %s", exc)
        with engine.begin() as conn:
            db.record_dead_letters(conn, PIPELINE, [dead_letter_row(envelope, exc.reason)])
        return DeliveryOutcome(mid, "dead_letter", reason=exc.reason)

    other = loaded_with_other_content(engine, notice)
    if other is not None:
        reason = f"duplicate delivery_id {notice.delivery_id}: already loaded from different content (sha256 {other})"
        log.error("Dead-lettering message %s: %s", mid, reason)
        with engine.begin() as conn:
            db.record_dead_letters(conn, PIPELINE, [dead_letter_row(envelope, reason)])
        return DeliveryOutcome(mid, "dead_letter", notice.delivery_id, reason=reason)

    if already_loaded(engine, notice.sha256):
        log.info("message %s: %s (sha256 %s) was loaded before; nothing to do", mid, notice.uri, notice.sha256)
        return DeliveryOutcome(mid, "duplicate", notice.delivery_id)

    source = resolve(notice.uri)
    try:
        if not source.exists():
            raise InvalidFile(f"file {notice.uri} does not exist")
        records = parse_orders(source.read_bytes(), notice)
    except InvalidFile as exc:
        reason = str(exc)
        where = quarantine(engine, notice, mid, source, quarantine_root, reason)
        log.error("message %s: quarantined delivery %s to %s: %s", mid, notice.delivery_id, where, reason)
        return DeliveryOutcome(mid, "quarantined", notice.delivery_id, reason=reason)

    if not load_records(engine, notice, mid, records):
        return DeliveryOutcome(mid, "duplicate", notice.delivery_id)
    maybe_fail("etl.after_load")
    log.info("message %s: loaded %d rows from %s", mid, len(records), notice.uri)
    return DeliveryOutcome(mid, "loaded", notice.delivery_id, rows=len(records))


def render_csv(records: list[dict[str, str]]) -> bytes:
    """A delivery file in the expected format (used by the publisher and the tests)."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for r in records:
        writer.writerow([r[h] for h in CSV_HEADER])
    return out.getvalue().encode("utf-8")


def summarize(outcomes: list[dict[str, object]]) -> dict[str, object]:
    """Totals of a run's outcomes, used as the extra of the ``events_db.orders`` asset event."""
    by_status: dict[str, int] = {}
    for o in outcomes:
        by_status[str(o["status"])] = by_status.get(str(o["status"]), 0) + 1
    return {
        "rows_loaded": sum(int(o["rows"]) for o in outcomes if o["status"] == "loaded"),
        "deliveries_loaded": [o["delivery_id"] for o in outcomes if o["status"] == "loaded"],
        "by_status": by_status,
    }
