"""Reading OUTPUT's committed Parquet files back (resume, known content, the Iceberg sync).

Files of older runs lack newer columns (``image_sha256``, ``caption_source``, ``source_size``,
``source_mtime`` …): ``read_rows`` gives every asked-for column, null where a file lacks it, so
no footer has to be read in the driver to sort files by schema first. ``ReadOutputRows`` is the
same reader as a DoFn: a PCollection of file URIs becomes their rows, read in parallel by the
workers (the driver holds no per-image state).

**The latest row per URI wins.** ``--resume`` may caption an input again when it changed since
its row was written (``beam_pipeline.dedupe``); the old row stays in its file (committed files
are never rewritten), so OUTPUT can hold several rows for one ``image_uri``, in captions and
errors alike. The row with the greatest ``processed_at`` is the current one; resume, the report
and the Iceberg sync all follow this rule (``latest_key``).
"""
from __future__ import annotations

import datetime as dt
from typing import Any, Iterator, Sequence

import apache_beam as beam

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


class ReadOutputRows(beam.DoFn):
    """File URI -> its rows (``read_rows``); each file is read by one worker, files in parallel."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = list(columns)

    def process(self, uri: str) -> Iterator[dict[str, Any]]:
        yield from read_rows(uri, self.columns)


def epoch_ms(value: Any) -> int | None:
    """A timestamp column's value (datetime, or ms already) as ms since the epoch; None stays None."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return int(round(value.timestamp() * 1000))
    return int(value)


def latest_key(processed_at: Any) -> int:
    """Sort key of the latest-row rule: greater ``processed_at`` wins (a missing one loses)."""
    ms = epoch_ms(processed_at)
    return -(1 << 62) if ms is None else ms
