"""Matching a glob into entries, one at a time, with every matched entry accounted for.

A lake is not a tidy folder: a glob can match broken symbolic links, link loops, directories
named ``*.jpg``, FIFOs, sockets and devices, and on object stores zero-byte "folder" marker
objects. Beam's local lister drops the first three silently (it lists with ``os.walk`` and skips
what it cannot stat), so they were neither captioned nor counted. Here every entry the pattern
matches becomes an ``ImageRef``; one that is not a readable regular file carries the error type
it will get (``entry_error``), and the read stage turns it into an error row without opening it.

Local patterns are listed here, as a stream (``os.scandir``, one directory at a time, never a
list of the whole match) with Beam's pattern syntax (``*`` stays inside one path segment, ``**``
crosses them; ``FileSystem.translate_pattern``), and directories deeper than the pattern can
reach are not walked. Remote patterns are listed by Beam's filesystem for the scheme (a page of
1,000 keys per request) and streamed too (``list_remote``: entries are yielded page by page, not
collected into one list as ``FileSystems.match`` does). Pure Python apart from Beam's pattern
translator and listers: tested without a pipeline.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterator

from apache_beam.io.filesystem import FileSystem

from beam_pipeline.records import ImageRef, image_id_from_uri
from model.storage import local_path

BROKEN_SYMLINK = "BrokenSymlink"
SYMLINK_LOOP = "SymlinkLoop"
IS_A_DIRECTORY = "IsADirectory"
NOT_A_REGULAR_FILE = "NotARegularFile"
FOLDER_MARKER = "FolderMarker"

ENTRY_MESSAGES = {
    BROKEN_SYMLINK: "a symbolic link whose target does not exist; not opened",
    SYMLINK_LOOP: "a symbolic link that loops (too many levels of links); not opened",
    IS_A_DIRECTORY: "a directory, not an image file; not opened",
    NOT_A_REGULAR_FILE: "not a regular file (a FIFO, socket or device); not opened",
    FOLDER_MARKER: "a zero-byte folder marker object (key ending in '/' or '_$folder$'), not an image; not read",
}

_GLOB = re.compile(r"[*?\[]")


def _mtime_ms(st: os.stat_result) -> int:
    return st.st_mtime_ns // 1_000_000


def local_entry(path: str) -> ImageRef:
    """The ImageRef of one local directory entry: size and mtime of a regular file (links
    followed), or the ``entry_error`` of anything else."""
    image_id = image_id_from_uri(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return ImageRef(path, image_id, entry_error=SYMLINK_LOOP)
        try:
            if stat.S_ISLNK(os.lstat(path).st_mode) and exc.errno == errno.ENOENT:
                return ImageRef(path, image_id, entry_error=BROKEN_SYMLINK)
        except OSError:
            pass
        return ImageRef(path, image_id)  # vanished or not permitted: the read reports it with its type
    if stat.S_ISDIR(st.st_mode):
        return ImageRef(path, image_id, entry_error=IS_A_DIRECTORY)
    if not stat.S_ISREG(st.st_mode):
        return ImageRef(path, image_id, st.st_size, modified_ms=_mtime_ms(st), entry_error=NOT_A_REGULAR_FILE)
    return ImageRef(path, image_id, st.st_size, modified_ms=_mtime_ms(st))


def _walk(directory: str, depth: int | None) -> Iterator[str]:
    """Every entry under ``directory`` (files, links, directories themselves), streamed; descends
    into real directories only (never through links), at most ``depth`` levels (None: no limit).
    Only the names of a directory's subdirectories are held while it is listed."""
    subdirs = []
    try:
        with os.scandir(directory) as it:
            for entry in it:
                yield entry.path
                if (depth is None or depth > 1) and entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.path)
    except OSError:
        return
    for path in subdirs:
        yield from _walk(path, None if depth is None else depth - 1)


def list_local(pattern: str) -> Iterator[ImageRef]:
    """Entries matching a local ``pattern`` (Beam's glob syntax), one ImageRef each, streamed.
    A pattern without glob characters is that one path (if any entry, even a broken link, is there).
    Directories are entries (``IsADirectory``) when the pattern's last segment names something
    (``*.jpg``, ``img_*``); under a last segment of only ``*`` / ``**`` they are containers and
    are not reported."""
    path = local_path(pattern)
    if path.endswith("/"):
        path += "*"
    if not _GLOB.search(path):
        if os.path.lexists(path):
            yield local_entry(path)
        return
    fixed = re.match(r"^[^[*?]*", path).group(0)
    root = fixed[: fixed.rfind("/") + 1]  # "" for a pattern relative to the working directory
    rest = path[len(root) :]
    depth = None if "**" in rest else rest.count("/") + 1
    matches = re.compile(FileSystem.translate_pattern(path)).match
    containers = re.fullmatch(r"\*+", path.rsplit("/", 1)[-1]) is not None
    for entry in _walk(root.rstrip("/") or ("/" if root else "."), depth):
        candidate = entry if root else entry[2:]  # os.scandir(".") names entries "./NAME"
        if matches(candidate):
            ref = local_entry(candidate)
            if not (containers and ref.entry_error == IS_A_DIRECTORY):
                yield ref


def list_remote(pattern: str) -> Iterator[ImageRef]:
    """Every object a remote ``pattern`` matches, yielded as Beam's lister returns them (a listing
    page at a time): Beam's ``FileSystem.match`` without its list of the whole match (it holds a
    ``FileMetadata`` per object before returning; see docs/PERFORMANCE.md section 10). Same
    semantics: the part before the first glob character is the listed prefix, a pattern without
    one is looked up directly, and listing errors raise (``BeamIOError``)."""
    from apache_beam.io.filesystems import FileSystems

    fs = FileSystems.get_filesystem(pattern)
    if pattern.endswith("/"):
        pattern += "*"
    prefix = re.match(r"^[^[*?]*", pattern).group(0)
    if prefix == pattern:  # no glob: one object or none
        from apache_beam.io.filesystem import BeamIOError

        try:
            meta = fs.metadata(pattern) if fs.exists(pattern) else None
        except Exception as exc:  # noqa: BLE001 - raised as FileSystem.match raises it
            raise BeamIOError("Match operation failed", {pattern: exc}) from exc
        if meta is not None:
            yield remote_entry(meta.path, meta.size_in_bytes, meta.last_updated_in_seconds)
        return
    if fs.has_dirs():
        prefix = fs._url_dirname(prefix)  # noqa: SLF001 - what FileSystem.match lists, too
    listed = fs._list(prefix)  # noqa: SLF001 - a generator of FileMetadata, page by page
    for meta in fs.match_files(listed, pattern):
        yield remote_entry(meta.path, meta.size_in_bytes, meta.last_updated_in_seconds)


def remote_entry(path: str, size: int | None, last_updated_seconds: float | None) -> ImageRef:
    """The ImageRef of one object listed by Beam's matcher; a zero-byte key ending in ``/`` (or
    Hadoop's ``_$folder$``) is a folder marker, not an image."""
    mtime = None if last_updated_seconds is None else int(round(float(last_updated_seconds) * 1000))
    error = FOLDER_MARKER if (path.endswith("/") or path.endswith("_$folder$")) and not size else None
    return ImageRef(
        path, image_id_from_uri(path), None if size is None else int(size), modified_ms=mtime, entry_error=error
    )
