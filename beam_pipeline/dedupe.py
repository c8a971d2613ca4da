"""Dedupe and resume, per image URI: an input an earlier run already holds is skipped
(``--resume``) unless it changed since, a URI given twice is captioned once and its repeats
become error rows.

**Changed inputs.** Rows record the input as it was listed (``source_size``, ``source_mtime``).
The latest row of a URI (greatest ``processed_at``: ``beam_pipeline.output_files``) is compared
with this run's listing; when a value both sides know differs, the input is captioned again
(``Recaptioned``, counted as ``recaptioned_changed``). A value either side lacks (rows of older
runs, manifests) is unknown and never counts as a change.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import apache_beam as beam

from beam_pipeline.outcomes import Recaptioned, Skipped, failed
from beam_pipeline.output_files import epoch_ms, latest_key
from beam_pipeline.records import STAGE_MATCH, ImageRef, error_row

# Marks of URIs that earlier runs hold: finished runs, and runs that never finished.
DONE, DONE_BY_INTERRUPTED = "done", "done-by-interrupted-run"
DONE_COLUMNS = ("image_uri", "processed_at", "source_size", "source_mtime")


class Done(NamedTuple):
    """An earlier row of a URI: which runs hold it, when it was made, the input as then listed."""

    mark: str
    processed_at: Any = None
    source_size: int | None = None
    source_mtime: Any = None


def done_entry(row: dict[str, Any], mark: str) -> tuple[str, Done]:
    """``(uri, Done)`` of an earlier output row (``DONE_COLUMNS``)."""
    return row["image_uri"], Done(mark, row.get("processed_at"), row.get("source_size"), row.get("source_mtime"))


def has_changed(ref: ImageRef, latest: Done) -> bool:
    """True when this run's listing of ``ref`` differs from the latest row's record of it, in a
    value both sides know (size, mtime)."""
    if latest.source_size is not None and ref.size_bytes is not None and latest.source_size != ref.size_bytes:
        return True
    then = epoch_ms(latest.source_mtime)
    return then is not None and ref.modified_ms is not None and then != ref.modified_ms


class DedupeAndResume(beam.DoFn):
    """``(uri, {"refs": [ImageRef], "done": [Done or mark]})`` -> the first ImageRef to caption, or
    a ``Skipped`` per input when an earlier run holds the URI and it did not change (however many
    files hold it, it counts once; tagged True when only interrupted runs hold it, i.e. rows
    committed before a crash), plus a ``DuplicateInput`` error row per repeat of the URI. A
    changed input is captioned again, with a ``Recaptioned`` beside it."""

    def process(self, element: tuple[str, dict[str, list]]) -> Iterator[Any]:
        uri, groups = element
        refs: list[ImageRef] = list(groups["refs"])
        if not refs:
            return
        done = [d if isinstance(d, Done) else Done(d) for d in groups.get("done", [])]
        if done:
            latest = max(done, key=lambda d: latest_key(d.processed_at))
            if not has_changed(refs[0], latest):
                interrupted = {d.mark for d in done} == {DONE_BY_INTERRUPTED}
                for _ in refs:
                    yield Skipped(uri, interrupted)
                return
            yield Recaptioned(uri)
        yield refs[0]
        for dup in refs[1:]:
            yield failed(
                error_row(
                    uri,
                    dup.image_id,
                    STAGE_MATCH,
                    "DuplicateInput",
                    "the same image URI was given more than once; it is captioned once",
                    None,
                    dup,
                )
            )
