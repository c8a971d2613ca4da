"""Incremental commits of output rows: when to commit, what a commit file is called, and how a
failed write is retried (the atomic write itself is ``model.storage.write_atomically``).

Pure Python (pyarrow + fsspec, no Beam, no TensorFlow), so each rule is tested on its own; the
Beam DoFn that composes them is ``beam_pipeline.commit_writer.CommitRows``.

Design (see docs/OUTPUTS.md "Incremental commits"):

* A commit file is a complete Parquet file written in one step (``model.storage.write_atomically``):
  on a local disk under a temp name starting with ``.`` in the same folder, then ``os.replace``-d
  to its final name; on an object store as one ``pipe`` (one PUT, or a multipart upload that
  appears only when completed). Readers
  (pyarrow, DuckDB, Spark) skip names starting with ``.`` or ``_`` and so never see half a file.
* Its name is derived from its content: ``part-RUNID-<sha256 of the writer's label and the sorted
  image URIs>.parquet``. A runner that retries a bundle writes the same rows to the same name and
  overwrites the first attempt's file instead of adding a duplicate.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from beam_pipeline.retries import GaveUp, RetryPolicy, call_with_retries

log = logging.getLogger(__name__)

T = TypeVar("T")

COMMIT_PREFIX = "part-"
# Run ids are new_run_id()'s "20261127T152958Z-abc123"; Beam's WriteToParquet names of older runs
# ("part-RUNID-00000-of-00001.parquet") carry the run id the same way.
_RUN_ID_IN_NAME = re.compile(r"^part-(\d{8}T\d{6}Z-[0-9a-f]{6})-")


class CommitError(RuntimeError):
    """Rows could not be made durable after every retry; the job must fail (rows stay for --resume)."""


def with_retries(
    action: Callable[[], T],
    policy: RetryPolicy,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[int, BaseException], None] | None = None,
) -> T:
    """Run ``action`` under the pipeline's retry loop (every failure retried, plain doubling);
    after the last attempt raise ``CommitError`` naming ``what`` and the last error."""

    def note(failed: int, exc: BaseException, delay: float) -> None:
        log.warning(
            "commit of %s failed (attempt %d of %d, retrying in %.1f s): %s: %s",
            what,
            failed,
            policy.tries,
            delay,
            type(exc).__name__,
            exc,
        )
        if on_retry is not None:
            on_retry(failed, exc)

    try:
        return call_with_retries(action, policy, sleep=sleep, on_retry=note)
    except GaveUp as exc:
        raise CommitError(
            f"could not commit {what} after {exc.tries} attempts: {type(exc.cause).__name__}: {exc.cause}"
        ) from exc.cause


def commit_file_name(run_id: str, label: str, uris: Iterable[str]) -> str:
    """``part-RUNID-HASH.parquet``: the hash covers the writer's label and the sorted URIs (with
    repeats), so the same rows from the same writer always get the same name."""
    h = hashlib.sha256(label.encode())
    for uri in sorted(uris):
        h.update(b"\0" + uri.encode())
    return f"{COMMIT_PREFIX}{run_id}-{h.hexdigest()[:32]}.parquet"


def run_id_of(file_name: str) -> str | None:
    """The run id in a commit file's name (also Beam-written names of older runs), else None."""
    found = _RUN_ID_IN_NAME.match(os.path.basename(file_name.rstrip("/")))
    return found.group(1) if found else None


def is_committed_name(file_name: str) -> bool:
    """True for a finished Parquet file; temp names (leading ``.`` or ``_``) are not."""
    base = os.path.basename(file_name.rstrip("/"))
    return base.endswith(".parquet") and not base.startswith((".", "_"))


def parquet_bytes(rows: Sequence[dict[str, Any]], schema: pa.Schema) -> bytes:
    """A whole Parquet file in memory (so it can be written in one step)."""
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(list(rows), schema=schema), buffer)
    return buffer.getvalue()


@dataclass
class CommitBuffer:
    """Rows waiting to be committed, and the rule for when: ``every`` rows, or once the oldest
    waiting row is ``seconds`` old (checked whenever a row arrives). ``clock`` is injectable."""

    every: int
    seconds: float
    clock: Callable[[], float] = time.monotonic
    rows: list[dict[str, Any]] = field(default_factory=list)
    oldest: float | None = None

    def add(self, row: dict[str, Any]) -> bool:
        """Keep ``row``; True when the buffer is due to be committed."""
        if not self.rows:
            self.oldest = self.clock()
        self.rows.append(row)
        return self.due()

    def due(self) -> bool:
        if not self.rows:
            return False
        if self.every > 0 and len(self.rows) >= self.every:
            return True
        return self.seconds > 0 and self.oldest is not None and self.clock() - self.oldest >= self.seconds

    def take(self) -> list[dict[str, Any]]:
        """All waiting rows (the buffer is emptied)."""
        rows, self.rows, self.oldest = self.rows, [], None
        return rows
