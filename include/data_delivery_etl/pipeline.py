"""Data-delivery ETL: validate a "data ready" message and its file, transform, load once, or quarantine.

The message's ``delivered_at`` must not be ahead of now by more than the clock skew allowed, its URI must be
inside a landing root and its file a regular file within the size limit, held by descriptor from read to removal
(``landing.py``), and the file's SHA-256 must be the notice's: otherwise the message is dead-lettered and the file
left untouched. A file is loaded in one transaction with its ledger row (unique on the file's SHA-256 and on the
delivery_id), which also decides, under concurrency, between loaded, duplicate (same content) and dead letter
(delivery_id reused for other content). A row of ``orders`` is replaced only by a newer delivery. A file that is
the notice's (checksum matches) but fails validation is moved under the quarantine root with a
``<name>.reason.json`` and an ``etl_quarantine`` row. One message's content never fails its batch.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy import Connection, Engine, or_, select

from event_streams.pipelines import db
from event_streams.pipelines.messages import (
    CONTENT_ERRORS,
    Envelope,
    PoisonMessage,
    dead_letter_row,
    decode,
    validation_summary,
)
from include.data_delivery_etl import landing, settings, tables
from include.data_delivery_etl.landing import StoragePath, safe_text
from include.data_delivery_etl.schemas import CSV_HEADER, DeliveryNotice, OrderRow

log = logging.getLogger(__name__)

PIPELINE = "data_delivery_etl"

Status = Literal["loaded", "duplicate", "quarantined", "dead_letter"]
Verdict = Literal["load", "duplicate", "conflict"]


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
    """The delivered file (the notice's own: its checksum matches) cannot be loaded as announced; the reason goes
    to the quarantine record."""


class ChecksumMismatch(ValueError):
    """The file's SHA-256 is not the notice's: the notice is dead-lettered and the file left where it is."""


def verify_checksum(data: bytes, notice: DeliveryNotice) -> None:
    """Raise ``ChecksumMismatch`` unless ``data`` has the notice's SHA-256.

    A mismatch never moves the file. Nothing short of the checksum proves that the file is the notice's own: a
    notice may name another producer's (or a not yet complete) delivery, and the file's agreeing with the notice in
    every other way is no proof either. So the notice is dead-lettered (expected and actual digest in the reason)
    and the file stays for the notice that matches it."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != notice.sha256:
        raise ChecksumMismatch(f"checksum mismatch: the file's sha256 is {digest}, the message expects"
                               f" {notice.sha256} (another delivery's file, or not completely written?);"
                               " the file is left in place")


def future_delivered_at_reason(delivered_at: datetime, now: datetime, max_skew_seconds: float) -> str | None:
    """Why a notice's ``delivered_at`` is too far ahead of ``now`` (aware) to be accepted, or None if it is not.

    A far-future ``delivered_at`` would freeze its ``order_id``s: ``orders`` rows are replaced only by a newer
    delivery, so no later correction would ever apply."""
    raw = delivered_at.isoformat()
    try:
        ahead = (delivered_at.astimezone(timezone.utc) - now).total_seconds()
    except OverflowError:
        return f"delivered_at {raw} is outside the range of representable UTC times"
    if ahead <= max_skew_seconds:
        return None
    return (f"delivered_at {raw} is {ahead:.0f} s in the future (processed at {now.isoformat()}; at most"
            f" {max_skew_seconds:g} s of clock skew is allowed): check the producer's clock")


def parse_orders(data: bytes, notice: DeliveryNotice) -> list[dict[str, object]]:
    """Check the file against its notice and return the transformed records, or raise ``ChecksumMismatch`` (see
    ``verify_checksum``) or ``InvalidFile``."""
    verify_checksum(data, notice)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidFile(f"file is not UTF-8 text (byte {exc.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != CSV_HEADER:
            raise InvalidFile(f"header is {safe_text(repr(header), 200)}, expected {list(CSV_HEADER)!r}")
        records: list[dict[str, object]] = []
        for line_no, values in enumerate(reader, start=2):
            if not values:
                continue
            if len(values) != len(CSV_HEADER):
                raise InvalidFile(f"line {line_no}: {len(values)} fields, expected {len(CSV_HEADER)}")
            try:
                row = OrderRow.model_validate(dict(zip(CSV_HEADER, values, strict=True)))
            except ValidationError as exc:
                raise InvalidFile(f"line {line_no}: {safe_text(validation_summary(exc))}") from None
            records.append(row.to_record(notice.delivery_id, notice.sha256))
    except InvalidFile:
        raise
    except CONTENT_ERRORS + (csv.Error,) as exc:  # e.g. a field over csv's limit, a timestamp that overflows in UTC
        raise InvalidFile(f"line {reader.line_num}: {type(exc).__name__}: {safe_text(str(exc), 200)}") from None
    if len(records) != notice.row_count:
        raise InvalidFile(f"file has {len(records)} data rows, message says {notice.row_count}")
    ids = [r["order_id"] for r in records]
    if len(set(ids)) != len(ids):
        raise InvalidFile("file repeats an order_id")
    return records


def ledger_verdict(delivery_id: str, sha256: str, ledger: Iterable[tuple[str, str]]) -> tuple[Verdict, str | None]:
    """What to do with a file given the ledger rows ``(sha256, delivery_id)`` sharing its sha256 or delivery_id:
    ``conflict`` (with the other sha256) if its delivery_id was loaded from other content, ``duplicate`` if its
    content was loaded, else ``load``."""
    rows = list(ledger)
    other = next((sha for sha, did in rows if did == delivery_id and sha != sha256), None)
    if other is not None:
        return "conflict", other
    if any(sha == sha256 for sha, _ in rows):
        return "duplicate", None
    return "load", None


def _ledger_rows(conn: Connection, delivery_id: str, sha256: str) -> list[tuple[str, str]]:
    t = tables.etl_deliveries
    query = select(t.c.sha256, t.c.delivery_id).where(or_(t.c.sha256 == sha256, t.c.delivery_id == delivery_id))
    return [(str(sha), str(did)) for sha, did in conn.execute(query).all()]


def check_ledger(engine: Engine, notice: DeliveryNotice) -> tuple[Verdict, str | None]:
    """``ledger_verdict`` from what is committed now (a fast path; ``load_records`` decides for good)."""
    with engine.connect() as conn:
        return ledger_verdict(notice.delivery_id, notice.sha256, _ledger_rows(conn, notice.delivery_id, notice.sha256))


def upsert_newer_orders(conn: Connection, records: Sequence[dict[str, object]]) -> None:
    """Insert orders; replace an existing row only if this delivery is newer (tie: the greater source_sha256)."""
    if not records:
        return
    t = tables.orders
    stmt = db.dialect_insert(conn, t)
    new = stmt.excluded
    newer = or_(
        new.delivered_at > t.c.delivered_at,
        (new.delivered_at == t.c.delivered_at) & (new.source_sha256 > t.c.source_sha256),
    )
    updates = {c.name: new[c.name] for c in t.columns if c.name != "order_id"}
    conn.execute(stmt.on_conflict_do_update(index_elements=["order_id"], set_=updates, where=newer), list(records))


def load_records(
    engine: Engine, notice: DeliveryNotice, envelope: Envelope, records: list[dict[str, object]]
) -> tuple[Verdict, str | None]:
    """Load a validated file atomically, or not at all if the ledger refuses it (see ``ledger_verdict``).

    The ledger insert is the guard (``ON CONFLICT DO NOTHING`` on sha256 and on delivery_id): a concurrent loader
    waits for it, finds the winning row in the same transaction and does nothing, or records its dead letter.
    """
    delivered_at = notice.delivered_at.astimezone(timezone.utc)
    ledger = {
        "sha256": notice.sha256,
        "delivery_id": notice.delivery_id,
        "uri": safe_text(notice.uri, 2048),
        "rows_loaded": len(records),
        "message_id": envelope.message_id,
        "producer": notice.producer,
        "loaded_at": db.utcnow(),
    }
    with engine.begin() as conn:
        if db.insert_ignore(conn, tables.etl_deliveries, [ledger]) == 1:
            upsert_newer_orders(conn, [{**r, "delivered_at": delivered_at} for r in records])
            return "load", None
        verdict, other = ledger_verdict(notice.delivery_id, notice.sha256,
                                        _ledger_rows(conn, notice.delivery_id, notice.sha256))
        if verdict == "load":
            raise RuntimeError(f"ledger insert of {notice.delivery_id} conflicted, but no conflicting row is visible")
        if verdict == "conflict":
            db.record_dead_letters(conn, PIPELINE, [dead_letter_row(envelope, _conflict_reason(notice, other))])
        return verdict, other


def _conflict_reason(notice: DeliveryNotice, other: str | None) -> str:
    return f"duplicate delivery_id {notice.delivery_id}: already loaded from different content (sha256 {other})"


def _duplicate_reason(notice: DeliveryNotice) -> str:
    return f"content sha256 {notice.sha256} was already loaded; nothing to do"


def quarantine(
    engine: Engine,
    notice: DeliveryNotice,
    message_id: str,
    source: landing.Located,
    data: bytes | None,
    remove: Callable[[], None],
    root: StoragePath,
    reason: str,
) -> str | None:
    """Keep the file's bytes (already read, so bounded) and its reason under ``root``, record it, then remove the
    landing file with ``remove``. Returns where it went (None when there was no file)."""
    target: StoragePath | None = None
    if data is not None:
        folder = landing.quarantine_folder(root, notice.delivery_id)
        folder.mkdir(parents=True, exist_ok=True)
        name = landing.safe_file_name(source.name)
        target = folder / name
        target.write_bytes(data)
        (folder / f"{name}.reason.json").write_text(
            json.dumps({"message_id": message_id, "uri": safe_text(notice.uri, 2048), "reason": reason}, indent=2)
        )
    row = {
        "delivery_id": notice.delivery_id,
        "message_id": message_id,
        "uri": safe_text(notice.uri, 2048),
        "quarantined_uri": str(target) if target is not None else None,
        "reason": reason,
        "recorded_at": db.utcnow(),
    }
    with engine.begin() as conn:
        db.insert_ignore(conn, tables.etl_quarantine, [row])
    if target is not None:
        remove()  # only once the record is durable: a crash before this re-quarantines the same file
    return str(target) if target is not None else None


def _dead_letter(engine: Engine, envelope: Envelope, reason: str, delivery_id: str | None = None) -> DeliveryOutcome:
    log.error("Dead-lettering message %s: %s", envelope.message_id, reason)
    with engine.begin() as conn:
        db.record_dead_letters(conn, PIPELINE, [dead_letter_row(envelope, reason)])
    return DeliveryOutcome(envelope.message_id, "dead_letter", delivery_id, reason=reason)


def _decode(envelope: Envelope) -> DeliveryNotice:
    """The notice, or ``PoisonMessage`` for anything its content makes fail (bad time zone included)."""
    try:
        notice = decode(envelope, DeliveryNotice)
        notice.delivered_at.astimezone(timezone.utc)  # must be storable as UTC
        return notice
    except PoisonMessage:
        raise
    except CONTENT_ERRORS as exc:
        raise PoisonMessage(envelope.message_id, f"{type(exc).__name__}: {safe_text(str(exc), 200)}") from None


def process_delivery(
    envelope: Envelope,
    engine: Engine,
    resolve: Callable[[str], Any],
    quarantine_root: StoragePath,
    *,
    landing_roots: Sequence[str] = settings.ETL_LANDING_ROOTS,
    max_file_bytes: int = settings.ETL_MAX_FILE_BYTES,
    max_clock_skew_seconds: float = settings.ETL_MAX_CLOCK_SKEW_SECONDS,
    now: datetime | None = None,
    after_effect: Callable[[str], None] | None = None,
) -> DeliveryOutcome:
    """Handle one "data ready" message end to end. Idempotent: safe to run again for the same message.

    ``resolve`` turns a remote URI into a path (``ObjectStoragePath``); ``file://`` files are read directly, held by
    descriptor until removed (``landing.open_local``). ``now`` (default: the clock) bounds ``delivered_at``. Only
    database and storage faults raise; whatever the message or its file contain ends in an outcome.
    ``after_effect("etl.after_load")`` is called once a file's load is committed (the fault suite's hook).
    """
    mid = envelope.message_id
    try:
        notice = _decode(envelope)
    except PoisonMessage as exc:
        return _dead_letter(engine, envelope, exc.reason)
    did = notice.delivery_id
    ahead = future_delivered_at_reason(notice.delivered_at, now or db.utcnow(), max_clock_skew_seconds)
    if ahead is not None:
        return _dead_letter(engine, envelope, f"message {mid}: {safe_text(ahead)}", did)

    try:
        located = landing.locate(notice.uri, landing_roots)
    except landing.Refused as exc:
        return _dead_letter(engine, envelope, f"message {mid}: {safe_text(str(exc), 1000)}", did)

    verdict, other = check_ledger(engine, notice)
    if verdict == "conflict":
        return _dead_letter(engine, envelope, _conflict_reason(notice, other), did)
    if verdict == "duplicate":
        log.info("message %s: %s (sha256 %s) was loaded before; nothing to do", mid, notice.uri, notice.sha256)
        return DeliveryOutcome(mid, "duplicate", did, reason=_duplicate_reason(notice))

    try:
        path = None if located.local_path is not None else resolve(located.uri)
    except CONTENT_ERRORS as exc:
        reason = f"message {mid}: uri {safe_text(notice.uri)} cannot be opened: {safe_text(str(exc), 200)}"
        return _dead_letter(engine, envelope, reason, did)
    with ExitStack() as held:
        data: bytes | None = None
        remove: Callable[[], None] = _nothing
        try:
            if path is None:
                landed = held.enter_context(landing.open_local(located, max_file_bytes))
                data, remove = landed.data, _remove_landed(landed)
            else:
                data = landing.read_remote(located, path, max_file_bytes)
                remove = path.unlink
            records = parse_orders(data, notice)
        except (landing.Refused, ChecksumMismatch) as exc:
            return _dead_letter(engine, envelope, f"message {mid}: {safe_text(str(exc), 1000)}", did)
        except (landing.Missing, InvalidFile) as exc:
            reason = safe_text(str(exc), 1000)
            where = quarantine(engine, notice, mid, located, data, remove, quarantine_root, reason)
            log.error("message %s: quarantined delivery %s to %s: %s", mid, did, where, reason)
            return DeliveryOutcome(mid, "quarantined", did, reason=reason)

    verdict, other = load_records(engine, notice, envelope, records)
    if verdict == "conflict":
        log.error("Dead-lettering message %s: %s", mid, _conflict_reason(notice, other))
        return DeliveryOutcome(mid, "dead_letter", did, reason=_conflict_reason(notice, other))
    if verdict == "duplicate":
        return DeliveryOutcome(mid, "duplicate", did, reason=_duplicate_reason(notice))
    if after_effect is not None:
        after_effect("etl.after_load")
    log.info("message %s: loaded %d rows from %s", mid, len(records), notice.uri)
    return DeliveryOutcome(mid, "loaded", did, rows=len(records))


def _nothing() -> None:
    return None


def _remove_landed(landed: landing.LandedFile) -> Callable[[], None]:
    """Remove the landing file through its held folder, only if it is still the inode read (else leave it)."""

    def remove() -> None:
        if not landed.remove():  # gone (a concurrent quarantine of the same file) or replaced by another file
            log.warning("%s: not removed from the landing folder: no longer the file that was read", landed.located.uri)

    return remove


def process_batch(
    envelopes: Sequence[Envelope],
    engine: Engine,
    resolve: Callable[[str], Any],
    quarantine_root: StoragePath,
    **options: Any,
) -> list[DeliveryOutcome]:
    """Each message of a mapped task's batch in turn: every one ends in an outcome; only a system fault raises.
    ``options``: ``process_delivery``'s keyword arguments (limits, ``after_effect``)."""
    return [process_delivery(e, engine, resolve, quarantine_root, **options) for e in envelopes]


def render_csv(records: list[dict[str, str]]) -> bytes:
    """A delivery file in the expected format (used by the publisher and the tests)."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for r in records:
        writer.writerow([r[h] for h in CSV_HEADER])
    return out.getvalue().encode("utf-8")


def summarize(outcomes: Sequence[Mapping[str, Any]]) -> dict[str, object]:
    """Totals of a loading task's outcomes: the extra of the ``events_db.orders`` asset event it emits."""
    by_status: dict[str, int] = {}
    for o in outcomes:
        by_status[str(o["status"])] = by_status.get(str(o["status"]), 0) + 1
    return {
        "rows_loaded": sum(int(o["rows"]) for o in outcomes if o["status"] == "loaded"),
        "deliveries_loaded": [o["delivery_id"] for o in outcomes if o["status"] == "loaded"],
        "by_status": by_status,
    }
