"""Where a delivered file may be read from, and how much of it: the ETL's confinement (pure, no Airflow).

A URI is accepted only under one of the landing roots (``settings.ETL_LANDING_ROOTS``): for ``file://`` after
resolving symlinks, for other schemes on bucket/prefix boundaries and only if the scheme's fsspec backend is
installed. A file is statted before it is read: only a regular file of at most ``max_bytes`` is read.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath, PurePosixPath
from typing import Any, BinaryIO, Protocol
from urllib.parse import unquote, urlsplit

from include.data_delivery_etl import settings


class StoragePath(Protocol):
    """What the ETL needs of a path: ``ObjectStoragePath`` in Airflow, ``pathlib.Path``/``UPath`` in tests."""

    @property
    def name(self) -> str: ...
    def exists(self) -> bool: ...
    def open(self, mode: str = ...) -> BinaryIO: ...  # type: ignore[override]
    def write_bytes(self, data: bytes) -> int: ...
    def write_text(self, data: str) -> int: ...
    def unlink(self) -> None: ...
    def mkdir(self, parents: bool = ..., exist_ok: bool = ...) -> None: ...
    def __truediv__(self, other: str) -> StoragePath: ...


class Refused(ValueError):
    """The URI or its file must not be read: the message is dead-lettered and the file left untouched."""


class Missing(ValueError):
    """The URI is inside a landing root but no file is there."""


@dataclass(frozen=True)
class Located:
    """A URI accepted by ``locate``: ``local_path`` is the resolved path for ``file://``, else None."""

    uri: str
    scheme: str
    local_path: str | None = None

    @property
    def name(self) -> str:
        return PurePosixPath(self.local_path or urlsplit(self.uri).path).name


def safe_text(text: str, limit: int = 300) -> str:
    """Text that every database accepts (no NUL, no lone surrogates), cut to ``limit`` characters."""
    cleaned = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    return cleaned if len(cleaned) <= limit else cleaned[:limit] + "..."


def _segments(path: str) -> list[str]:
    return [s for s in path.split("/") if s]


def _refuse_dots(uri: str, path: str) -> None:
    for seg in path.split("/"):
        if seg == ".." or unquote(seg) == ".." or "/" in unquote(seg):
            raise Refused(f"uri {safe_text(uri)} has a '..' or encoded '/' segment")


def _local_root(root: str) -> str | None:
    parts = urlsplit(root)
    if parts.scheme.lower() != "file":
        return None
    return os.path.realpath(unquote(parts.path))


def locate(uri: str, roots: Sequence[str] = settings.ETL_LANDING_ROOTS) -> Located:
    """Accept ``uri`` if it is inside one of ``roots`` (and readable by an installed backend), or raise ``Refused``."""
    shown = f"{safe_text(uri)} is outside the landing roots {list(roots)}"
    try:
        uri.encode("utf-8")
        parts = urlsplit(uri)
    except ValueError:
        raise Refused(f"uri {safe_text(uri)} is not a valid URI") from None
    if "\x00" in uri or parts.query or parts.fragment or "?" in uri or "#" in uri:
        raise Refused(f"uri {safe_text(uri)} has a NUL, query or fragment")
    scheme = parts.scheme.lower()
    _refuse_dots(uri, parts.path)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise Refused(f"uri {safe_text(uri)} names a remote host")
        try:
            real = os.path.realpath(unquote(parts.path, errors="strict"))
        except (ValueError, OSError) as exc:
            raise Refused(f"uri {safe_text(uri)} cannot be resolved ({type(exc).__name__})") from None
        for root in roots:
            local = _local_root(root)
            if local is not None and PurePath(real).is_relative_to(local):
                return Located(uri, "file", real)
        raise Refused(f"uri {shown}")
    segments = _segments(parts.path)
    for root in roots:
        r = urlsplit(root)
        if (r.scheme.lower(), r.netloc) != (scheme, parts.netloc) or ".." in r.path.split("/"):
            continue
        prefix = _segments(r.path)
        if segments[: len(prefix)] == prefix and len(segments) > len(prefix):
            try:
                import fsspec

                fsspec.get_filesystem_class(scheme)
            except (ImportError, ValueError) as exc:
                raise Refused(f"uri {safe_text(uri)}: no storage backend for {scheme}:// is installed ({exc})") from None
            return Located(uri, scheme)
    raise Refused(f"uri {shown}")


def read_local(located: Located, max_bytes: int = settings.ETL_MAX_FILE_BYTES) -> bytes:
    """The file's bytes: stat first (regular file, at most ``max_bytes``), then read at most that through the same
    inode. Raises ``Missing``, ``Refused`` (not a regular file, too large, unreadable), or ``OSError`` (storage)."""
    path = located.local_path
    assert path is not None
    try:
        st = os.stat(path)
        _check(located, st.st_mode, st.st_size, max_bytes)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except (FileNotFoundError, NotADirectoryError):
        raise Missing(f"file {safe_text(located.uri)} does not exist") from None
    except OSError as exc:
        if isinstance(exc, PermissionError) or exc.errno in (errno.ELOOP, errno.ENAMETOOLONG):
            raise Refused(f"uri {safe_text(located.uri)} cannot be opened: {exc.strerror}") from None
        raise
    with os.fdopen(fd, "rb") as f:
        st2 = os.fstat(f.fileno())
        if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino):
            raise Refused(f"uri {safe_text(located.uri)} was replaced while being read")
        _check(located, st2.st_mode, st2.st_size, max_bytes)
        data = f.read(max_bytes + 1)
    _check(located, stat.S_IFREG, len(data), max_bytes)
    return data


def read_remote(located: Located, path: Any, max_bytes: int = settings.ETL_MAX_FILE_BYTES) -> bytes:
    """Like ``read_local`` for an fsspec-backed path (``ObjectStoragePath``/``UPath``): ``info`` first, bounded read."""
    try:
        info = path.fs.info(path.path)
    except FileNotFoundError:
        raise Missing(f"file {safe_text(located.uri)} does not exist") from None
    kind = info.get("type")
    mode = stat.S_IFREG if kind == "file" else stat.S_IFDIR if kind == "directory" else 0
    _check(located, mode, int(info.get("size") or 0), max_bytes, kind=str(kind))
    with path.open("rb") as f:
        data = f.read(max_bytes + 1)
    _check(located, stat.S_IFREG, len(data), max_bytes)
    return data


def _check(located: Located, mode: int, size: int, max_bytes: int, kind: str | None = None) -> None:
    if not stat.S_ISREG(mode):
        raise Refused(f"uri {safe_text(located.uri)} is not a regular file (it is a {kind or _kind(mode)})")
    if size > max_bytes:
        raise Refused(f"file {safe_text(located.uri)} is {size} bytes, over the {max_bytes}-byte limit")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return f"file of mode {oct(mode)}"


def quarantine_folder_name(delivery_id: str) -> str:
    """One path component for a delivery's quarantine folder: sanitised id plus a short hash of the exact id."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", delivery_id)[:64].strip(".")
    return f"{name}-{hashlib.sha256(delivery_id.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"


def safe_file_name(name: str) -> str:
    return (re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100].strip(".") or "file")


def _local(path: Any) -> str | None:
    if isinstance(path, PurePath):
        return str(path)
    if getattr(path, "protocol", None) in ("file", "local"):
        return str(path.path)
    return None


def quarantine_folder(root: StoragePath, delivery_id: str) -> StoragePath:
    """``root / <folder>``, checked to be directly under ``root`` (resolved, for a local root)."""
    name = quarantine_folder_name(delivery_id)
    if "/" in name or name in ("", ".", ".."):
        raise RuntimeError(f"quarantine folder name {name!r} is not one path component")
    folder = root / name
    local_root, local_folder = _local(root), _local(folder)
    if local_root is not None and local_folder is not None:
        real_root = os.path.realpath(local_root)
        if os.path.dirname(os.path.realpath(local_folder)) != real_root:
            raise RuntimeError(f"quarantine folder {local_folder} resolves outside {real_root}")
    return folder
