"""Read a run's output for the report: ``summary.json``, a bounded sample of the caption rows and
the first error rows, from ``OUT_DIR/captions`` and ``OUT_DIR/errors`` (any fsspec URL).

Memory stays bounded on big runs: only the needed columns are read (never the embedding), caption
rows stream through a bottom-k sample (the ``sample`` rows with the smallest seeded hash of their
``image_uri``, so the choice does not depend on file or batch order), and at most ``max_errors``
error rows are kept.

Only each URI's latest row counts (the output's rule, ``beam_pipeline.output_files``): a row that
a later row of the same ``image_uri`` replaced (an input changed and was captioned again, in
captions or errors) is neither shown nor counted. Finding them reads the ``image_uri`` and
``processed_at`` columns of every file once (Arrow columns, tens of bytes per row, held while the
report loads).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import posixpath
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from beam_pipeline.output_files import LatestRows, latest_rows, time_keys
from beam_pipeline.schemas import CAPTION_FIELDS, ERROR_FIELDS
from model import storage

log = logging.getLogger(__name__)

DEFAULT_SAMPLE = 500
DEFAULT_MAX_ERRORS = 1000

_BATCH_ROWS = 8192

# Only what the page shows: never the (possibly huge) embedding column.
CAPTION_COLUMNS = (
    "image_uri",
    "image_id",
    "caption",
    "score",
    "decode",
    "model_id",
    "width",
    "height",
    "references",
    "bleu4",
)
ERROR_COLUMNS = ("image_uri", "image_id", "stage", "error_type", "message", "processed_at")
REVIEW_COLUMNS = ("image_uri", "image_id", "caption", "score", "model_id", "flags", "reason")
_REVIEW_TYPES = {
    "image_uri": pa.string(),
    "image_id": pa.string(),
    "caption": pa.string(),
    "score": pa.float64(),
    "model_id": pa.string(),
    "flags": pa.list_(pa.string()),
    "reason": pa.string(),
}
_CAPTION_TYPES = {f.name: f.type for f in CAPTION_FIELDS}
_ERROR_TYPES = {f.name: f.type for f in ERROR_FIELDS}


@dataclass(frozen=True)
class CaptionRow:
    """One caption row as shown in the gallery."""

    image_uri: str
    image_id: str
    caption: str
    score: float  # mean token log-probability (<= 0); NaN when missing
    decode: str = ""
    model_id: str = ""
    width: int | None = None
    height: int | None = None
    references: tuple[str, ...] | None = None
    bleu4: float | None = None
    review: str | None = None  # why it is in OUT_DIR/review ("flagged", "low_score", ...), None if not
    flags: tuple[str, ...] | None = None  # watch-list categories (--watchlist)


@dataclass(frozen=True)
class ErrorRow:
    """One error row as shown in the error table."""

    image_uri: str
    image_id: str | None
    stage: str
    error_type: str
    message: str
    processed_at: datetime | None = None


@dataclass
class CaptionSample:
    """Sampled caption rows (least confident first) and the total number of rows read."""

    rows: list[CaptionRow]
    total: int
    unreadable: list[str] = field(default_factory=list)  # "path: reason" per skipped file


@dataclass
class ErrorRows:
    """The first ``max_errors`` error rows, the total, and counts over all rows."""

    rows: list[ErrorRow]
    total: int
    by_type: Counter = field(default_factory=Counter)  # (stage, error_type) -> count
    unreadable: list[str] = field(default_factory=list)


def text(value: Any) -> str:
    """``value`` as a string; '' for None."""
    return "" if value is None else str(value)


def list_parquet_files(directory: str) -> list[str]:
    """Sorted fsspec URLs of the ``*.parquet`` files under ``directory`` (recursively), skipping
    hidden/temporary entries (names starting with '.' or '_'); [] when the directory is missing."""
    fs, root = fsspec.core.url_to_fs(directory)
    try:
        if not fs.isdir(root):
            return []
        found = fs.find(root)
    except (FileNotFoundError, NotADirectoryError):
        return []
    root = root.rstrip("/")
    keep = []
    for path in found:
        rel = path[len(root) :].lstrip("/") if path.startswith(root) else posixpath.basename(path)
        if not rel.endswith(".parquet"):
            continue
        if any(part.startswith((".", "_")) for part in rel.split("/")):
            continue
        keep.append(fs.unstrip_protocol(path))
    return sorted(keep)


def output_exists(out_dir: str) -> bool:
    """True when ``out_dir`` exists (or its filesystem cannot tell: the loaders then raise)."""
    fs, root = fsspec.core.url_to_fs(out_dir)
    try:
        return fs.exists(root)
    except Exception:  # noqa: BLE001 - let the loaders raise something specific
        return True


def load_summary(out_dir: str) -> tuple[dict[str, Any], str | None]:
    """``OUT_DIR/summary.json`` as a dict ({} if missing) and a note when it is absent or bad."""
    uri = storage.join(out_dir, "summary.json")
    try:
        with fsspec.open(uri, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        return {}, "no summary.json in the output directory: counts below come from the Parquet files"
    except (ValueError, UnicodeDecodeError) as exc:
        return {}, f"summary.json could not be parsed ({type(exc).__name__}: {exc})"
    if not isinstance(data, dict):
        return {}, f"summary.json is a JSON {type(data).__name__}, not an object"
    return data, None


def _iter_batches(
    paths: Sequence[str], columns: Sequence[str], types: Mapping[str, pa.DataType], unreadable: list[str]
) -> Iterator[pa.RecordBatch]:
    """Record batches with exactly ``columns`` (cast to ``types``; absent columns become nulls,
    so files of older runs still load). A file that cannot be read is noted and skipped."""
    schema = pa.schema([pa.field(c, types[c]) for c in columns])
    for path in paths:
        fs, fpath = fsspec.core.url_to_fs(path)
        try:
            with fs.open(fpath, "rb") as f:
                pf = pq.ParquetFile(f)
                present = [c for c in columns if c in pf.schema_arrow.names]
                for batch in pf.iter_batches(batch_size=_BATCH_ROWS, columns=present):
                    n = batch.num_rows
                    arrays = []
                    for name in columns:
                        if name in present:
                            col = batch.column(batch.schema.get_field_index(name))
                            arrays.append(col if col.type == types[name] else col.cast(types[name]))
                        else:
                            arrays.append(pa.nulls(n, types[name]))
                    yield pa.RecordBatch.from_arrays(arrays, schema=schema)
        except Exception as exc:  # noqa: BLE001 - a damaged file must not lose the whole report
            log.warning("skipping unreadable parquet file %s: %s", path, exc)
            unreadable.append(f"{path}: {type(exc).__name__}: {exc}")


def current_rows(out_dir: str) -> LatestRows:
    """Each URI's latest row over ``OUT_DIR/captions`` and ``OUT_DIR/errors`` (the output's rule,
    ``beam_pipeline.output_files.latest_rows``); damaged files are left out here (the loaders
    note them)."""
    return latest_rows(
        {kind: list_parquet_files(storage.join(out_dir, kind)) for kind in ("captions", "errors")}, unreadable=[]
    )


def _current(batch: pa.RecordBatch, latest: LatestRows, kind: str) -> pa.RecordBatch:
    """``batch`` (rows of ``kind``, with image_uri and processed_at columns) without the rows a
    later row of the same URI replaced."""
    if not latest.replaced:
        return batch
    uris = batch.column(batch.schema.get_field_index("image_uri"))
    times = time_keys(batch.column(batch.schema.get_field_index("processed_at")))
    return batch.filter(pa.array(latest.is_current(kind, uris, times)))


def bottom_k_keys(image_uris: Sequence[str | None], seed: int) -> np.ndarray:
    """Seeded 64-bit hash of each image_uri (uint64): the sample is the rows with the smallest keys,
    so it is deterministic, independent of file/batch order, and stable when runs are added."""
    salt = int(seed).to_bytes(8, "little", signed=True)
    keys = np.empty(len(image_uris), dtype=np.uint64)
    for i, uri in enumerate(image_uris):
        digest = hashlib.blake2b((uri or "").encode("utf-8", "surrogatepass"), digest_size=8, salt=salt + b"\0" * 8)
        keys[i] = int.from_bytes(digest.digest(), "little")
    return keys


def _score_sort_key(row: CaptionRow) -> tuple[float, str]:
    score = row.score
    return (-math.inf if score is None or math.isnan(score) else score, row.image_uri)


def _to_caption_row(d: Mapping[str, Any]) -> CaptionRow:
    refs = d.get("references")
    score = d.get("score")
    return CaptionRow(
        image_uri=text(d.get("image_uri")),
        image_id=text(d.get("image_id")),
        caption=text(d.get("caption")),
        score=float("nan") if score is None else float(score),
        decode=text(d.get("decode")),
        model_id=text(d.get("model_id")),
        width=d.get("width"),
        height=d.get("height"),
        references=None if refs is None else tuple(text(r) for r in refs),
        bleu4=d.get("bleu4"),
    )


def load_captions(out_dir: str, *, sample: int = DEFAULT_SAMPLE, seed: int = 0) -> CaptionSample:
    """Stream ``OUT_DIR/captions`` and keep a deterministic sample of ``sample`` of the current rows
    (all when there are fewer), returned least confident first. Memory: O(sample + one record
    batch), plus ``current_rows``' pass."""
    if sample < 0:
        raise ValueError(f"sample must be >= 0, got {sample}")
    unreadable: list[str] = []
    paths = list_parquet_files(storage.join(out_dir, "captions"))
    latest = current_rows(out_dir)
    kept: pa.Table | None = None
    kept_keys = np.empty(0, dtype=np.uint64)
    total = 0
    for batch in _iter_batches(paths, CAPTION_COLUMNS + ("processed_at",), _CAPTION_TYPES, unreadable):
        batch = _current(batch, latest, "captions")
        total += batch.num_rows
        if sample == 0 or batch.num_rows == 0:
            continue
        keys = bottom_k_keys(batch.column(0).to_pylist(), seed)
        candidates = pa.Table.from_batches([batch])
        if len(kept_keys) >= sample:  # full: only rows beating the current worst can enter
            better = keys < kept_keys.max()
            if not better.any():
                continue
            candidates = candidates.filter(pa.array(better))
            keys = keys[better]
        merged_keys = np.concatenate([kept_keys, keys])
        merged = candidates if kept is None else pa.concat_tables([kept, candidates])
        if len(merged_keys) > sample:
            # stable order on equal keys (duplicate URIs): earlier files win
            order = np.argsort(merged_keys, kind="stable")[:sample]
            merged = merged.take(pa.array(order))
            merged_keys = merged_keys[order]
        kept, kept_keys = merged.combine_chunks(), merged_keys
    rows = [] if kept is None else [_to_caption_row(d) for d in kept.to_pylist()]
    rows.sort(key=_score_sort_key)
    return CaptionSample(rows=rows, total=total, unreadable=unreadable)


def load_errors(out_dir: str, *, max_errors: int = DEFAULT_MAX_ERRORS) -> ErrorRows:
    """All error rows up to ``max_errors`` (in file order), plus the total and per-(stage,
    error_type) counts over every row."""
    if max_errors < 0:
        raise ValueError(f"max_errors must be >= 0, got {max_errors}")
    unreadable: list[str] = []
    paths = list_parquet_files(storage.join(out_dir, "errors"))
    latest = current_rows(out_dir)
    rows: list[ErrorRow] = []
    by_type: Counter = Counter()
    total = 0
    for batch in _iter_batches(paths, ERROR_COLUMNS, _ERROR_TYPES, unreadable):
        batch = _current(batch, latest, "errors")
        total += batch.num_rows
        stages = batch.column(2).to_pylist()
        types = batch.column(3).to_pylist()
        by_type.update(zip((text(s) for s in stages), (text(t) for t in types)))
        room = max_errors - len(rows)
        if room > 0:
            for d in batch.slice(0, room).to_pylist():
                rows.append(
                    ErrorRow(
                        image_uri=text(d["image_uri"]),
                        image_id=d["image_id"],
                        stage=text(d["stage"]),
                        error_type=text(d["error_type"]),
                        message=text(d["message"]),
                        processed_at=d["processed_at"],
                    )
                )
    return ErrorRows(rows=rows, total=total, by_type=by_type, unreadable=unreadable)


def load_review(out_dir: str, *, limit: int = DEFAULT_SAMPLE) -> tuple[list[CaptionRow], int]:
    """The review queue (``OUT_DIR/review/*.parquet``, ``--watchlist`` / ``--review_below``): at most
    ``limit`` rows as CaptionRows with their ``review`` reason and flags, and the total count."""
    rows: list[CaptionRow] = []
    total = 0
    for batch in _iter_batches(list_parquet_files(storage.join(out_dir, "review")), REVIEW_COLUMNS, _REVIEW_TYPES, []):
        total += batch.num_rows
        for d in batch.slice(0, max(0, limit - len(rows))).to_pylist():
            score = d.get("score")
            rows.append(
                CaptionRow(
                    image_uri=text(d["image_uri"]),
                    image_id=text(d["image_id"]),
                    caption=text(d["caption"]),
                    score=float("nan") if score is None else float(score),
                    model_id=text(d.get("model_id")),
                    review=text(d["reason"]),
                    flags=tuple(d["flags"]) if d.get("flags") is not None else None,
                )
            )
    return rows, total


def with_review(sample: CaptionSample, review: list[CaptionRow]) -> CaptionSample:
    """The sample with each row's review reason, and the review rows it lacks added (so the
    gallery's "needs review" filter shows the whole queue, up to its limit); least confident first."""
    reasons = {r.image_uri: r for r in review}
    rows = [
        replace(r, review=reasons[r.image_uri].review, flags=reasons[r.image_uri].flags)
        if r.image_uri in reasons
        else r
        for r in sample.rows
    ]
    have = {r.image_uri for r in rows}
    rows += [r for r in review if r.image_uri not in have]
    rows.sort(key=_score_sort_key)
    return CaptionSample(rows=rows, total=sample.total, unreadable=sample.unreadable)
