"""Where a delivered file may be read from, and how much of it: the ETL's confinement (pure, no Airflow).

A URI is accepted only under one of the landing roots (``settings.ETL_LANDING_ROOTS``): for other schemes on
bucket/prefix boundaries and only if the scheme's fsspec backend is installed (``locate``, ``read_remote``). A
``file://`` file is held for the whole operation (``open_local`` -> ``LandedFile``): the root is opened once and
every component below it is opened relative to its parent's descriptor with ``O_NOFOLLOW``, so a symlink below the
root is refused and a folder swapped for one later cannot redirect the read or the removal. Only a regular file of
at most ``max_bytes`` is read, and it is removed only if its entry is still the inode that was read.
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
    def open(self, mode: str = ...) -> BinaryIO: ...
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
    """A URI accepted by ``locate``. For ``file://``: ``local_path`` is the resolved path (for messages and names),
    ``root`` the resolved landing root and ``parts`` the URI's own components below it (what ``open_local`` walks);
    for other schemes these are None and ()."""

    uri: str
    scheme: str
    local_path: str | None = None
    root: str | None = None
    parts: tuple[str, ...] = ()

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


def _local_root(root: str) -> tuple[str, list[str]] | None:
    """A ``file://`` root's resolved path (the operator may point a root at a symlink) and its segments as written."""
    parts = urlsplit(root)
    if parts.scheme.lower() != "file":
        return None
    written = unquote(parts.path)
    return os.path.realpath(written), [seg for seg in os.path.normpath(written).split("/") if seg not in ("", ".")]


def _locate_file(uri: str, path: str, roots: Sequence[str], shown: str) -> Located:
    """``file://``: the resolved path must be inside a root (else "outside the landing roots"), and the path as
    written must lie under a root, written either as configured or resolved; the components below it are kept."""
    try:
        written = unquote(path, errors="strict")
        real = os.path.realpath(written)
    except (ValueError, OSError) as exc:
        raise Refused(f"uri {safe_text(uri)} cannot be resolved ({type(exc).__name__})") from None
    segments = [seg for seg in written.split("/") if seg not in ("", ".")]
    inside = False
    best: tuple[str, tuple[str, ...], int] | None = None  # (resolved root, parts below it, length of its prefix)
    for root in roots:
        local = _local_root(root)
        if local is None:
            continue
        real_root, written_root = local
        inside = inside or PurePath(real).is_relative_to(real_root)
        for prefix in (written_root, _segments(real_root)):
            if segments[: len(prefix)] == prefix and (best is None or len(prefix) > best[2]):
                best = (real_root, tuple(segments[len(prefix):]), len(prefix))
    if not inside:
        raise Refused(f"uri {shown}")
    if best is None:
        raise Refused(f"uri {safe_text(uri)} reaches a landing root only through a symlink: write it under one of"
                      f" {safe_text(str(list(roots)))}")
    return Located(uri, "file", real, best[0], best[1])


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
        return _locate_file(uri, parts.path, roots, shown)
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
                raise Refused(
                    f"uri {safe_text(uri)}: no storage backend for {scheme}:// is installed ({exc})") from None
            return Located(uri, scheme)
    raise Refused(f"uri {shown}")


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC


@dataclass(eq=False)
class LandedFile:
    """A ``file://`` delivery read by ``open_local``: its bytes, and its entry held by the parent folder's descriptor
    (``parent_fd``, ``name``) with the identity of the inode read (``device``, ``inode``). A context manager: leaving
    it closes the descriptor. ``remove`` acts only through that descriptor, so nothing outside the root is reached
    whatever is swapped on the path meanwhile (the folder held stays the one walked to: only someone who may write
    outside the root could move it there, and a swap between the inode check and the unlink can only concern an
    entry of that same folder)."""

    located: Located
    parent_fd: int
    name: str
    device: int
    inode: int
    data: bytes
    closed: bool = False

    def __enter__(self) -> LandedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.parent_fd)

    def is_same_file(self) -> bool:
        """Whether ``name`` in the held folder is still, without following a symlink, the inode that was read."""
        try:
            st = os.stat(self.name, dir_fd=self.parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == (self.device, self.inode)

    def remove(self) -> bool:
        """Unlink the file from the held folder if its entry is still the inode read; True if it was removed. Gone
        (a concurrent quarantine of the same file) or replaced by another file: left alone, False."""
        if self.closed:
            raise RuntimeError(f"{self.name}: the landed file is closed")
        if not self.is_same_file():
            return False
        try:
            os.unlink(self.name, dir_fd=self.parent_fd)
        except FileNotFoundError:
            return False
        return True


def _symlink(located: Located, index: int) -> Refused:
    below = "/".join(located.parts[: index + 1])
    return Refused(f"uri {safe_text(located.uri)} has a symlink below its landing root ({safe_text(below)}):"
                   " symlinks are not followed")


def _entry(located: Located, dir_fd: int, index: int) -> os.stat_result:
    """``lstat`` of component ``index`` in ``dir_fd``: refused if it is a symlink, ``Missing`` if it is not there."""
    try:
        st = os.stat(located.parts[index], dir_fd=dir_fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        raise Missing(f"file {safe_text(located.uri)} does not exist") from None
    except OSError as exc:
        if isinstance(exc, PermissionError) or exc.errno == errno.ENAMETOOLONG:
            raise Refused(f"uri {safe_text(located.uri)} cannot be opened: {exc.strerror}") from None
        raise
    if stat.S_ISLNK(st.st_mode):
        raise _symlink(located, index)
    return st


def _open_at(located: Located, dir_fd: int, index: int, flags: int) -> int:
    """Open component ``index`` relative to ``dir_fd`` without following a symlink (one swapped in since ``_entry``
    fails here: ELOOP for a file, ENOTDIR for a folder)."""
    try:
        return os.open(located.parts[index], flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _symlink(located, index) from None
        if exc.errno in (errno.ENOTDIR, errno.ENOENT):
            _entry(located, dir_fd, index)  # a symlink now: Refused; gone: Missing
            raise Missing(f"file {safe_text(located.uri)} does not exist") from None  # a file where a folder is
        if isinstance(exc, PermissionError) or exc.errno == errno.ENAMETOOLONG:
            raise Refused(f"uri {safe_text(located.uri)} cannot be opened: {exc.strerror}") from None
        raise


def open_local(located: Located, max_bytes: int = settings.ETL_MAX_FILE_BYTES) -> LandedFile:
    """Walk from the landing root to the file by folder descriptors, never following a symlink, then stat and read
    it through the descriptor of the inode checked: only a regular file of at most ``max_bytes``.

    Raises ``Refused`` (a symlink below the root, not a regular file, too large, unreadable), ``Missing``, or
    ``OSError`` (storage). The caller closes the returned ``LandedFile`` (``with``)."""
    if located.root is None:
        raise ValueError(f"{located.uri} is not a local file")
    if not located.parts:
        raise Refused(f"uri {safe_text(located.uri)} is not a regular file (it is a directory)")
    try:
        dir_fd = os.open(located.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise Missing(f"file {safe_text(located.uri)} does not exist (no landing root {safe_text(located.root)})"
                      ) from None
    try:
        for index in range(len(located.parts) - 1):
            if not stat.S_ISDIR(_entry(located, dir_fd, index).st_mode):
                raise Missing(f"file {safe_text(located.uri)} does not exist")
            child = _open_at(located, dir_fd, index, _DIR_FLAGS)
            os.close(dir_fd)
            dir_fd = child
        last = len(located.parts) - 1
        st = _entry(located, dir_fd, last)
        _check(located, st.st_mode, st.st_size, max_bytes)
        with os.fdopen(_open_at(located, dir_fd, last, _FILE_FLAGS), "rb") as f:
            st2 = os.fstat(f.fileno())
            if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino):
                raise Refused(f"uri {safe_text(located.uri)} was replaced while being read")
            _check(located, st2.st_mode, st2.st_size, max_bytes)
            data = f.read(max_bytes + 1)
        _check(located, stat.S_IFREG, len(data), max_bytes)
    except BaseException:
        os.close(dir_fd)
        raise
    return LandedFile(located, dir_fd, located.parts[last], st2.st_dev, st2.st_ino, data)


def read_remote(located: Located, path: Any, max_bytes: int = settings.ETL_MAX_FILE_BYTES) -> bytes:
    """Like ``open_local`` for an fsspec-backed path (``ObjectStoragePath``/``UPath``): ``info`` first, bounded read."""
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
