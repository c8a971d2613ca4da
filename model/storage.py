"""fsspec helpers: read/write bytes at local paths or URIs (with the one bounded reader of the
project, ``read_bytes(uri, max_bytes)``, and the one atomic write, ``write_atomically`` /
``atomic_local_path``), the one "is this URI local?" test (``is_local``), and a local copy when a
library (Keras' HDF5 loader) needs a real file."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
TEMP_PREFIX = ".tmp-"  # atomic writes' temporary names; readers (pyarrow, Spark, globs) skip names starting with "."


def join(base: str, name: str) -> str:
    """Join a path or URI with a file name."""
    return base.rstrip("/") + "/" + name


def is_local(uri: str) -> bool:
    """True for a plain path and a ``file://`` URI, False for any other ``scheme://`` (object
    stores, ``memory://``). Decided from the text alone: no filesystem is created, nothing is read."""
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    """The OS path of a local URI: ``file://`` removed from one, a plain path as it is."""
    return uri.removeprefix("file://")


class ObjectTooLarge(ValueError):
    """A bounded read found more bytes than allowed."""

    def __init__(self, uri: str, max_bytes: int) -> None:
        super().__init__(f"{uri} is over the limit of {max_bytes} bytes")
        self.uri = uri
        self.max_bytes = max_bytes


def read_limit(max_bytes: int) -> int:
    """How many bytes a bounded read fetches: one more than allowed, which shows a file is too
    large without reading all of it (the pipeline's readers use the same limit)."""
    return max_bytes + 1


def is_invalid_range(exc: BaseException) -> bool:
    """S3 answers a range request on an empty object with 416 InvalidRange."""
    text = str(exc)
    return "InvalidRange" in text or "416" in text or "Requested Range Not Satisfiable" in text


def cat_prefix(fs: Any, path: str, max_bytes: int, remote: bool) -> bytes:
    """At most ``read_limit(max_bytes)`` bytes of ``path`` on the fsspec filesystem ``fs``, in one
    ranged read; an object store's 416 on an empty object reads as ``b""``."""
    try:
        return fs.cat_file(path, start=0, end=read_limit(max_bytes))
    except OSError as exc:
        if remote and is_invalid_range(exc):
            return b""
        raise


def read_prefix(uri: str, max_bytes: int) -> bytes:
    """At most ``read_limit(max_bytes)`` bytes of a file or object, in one ranged read."""
    fs, path = fsspec.core.url_to_fs(uri)
    return cat_prefix(fs, path, max_bytes, remote=not is_local(uri))


def read_bytes(uri: str, max_bytes: int | None = None) -> bytes:
    """The whole content of a file or object. With ``max_bytes`` at most that many bytes are
    accepted (a ranged read of ``max_bytes + 1``): a larger one raises ``ObjectTooLarge``."""
    if max_bytes is None:
        with fsspec.open(uri, "rb") as f:
            return f.read()
    data = read_prefix(uri, max_bytes)
    if len(data) > max_bytes:
        raise ObjectTooLarge(uri, max_bytes)
    return data


def read_text(uri: str) -> str:
    """A UTF-8 text file at a path or URI."""
    return read_bytes(uri).decode("utf-8")


@contextlib.contextmanager
def atomic_local_path(path: str) -> Iterator[str]:
    """A temporary local name for the caller to write a file (or a folder) at, renamed to ``path``
    when the block ends without an exception, so readers see the old content or the whole new one,
    never a part. The name is in ``path``'s folder (created if missing; a rename within one
    filesystem is atomic), starts with ``TEMP_PREFIX`` (globs of the final names and table readers
    skip it) and keeps ``path``'s file name as its end, so writers that insist on a suffix
    (``np.savez``: ``.npz``, Keras: ``.weights.h5``) accept it. A file is fsync-ed before the rename.
    Whatever is left at the temporary name (an exception, a failed rename) is removed. A folder
    replaces only a missing or empty ``path`` (the rename raises ``OSError`` otherwise)."""
    folder, name = os.path.split(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    temp = os.path.join(folder, f"{TEMP_PREFIX}{uuid.uuid4().hex[:8]}-{name}")
    try:
        yield temp
        if os.path.isfile(temp):
            with open(temp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(temp, path)
    finally:
        if os.path.isdir(temp) and not os.path.islink(temp):
            shutil.rmtree(temp, ignore_errors=True)
        elif os.path.lexists(temp):
            os.unlink(temp)


def write_atomically(uri: str, data: bytes) -> str:
    """Write ``data`` at ``uri`` so that it appears whole or not at all (a retry overwrites it);
    returns the written file's path (local) or URI (object store). Local: ``atomic_local_path``.
    Object stores: one ``pipe_file``, a single PUT (or a multipart upload that is invisible until
    it completes), so no temporary object is ever listed."""
    if is_local(uri):
        path = os.path.abspath(local_path(uri))
        with atomic_local_path(path) as temp, open(temp, "wb") as f:
            f.write(data)
        return path
    fs, path = fsspec.core.url_to_fs(uri)
    fs.pipe_file(path, data)
    return fs.unstrip_protocol(path)


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` at a path or URI, atomically (``write_atomically``)."""
    write_atomically(uri, data)


def exists(uri: str) -> bool:
    fs, path = fsspec.core.url_to_fs(uri)
    return fs.exists(path)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str) -> str:
    """SHA-256 of a local file, read in 8 MiB chunks (a large weights file is never held whole)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def cache_root() -> str:
    """Local folder for downloaded weights and converted models: ``$CAPTION_CACHE_DIR`` if set,
    else ``image-captioning-cache`` in the temporary directory (per machine, per worker VM)."""
    return os.environ.get("CAPTION_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "image-captioning-cache")


def materialise(uri: str, cache_dir: str | None = None) -> str:
    """Return a local file path holding the content of ``uri`` (downloaded once per URI)."""
    if is_local(uri):
        return local_path(uri)
    cache_dir = cache_dir or cache_root()
    os.makedirs(cache_dir, exist_ok=True)
    name = hashlib.sha256(uri.encode()).hexdigest()[:24] + "-" + os.path.basename(uri.rstrip("/"))
    target = os.path.join(cache_dir, name)
    if not os.path.exists(target):
        with atomic_local_path(target) as temp, fsspec.open(uri, "rb") as src, open(temp, "wb") as dst:
            while chunk := src.read(8 << 20):
                dst.write(chunk)
    return target


def is_hdf5(path: str) -> bool:
    """True if the local file starts with the HDF5 signature (weights files must)."""
    with open(path, "rb") as f:
        return f.read(len(HDF5_MAGIC)) == HDF5_MAGIC
