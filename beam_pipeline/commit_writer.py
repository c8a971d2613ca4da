"""The write stage: a DoFn that makes rows durable while the run goes (``--commit_every`` rows /
``--commit_seconds``), as atomic, content-named Parquet files (rules in ``beam_pipeline.commits``).

It replaces Beam's ``WriteToParquet``, which commits nothing until the whole job has finished.
The DoFn sits in the same fused stage as captioning (no shuffle in between), so on the
FnApiRunner and on distributed runners alike files appear as batches are captioned. Whatever is
still buffered is committed in ``finish_bundle``, so a bundle never ends with rows that are not
durable; a commit that fails after its retries raises, which fails the bundle and the job.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics

from beam_pipeline.commits import CommitBuffer, commit_file_name, parquet_bytes, with_retries
from beam_pipeline.metrics import NAMESPACE
from beam_pipeline.retries import RetryPolicy
from model.storage import join, write_atomically


class CommitRows(beam.DoFn):
    """Rows in, nothing out: rows are committed to ``directory`` in files of at most ``every``
    rows, and none waits longer than ``seconds`` after the next row arrives."""

    def __init__(
        self,
        directory: str,
        run_id: str,
        label: str,
        schema: pa.Schema,
        every: int,
        seconds: float,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.directory = directory
        self.run_id = run_id
        self.label = label
        self.schema = schema
        self.every = every
        self.seconds = seconds
        self.policy = policy or RetryPolicy()
        self.rows_committed = Metrics.counter(NAMESPACE, "rows_committed")
        self.files_committed = Metrics.counter(NAMESPACE, "commits")
        self.retries = Metrics.counter(NAMESPACE, "commit_retries")
        self.buffer: CommitBuffer | None = None

    def start_bundle(self) -> None:
        self.buffer = CommitBuffer(self.every, self.seconds)

    def process(self, row: dict[str, Any]) -> Iterator[Any]:
        if self.buffer is None:  # a runner that skips start_bundle (never seen; defensive)
            self.start_bundle()
        if self.buffer.add(row):
            self._commit()
        return iter(())

    def finish_bundle(self) -> None:
        if self.buffer is not None and self.buffer.rows:
            self._commit()

    def _commit(self) -> None:
        rows = self.buffer.take()
        name = commit_file_name(self.run_id, self.label, (r["image_uri"] for r in rows))
        data = parquet_bytes(rows, self.schema)
        with_retries(
            lambda: write_atomically(join(self.directory, name), data),
            self.policy,
            f"{len(rows)} {self.label} rows to {self.directory}/{name}",
            on_retry=lambda *_: self.retries.inc(),
        )
        self.rows_committed.inc(len(rows))
        self.files_committed.inc()
