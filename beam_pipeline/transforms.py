"""The pipeline's named steps, as composite ``PTransform``s: each composes the DoFns of one stage
module and can be applied and tested on its own (tests/test_transforms.py).

    MatchInputs -> AttachReferences -> SkipDoneAndDuplicates -> ReadImages -> CaptionImages
    -> CommitRows (captions, errors) ; RunStats

Every DoFn has one output; error rows and other side results ride in it (``outcomes``) and are
split off with single-output steps, so a composite returns a tuple of PCollections.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

from beam_pipeline.caption_handler import CaptionModelHandler
from beam_pipeline.commit_writer import CommitRows
from beam_pipeline.dedupe import DONE, DONE_BY_INTERRUPTED, DONE_COLUMNS, DedupeAndResume, done_entry
from beam_pipeline.image_reads import ReadAndDecode
from beam_pipeline.matching import MatchGlob, ReadManifest
from beam_pipeline.object_reads import ReadSettings
from beam_pipeline.outcomes import PCollections, recaptioned_uris, skipped_flags, split, worker_reports
from beam_pipeline.output_files import read_rows
from beam_pipeline.records import ImageRef, with_reference_captions, with_references
from beam_pipeline.references import read_references
from beam_pipeline.retries import RetryPolicy

log = logging.getLogger(__name__)
progress_log = logging.getLogger("beam_pipeline.progress")  # beam_pipeline.console.PROGRESS_LOGGER


class MatchInputs(beam.PTransform):
    """Pipeline root -> (ImageRefs, match error rows): every ``--input`` glob and the rows of
    ``--input_manifest``; a glob matching nothing or a broken manifest is an error row."""

    def __init__(
        self,
        globs: list[str],
        manifest: str | None = None,
        uri_column: str = "image_uri",
        id_column: str | None = None,
        references_column: str | None = None,
    ) -> None:
        super().__init__()
        self.globs, self.manifest = list(globs), manifest
        self.columns = (uri_column, id_column, references_column)

    def expand(self, root: beam.pvalue.PBegin) -> PCollections:
        refs, errors = [], []
        if self.globs:
            matched, failed = split(
                root | "Globs" >> beam.Create(self.globs) | "Match" >> beam.ParDo(MatchGlob()), "Match"
            )
            refs.append(matched)
            errors.append(failed)
        if self.manifest:
            listed, failed = split(
                root
                | "Manifest" >> beam.Create([self.manifest])
                | "ReadManifest" >> beam.ParDo(ReadManifest(*self.columns)),
                "ReadManifest",
            )
            refs.append(listed)
            errors.append(failed)
        return refs | "AllRefs" >> beam.Flatten(), errors | "MatchErrors" >> beam.Flatten()


def _attach(element: tuple[str, dict[str, list]]) -> Iterator[ImageRef]:
    _, groups = element
    captions = [c for captions in groups["captions"] for c in captions]
    for ref in groups["refs"]:
        yield with_reference_captions(ref, captions)


class AttachReferences(beam.PTransform):
    """ImageRefs -> the same refs carrying their reference captions from ``--references`` (a
    Flickr8k token file or a table), joined by image id before reading, so that no shuffle
    separates captioning from the commits."""

    def __init__(self, references: str, id_column: str = "image_id", caption_column: str = "caption") -> None:
        super().__init__()
        self.references, self.id_column, self.caption_column = references, id_column, caption_column

    def expand(self, refs: beam.PCollection) -> beam.PCollection:
        table = (
            refs.pipeline
            | "ReferencesFile" >> beam.Create([self.references])
            | "ReadReferences" >> beam.FlatMap(read_references, self.id_column, self.caption_column)
        )
        return (
            {"refs": refs | "KeyById" >> beam.Map(lambda r: (r.image_id, r)), "captions": table}
            | "JoinReferences" >> beam.CoGroupByKey()
            | "Attach" >> beam.FlatMap(_attach)
        )


class SkipDoneAndDuplicates(beam.PTransform):
    """ImageRefs -> (refs to read, ``DuplicateInput`` error rows, one bool per input skipped by
    ``--resume``: True when only interrupted runs hold it, the URI of each input captioned again
    because it changed). ``done_files`` are earlier runs' caption and error files, read by the
    workers; ``interrupted_files`` the subset that runs which never finished committed. The
    grouping by URI also spreads work over workers (it is a shuffle)."""

    def __init__(self, done_files: list[str] = (), interrupted_files: list[str] = ()) -> None:
        super().__init__()
        self.done_files, self.interrupted_files = list(done_files), list(interrupted_files)

    def expand(self, refs: beam.PCollection) -> PCollections:
        p = refs.pipeline
        groups: dict[str, Any] = {"refs": refs | "KeyByUri" >> beam.Map(lambda r: (r.uri, r))}
        interrupted = set(self.interrupted_files)
        done_sets = [
            (DONE, [f for f in self.done_files if f not in interrupted]),
            (DONE_BY_INTERRUPTED, self.interrupted_files),
        ]
        marks = [
            p
            | f"DoneFiles{mark}" >> beam.Create(files)
            | f"ReadDone{mark}" >> beam.FlatMap(read_rows, DONE_COLUMNS)
            | f"KeyDone{mark}" >> beam.Map(done_entry, mark)
            for mark, files in done_sets
            if files
        ]
        if marks:
            groups["done"] = marks | "AllDone" >> beam.Flatten()
        deduped = groups | "GroupByUri" >> beam.CoGroupByKey() | "Dedupe" >> beam.ParDo(DedupeAndResume())
        todo, duplicates = split(deduped, "Dedupe")
        return (
            todo,
            duplicates,
            deduped | "Skipped" >> beam.FlatMap(skipped_flags),
            deduped | "Recaptioned" >> beam.FlatMap(recaptioned_uris),
        )


class ReadImages(beam.PTransform):
    """ImageRefs -> (ImageRecords at the model's input size, read/decode error rows)."""

    def __init__(
        self, image_size: tuple[int, int], max_bytes: int, max_pixels: int, settings: ReadSettings | None = None
    ) -> None:
        super().__init__()
        self.dofn = ReadAndDecode(image_size, max_bytes, max_pixels, settings)

    def expand(self, refs: beam.PCollection) -> PCollections:
        return split(refs | "ReadDecode" >> beam.ParDo(self.dofn), "ReadDecode")


class _Progress:
    """One progress line per process: images captioned and images/s every ``interval`` seconds,
    the clock starting at the first caption (so the model load does not count as captioning)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.lock = threading.Lock()
        self.start = self.last = time.monotonic()
        self.count = 0

    def add(self, n: int) -> None:
        with self.lock:
            now = time.monotonic()
            if self.count == 0:
                self.start = self.last = now
            self.count += n
            if self.interval > 0 and now - self.last >= self.interval:
                self.last = now
                rate = self.count / max(1e-9, now - self.start)
                progress_log.info(
                    "progress (pid %d): %d images captioned, %.1f images/s", os.getpid(), self.count, rate
                )


_PROGRESS: dict[float, _Progress] = {}
_PROGRESS_LOCK = threading.Lock()


class CountProgress(beam.DoFn):
    """Pass caption rows through and count them on the process's progress line. A row is counted
    after it went downstream (the commit writer is fused with this step), so the line never
    counts rows that have not reached the writer."""

    def __init__(self, interval: float) -> None:
        self.interval = interval

    def setup(self) -> None:
        with _PROGRESS_LOCK:
            self._progress = _PROGRESS.setdefault(self.interval, _Progress(self.interval))

    def process(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield row
        self._progress.add(1)


class _Clock:
    """RunInference's clock as an object: its default, the ``time`` module, cannot be deep-copied
    (our Dask runner copies each DoFn per bundle) or pickled by the standard pickler."""

    @staticmethod
    def time_ns() -> int:
        return time.time_ns()


class CaptionImages(beam.PTransform):
    """ImageRecords -> (caption rows, inference error rows, the captioning processes' reports:
    ``("load", (load_id, seconds, pid, host))`` per handler copy, repeated for copies that share a
    load, and ``("captioned_by", ("host:pid", n))`` per batch; see ``outcomes.worker_reports``).

    ``RunInference`` with our ``CaptionModelHandler`` batches the records and captions them with
    a model loaded once per process (or once per machine when the handler shares it across
    processes); ``model_identifier`` names that shared copy. ``sentence_bleu``: add each row's
    BLEU against the references it carries."""

    def __init__(
        self,
        handler: CaptionModelHandler,
        model_identifier: str,
        progress_seconds: float = 10.0,
        sentence_bleu: bool = False,
    ) -> None:
        super().__init__()
        self.handler, self.model_identifier = handler, model_identifier
        self.progress_seconds, self.sentence_bleu = progress_seconds, sentence_bleu

    def expand(self, records: beam.PCollection) -> PCollections:
        outcomes = records | "RunInference" >> RunInference(
            self.handler, clock=_Clock(), model_identifier=self.model_identifier
        )
        rows, errors = split(outcomes, "Caption")
        rows = rows | "Progress" >> beam.ParDo(CountProgress(self.progress_seconds))
        if self.sentence_bleu:
            rows = rows | "SentenceBleu" >> beam.Map(with_references, None)
        workers = outcomes | "WorkerReports" >> beam.FlatMap(worker_reports)
        return rows, errors, workers


class CommitOutputs(beam.PTransform):
    """``{label: rows}`` -> nothing: each source of rows gets its own incremental commit writer
    (``CommitRows``) under ``directory``, fused with the step that makes its rows (a Flatten in
    front of one writer could put it in a stage that only runs once every source has finished)."""

    def __init__(
        self,
        directory: str,
        run_id: str,
        schema: Any,
        every: int,
        seconds: float,
        policy: RetryPolicy | None = None,
        label_prefix: str = "",
    ) -> None:
        super().__init__()
        self.directory, self.run_id, self.schema = directory, run_id, schema
        self.every, self.seconds, self.policy, self.label_prefix = every, seconds, policy, label_prefix

    def expand(self, sources: PCollections) -> PCollections:
        # The writers' (empty) outputs, not PDone: a PDone in the graph makes Beam skip its
        # runner-API round trip, which the Dask runner needs for side inputs.
        out = {}
        for label, rows in sources.items():
            name = self.label_prefix + label
            out[name] = rows | f"Commit-{name}" >> beam.ParDo(
                CommitRows(self.directory, self.run_id, name, self.schema, self.every, self.seconds, self.policy)
            )
        return out
