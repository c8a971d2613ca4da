"""Elasticsearch / OpenSearch ``_bulk`` files of a caption index (``export --format bulk-ndjson``).

Each file ``bulk-NNNNN.ndjson`` is a ``_bulk`` request body: per image an action line
``{"index": {"_index": NAME, "_id": ID}}`` and the document line, every line ending in ``\\n``.
``_id`` is the SHA-1 (hex) of the ``image_uri``: stable across exports and runs, so loading a
newer export again replaces documents instead of adding copies. Documents hold the index
columns (``processed_at`` as ISO 8601 UTC, ``embedding`` as a list of floats when the index has
one). A file holds at most ``max_bytes``; an action + document pair is never split (a single pair
larger than ``max_bytes`` gets a file of its own).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import fsspec

from beam_pipeline.preflight import PreflightError
from model.storage import join, write_atomically

FILE_PATTERN = "bulk-{:05d}.ndjson"
_BATCH_ROWS = 4096


def document_id(image_uri: str) -> str:
    """The stable ``_id`` of an image: SHA-1 (hex) of its URI."""
    return hashlib.sha1(image_uri.encode("utf-8")).hexdigest()


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return value


def bulk_pairs(table: Any, index_name: str) -> Iterator[bytes]:
    """The action + document lines of every row of ``table``, as one bytes object per row."""
    for batch in table.search().limit(None).to_batches(_BATCH_ROWS):
        for row in batch.to_pylist():
            row.pop("_rowid", None)
            doc = {k: _json_value(v) for k, v in row.items()}
            action = {"index": {"_index": index_name, "_id": document_id(row["image_uri"])}}
            yield (
                json.dumps(action, separators=(",", ":"))
                + "\n"
                + json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
                + "\n"
            ).encode("utf-8")


def export_bulk(table: Any, out_dir: str, *, index_name: str = "captions", max_bytes: int = 10_000_000) -> list[str]:
    """Write ``table`` as ``_bulk`` files of at most ``max_bytes`` under ``out_dir`` (created);
    refuses a folder that already holds bulk files (an older export's would be mixed in)."""
    fs, root = fsspec.core.url_to_fs(out_dir)
    if fs.glob(f"{root.rstrip('/')}/bulk-*.ndjson"):
        raise PreflightError(f"{out_dir} already holds bulk-*.ndjson files; export into an empty folder")
    fs.makedirs(root, exist_ok=True)
    files: list[str] = []
    chunk: list[bytes] = []
    size = 0

    def flush() -> None:  # each file whole or not at all; its local path or URI is listed
        files.append(write_atomically(join(out_dir, FILE_PATTERN.format(len(files))), b"".join(chunk)))

    for pair in bulk_pairs(table, index_name):
        if chunk and size + len(pair) > max_bytes:
            flush()
            chunk, size = [], 0
        chunk.append(pair)
        size += len(pair)
    if chunk:
        flush()
    return files
