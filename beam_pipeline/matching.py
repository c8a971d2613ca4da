"""Matching inputs: globs and manifest tables -> one ``ImageRef`` per input.

Globs go through ``beam_pipeline.listing``: local globs and object-store globs (gs://, s3:// …
whatever Beam is installed with; a page of up to 1,000 keys per request) are both streamed, and
entries that are not readable regular files are typed. A glob that matches
nothing, or cannot be listed, is an error row, never an exception. Reading the matched inputs is
``beam_pipeline.image_reads``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam

from beam_pipeline.listing import list_local, list_remote
from beam_pipeline.outcomes import failed
from beam_pipeline.records import STAGE_MATCH, ImageRef, error_row, image_id_from_uri, parse_references_column
from model.storage import is_local
from model.tables import read_columns


def _entries(pattern: str) -> Iterator[ImageRef]:
    """Every entry ``pattern`` matches (``beam_pipeline.listing``), streamed: local ones a
    directory at a time, remote ones a listing page (1,000 keys) at a time."""
    yield from list_local(pattern) if is_local(pattern) else list_remote(pattern)


class MatchGlob(beam.DoFn):
    """Expand one glob into ImageRefs, one per matched entry, emitted as they are listed; a glob
    matching nothing is an error row, not a crash."""

    def process(self, pattern: str) -> Iterator[Any]:
        found = 0
        try:
            for ref in _entries(pattern):
                found += 1
                yield ref
        except Exception as exc:  # noqa: BLE001 - e.g. bucket missing, permission denied
            yield failed(error_row(pattern, None, STAGE_MATCH, type(exc).__name__, f"cannot match {pattern}: {exc}"))
            return
        if not found:
            yield failed(error_row(pattern, None, STAGE_MATCH, "NoMatch", f"no file matches {pattern}"))


class ReadManifest(beam.DoFn):
    """Rows of a manifest table -> ImageRefs (with optional ids and reference captions)."""

    def __init__(self, uri_column: str, id_column: str | None, references_column: str | None) -> None:
        self.uri_column = uri_column
        self.id_column = id_column
        self.references_column = references_column

    def process(self, manifest_uri: str) -> Iterator[Any]:
        wanted = [c for c in (self.uri_column, self.id_column, self.references_column) if c]
        table = read_columns(manifest_uri, wanted, "manifest")
        for batch in table.to_batches(max_chunksize=10_000):
            for row in batch.to_pylist():
                uri = row[self.uri_column]
                if not uri:
                    yield failed(
                        error_row(
                            f"{manifest_uri}#<empty>",
                            None,
                            STAGE_MATCH,
                            "EmptyUri",
                            "manifest row has an empty image URI",
                        )
                    )
                    continue
                uri = str(uri)
                image_id = (
                    str(row[self.id_column])
                    if self.id_column and row[self.id_column] is not None
                    else image_id_from_uri(uri)
                )
                refs = parse_references_column(row[self.references_column]) if self.references_column else None
                yield ImageRef(uri, image_id, None, refs)
