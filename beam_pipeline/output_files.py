"""Reading OUTPUT's committed Parquet files back (resume, known content, the Iceberg sync, the
search index, the report), and OUTPUT's latest-row-per-URI rule.

Files of older runs lack newer columns (``image_sha256``, ``caption_source``, ``source_size``,
``source_mtime`` …): ``read_rows`` gives every asked-for column, null where a file lacks it, so
no footer has to be read in the driver to sort files by schema first. In a pipeline,
``beam.FlatMap(read_rows, columns)`` over a PCollection of file URIs reads them in parallel on
the workers (the driver holds no per-image state). No Beam here: the report uses this module too.

**The latest row per URI wins.** ``--resume`` may caption an input again when it changed since
its row was written (``beam_pipeline.dedupe``); the old row stays in its file (committed files
are never rewritten), so OUTPUT can hold several rows for one ``image_uri``, in captions and
errors alike. The row with the greatest ``processed_at`` is the current one; on a tie a caption
row beats an error row, then the earlier file (in the order given), then the earlier row. A
missing ``processed_at`` loses to any time. Resume applies it per URI on the workers
(``latest_key``, ``beam_pipeline.dedupe``); the Iceberg sync, the search index sync and the
report apply it to whole folders through ``latest_rows``: an input whose latest row is an error
has no current caption, whatever its earlier caption rows say.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

log = logging.getLogger(__name__)
_BATCH_ROWS = 8192


def read_rows(uri: str, columns: Sequence[str]) -> Iterator[dict[str, Any]]:
    """Rows of one Parquet file with exactly ``columns`` (None where the file lacks one), streamed
    a record batch at a time."""
    import fsspec
    import pyarrow.parquet as pq

    fs, path = fsspec.core.url_to_fs(uri)
    with fs.open(path, "rb") as f:
        parquet = pq.ParquetFile(f)
        present = [c for c in columns if c in parquet.schema_arrow.names]
        if not present:
            for _ in range(parquet.metadata.num_rows):
                yield dict.fromkeys(columns)
            return
        for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=present):
            for row in batch.to_pylist():
                yield {c: row.get(c) for c in columns}


def epoch_ms(value: Any) -> int | None:
    """A timestamp column's value (datetime, or ms already) as ms since the epoch; None stays None."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return int(round(value.timestamp() * 1000))
    return int(value)


MISSING_TIME = -(1 << 62)  # the key of a row without processed_at: older than any time


def latest_key(processed_at: Any) -> int:
    """Sort key of the latest-row rule: greater ``processed_at`` wins (a missing one loses)."""
    ms = epoch_ms(processed_at)
    return MISSING_TIME if ms is None else ms


def time_keys(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``latest_key`` of a whole ``processed_at`` column (timestamps of any unit and zone, or ms
    already), as int64."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.timestamp("ms", tz=column.type.tz), safe=False).cast(pa.int64())
    elif pa.types.is_null(column.type):
        column = pa.nulls(len(column), pa.int64())
    return column.cast(pa.int64()).fill_null(MISSING_TIME)


KEY_SCHEMA = pa.schema([("image_uri", pa.string()), ("processed_at", pa.int64())])


def key_batches(uri: str, batch_rows: int = 65536) -> Iterator[pa.Table]:
    """``image_uri`` and ``processed_at`` (``time_keys``) of one committed file, ``batch_rows``
    rows at a time (``KEY_SCHEMA``; null where the file lacks a column)."""
    import fsspec
    import pyarrow.parquet as pq

    fs, path = fsspec.core.url_to_fs(uri)
    with fs.open(path, "rb") as f:
        parquet = pq.ParquetFile(f)
        present = [c for c in KEY_SCHEMA.names if c in parquet.schema_arrow.names]
        if not present:
            for start in range(0, parquet.metadata.num_rows, batch_rows):
                n = min(batch_rows, parquet.metadata.num_rows - start)
                yield pa.table([pa.nulls(n, pa.string()), time_keys(pa.nulls(n))], schema=KEY_SCHEMA)
            return
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=present):
            n = batch.num_rows
            uris = batch.column("image_uri") if "image_uri" in present else pa.nulls(n, pa.string())
            times = batch.column("processed_at") if "processed_at" in present else pa.nulls(n)
            yield pa.table([uris.cast(pa.string()), time_keys(times)], schema=KEY_SCHEMA)


def row_count(uri: str) -> int:
    """How many rows one committed file holds (its footer)."""
    import fsspec
    import pyarrow.parquet as pq

    fs, path = fsspec.core.url_to_fs(uri)
    with fs.open(path, "rb") as f:
        return pq.ParquetFile(f).metadata.num_rows


def _key_table(uri: str) -> pa.Table:
    """``key_batches`` of one committed file as one table."""
    return pa.concat_tables([KEY_SCHEMA.empty_table(), *key_batches(uri)])


KIND_ORDER = ("captions", "errors")  # on a tie of processed_at, the earlier kind wins


@dataclass
class LatestRows:
    """Each URI's latest row over a set of committed files (``latest_rows``): an Arrow table with
    one row per ``image_uri`` and its ``processed_at`` key (int64 ms), ``kind`` ("captions" /
    "errors"), ``file`` (index into ``files``) and ``row`` (index in that file). Arrow columns:
    tens of bytes per URI, no Python object per row."""

    table: pa.Table
    files: list[str]
    rows_read: int = 0  # rows of every file; more than ``table``'s when some row was replaced

    @property
    def replaced(self) -> int:
        """How many rows a later row of the same URI replaced (0: every URI has one row)."""
        return self.rows_read - self.table.num_rows

    def of_kind(self, kind: str) -> pa.Table:
        """The latest rows that are of ``kind``."""
        import pyarrow.compute as pc

        return self.table.filter(pc.equal(self.table.column("kind"), kind))

    def not_of_kind(self, kind: str) -> pa.Array:
        """URIs whose latest row is of another kind than ``kind``."""
        import pyarrow.compute as pc

        return self.table.filter(pc.not_equal(self.table.column("kind"), kind)).column("image_uri").combine_chunks()

    def rows_in(self, file: str, kind: str) -> np.ndarray:
        """Indices (sorted) of the rows of ``file`` that are their URI's latest row."""
        import pyarrow.compute as pc

        index = self.files.index(file)
        mine = self.table.filter(
            pc.and_(pc.equal(self.table.column("file"), index), pc.equal(self.table.column("kind"), kind))
        )
        return np.sort(mine.column("row").to_numpy())

    def is_current(self, kind: str, uris: pa.Array, times: pa.Array) -> np.ndarray:
        """For rows given as (``image_uri``, ``processed_at`` key) of ``kind``: True where the row
        is its URI's latest row (rows equal to it in uri, time and kind, too)."""
        keys = pa.table(
            {"image_uri": uris, "processed_at": times, "_at": pa.array(np.arange(len(uris), dtype=np.int64))}
        )
        found = (
            self.of_kind(kind)
            .select(["image_uri", "processed_at"])
            .join(keys, ["image_uri", "processed_at"], join_type="inner")
        )
        mask = np.zeros(len(uris), dtype=bool)
        mask[found.column("_at").to_numpy()] = True
        return mask

    def get(self, uri: str) -> tuple[int, str] | None:
        """(processed_at key, kind) of ``uri``'s latest row; None when no file holds it (one URI:
        a scan, for tests and small checks)."""
        import pyarrow.compute as pc

        hit = self.table.filter(pc.equal(self.table.column("image_uri"), uri))
        return (hit.column("processed_at")[0].as_py(), hit.column("kind")[0].as_py()) if hit.num_rows else None


def latest_rows(files_by_kind: Mapping[str, Sequence[str]], unreadable: list[str] | None = None) -> LatestRows:
    """Each URI's latest row over every kind's files (OUTPUT's rule, module docstring). Reads the
    ``image_uri`` and ``processed_at`` columns of every file once. A file that cannot be read
    raises, unless ``unreadable`` is given: then it is noted there (and logged) and left out."""
    import pyarrow.compute as pc

    files: list[str] = []
    parts: list[pa.Table] = []
    for kind, uris in files_by_kind.items():
        rank = KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
        for uri in uris:
            files.append(uri)
            try:
                keys = _key_table(uri)
            except Exception as exc:  # noqa: BLE001 - the caller says whether a damaged file is fatal
                if unreadable is None:
                    raise
                log.warning("skipping unreadable parquet file %s: %s", uri, exc)
                unreadable.append(f"{uri}: {type(exc).__name__}: {exc}")
                continue
            n = keys.num_rows
            parts.append(
                keys.append_column("kind", pa.array([kind] * n, pa.string()))
                .append_column("rank", pa.array(np.full(n, rank, np.int8)))
                .append_column("file", pa.array(np.full(n, len(files) - 1, np.int32)))
                .append_column("row", pa.array(np.arange(n, dtype=np.int64)))
            )
    empty = pa.schema(
        [
            ("image_uri", pa.string()),
            ("processed_at", pa.int64()),
            ("kind", pa.string()),
            ("file", pa.int32()),
            ("row", pa.int64()),
        ]
    )
    if not parts:
        return LatestRows(empty.empty_table(), files)
    rows = pa.concat_tables(parts).filter(pc.is_valid(pc.field("image_uri")))
    return LatestRows(pick_latest(rows).drop_columns(["rank"]), files, rows.num_rows)


def pick_latest(rows: pa.Table) -> pa.Table:
    """The latest row of each URI among ``rows`` (columns ``image_uri``, ``processed_at`` key,
    ``rank``: the kind's place in ``KIND_ORDER``, ``file``, ``row``, and any others): the module
    docstring's rule, vectorised (a sort, then the first row of each URI). Rows without a URI are
    left out."""
    import pyarrow.compute as pc

    rows = rows.filter(pc.is_valid(rows.column("image_uri")))
    rows = rows.sort_by(
        [
            ("image_uri", "ascending"),
            ("processed_at", "descending"),
            ("rank", "ascending"),
            ("file", "ascending"),
            ("row", "ascending"),
        ]
    )
    uris = rows.column("image_uri").combine_chunks()
    first = np.ones(len(uris), dtype=bool)
    if len(uris) > 1:
        first[1:] = pc.not_equal(uris.slice(1), uris.slice(0, len(uris) - 1)).to_numpy(zero_copy_only=False)
    return rows.filter(pa.array(first)).combine_chunks()
