"""Dedupe and resume, per image URI: an input an earlier run already holds is skipped
(``--resume``), a URI given twice is captioned once and its repeats become error rows."""
from __future__ import annotations

from typing import Any, Iterator

import apache_beam as beam

from beam_pipeline.outcomes import Skipped, failed
from beam_pipeline.records import STAGE_MATCH, ImageRef, error_row

# Marks of URIs that earlier runs hold: finished runs, and runs that never finished.
DONE, DONE_BY_INTERRUPTED = "done", "done-by-interrupted-run"


class DedupeAndResume(beam.DoFn):
    """``(uri, {"refs": [ImageRef], "done": [mark]})`` -> the first ImageRef to caption, or a
    ``Skipped`` per input when an earlier run holds the URI (however many files hold it, it
    counts once; tagged True when only interrupted runs hold it, i.e. rows committed before a
    crash), plus a ``DuplicateInput`` error row per repeat of the URI."""

    def process(self, element: tuple[str, dict[str, list]]) -> Iterator[Any]:
        uri, groups = element
        refs: list[ImageRef] = list(groups["refs"])
        if not refs:
            return
        marks = set(groups.get("done", []))
        if marks:
            for _ in refs:
                yield Skipped(uri, marks == {DONE_BY_INTERRUPTED})
            return
        yield refs[0]
        for dup in refs[1:]:
            yield failed(error_row(
                uri, dup.image_id, STAGE_MATCH, "DuplicateInput",
                "the same image URI was given more than once; it is captioned once"))
