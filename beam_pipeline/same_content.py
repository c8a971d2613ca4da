"""``--skip_known_content``: caption each distinct content (SHA-256 of the bytes) once.

After reading, records are grouped by ``image_sha256`` together with earlier caption rows of the
same model (OUTPUT's caption Parquet files, the Iceberg table). Per hash:

* an earlier caption exists -> every record gets a copy of it (``caption_source`` = ``same_content``);
* else the first record (the *leader*) goes to the model and the others wait (*followers*); after
  captioning, a second grouping by hash copies the leader's caption to them. A leader that failed
  leaves its followers an error row each, so inputs still equal captions plus errors.

The two groupings are shuffles, so the default pipeline (flag off) never pays for them. Like
every DoFn of the pipeline these emit one output; followers and copies ride in it as wrappers
and are split off with single-output steps (see ``beam_pipeline.outcomes``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from beam_pipeline.metrics import NAMESPACE
from beam_pipeline.outcomes import Failed, PCollections, failed
from beam_pipeline.output_files import read_rows
from beam_pipeline.records import STAGE_INFER, ImageRecord, error_row, same_content_row

KNOWN_COLUMNS = ("image_sha256", "caption", "score", "decode", "model_id", "encoder")


def known_columns(emit_embeddings: bool) -> list[str]:
    """Columns of an earlier caption row that a copy needs (the embedding too when asked for)."""
    return list(KNOWN_COLUMNS) + (["embedding"] if emit_embeddings else [])


def complete(row: dict[str, Any], columns: list[str]) -> bool:
    """True when an earlier caption row has every column a copy needs (rows of files written
    before the image_sha256 column, or without embeddings, cannot be copied from)."""
    return all(row.get(c) is not None for c in columns)


@dataclass(frozen=True)
class Follower:
    """A record waiting for the caption of the leader with the same content."""

    sha256: str
    record: ImageRecord


@dataclass(frozen=True)
class Copied:
    """A caption row copied from an earlier caption of the same content."""

    row: dict[str, Any]


class SplitByContent(beam.DoFn):
    """(sha, {"records", "known"}) -> leaders, ``Follower``s and ``Copied`` known captions."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.same_content = Metrics.counter(NAMESPACE, "images_same_content")

    def process(self, element: tuple[str, dict[str, list]]) -> Iterator[Any]:
        sha, groups = element
        records: list[ImageRecord] = list(groups["records"])
        known = [row for row in groups.get("known", []) if row.get("model_id") == self.model_id]
        if not records:
            return
        if known:
            for record in records:
                self.same_content.inc()
                yield Copied(same_content_row(record, known[0]))
            return
        yield records[0]
        for record in records[1:]:  # the pixels are not needed any more: do not shuffle them again
            yield Follower(sha, replace(record, pixels=np.empty(0, np.uint8)))


class CopyToFollowers(beam.DoFn):
    """(sha, {"rows": [leader caption], "followers": [records]}) -> copied rows, or error rows when
    the leader could not be captioned."""

    def __init__(self) -> None:
        self.same_content = Metrics.counter(NAMESPACE, "images_same_content")
        self.failed = Metrics.counter(NAMESPACE, "images_failed")

    def process(self, element: tuple[str, dict[str, list]]) -> Iterator[Any]:
        sha, groups = element
        rows, followers = list(groups["rows"]), list(groups["followers"])
        for record in followers:
            if rows:
                self.same_content.inc()
                yield same_content_row(record, rows[0])
            else:
                self.failed.inc()
                yield failed(
                    error_row(
                        record.ref.uri,
                        record.ref.image_id,
                        STAGE_INFER,
                        "SameContentFailed",
                        f"byte-identical to another input of this run (sha256 {sha}) that could not be captioned",
                        sha,
                        record.ref,
                    )
                )


class SplitBySameContent(beam.PTransform):
    """ImageRecords -> (leaders to caption, ``(sha, record)`` followers waiting for a leader,
    caption rows copied from earlier captions of the same model): one grouping by hash together
    with ``known_files``, earlier caption files and the Iceberg table's captions exported to a file
    (``lake_table.export_known_content``). The files are read by the workers: the driver holds
    their names only, never a known caption."""

    def __init__(self, model_id: str, known_files: list[str], columns: list[str]) -> None:
        super().__init__()
        self.model_id, self.known_files, self.columns = model_id, known_files, columns

    def expand(self, records: beam.PCollection) -> PCollections:
        p = records.pipeline
        groups: dict[str, Any] = {"records": records | "KeyByContent" >> beam.Map(lambda r: (r.sha256, r))}
        if self.known_files:  # read by the workers; files lacking a column give rows that are dropped
            groups["known"] = (
                p
                | "KnownFiles" >> beam.Create(self.known_files)
                | "ReadKnown" >> beam.FlatMap(read_rows, self.columns)
                | "KnownComplete" >> beam.Filter(complete, self.columns)
                | "KeyKnown" >> beam.Map(lambda row: (row["image_sha256"], row))
            )
        out = (
            groups
            | "GroupByContent" >> beam.CoGroupByKey()
            | "SplitByContent" >> beam.ParDo(SplitByContent(self.model_id))
        )
        return (
            out | "Leaders" >> beam.Filter(lambda e: isinstance(e, ImageRecord)),
            out | "Followers" >> beam.FlatMap(lambda e: [(e.sha256, e.record)] if isinstance(e, Follower) else []),
            out | "CopiedKnown" >> beam.FlatMap(lambda e: [e.row] if isinstance(e, Copied) else []),
        )


class CopyCaptionsToFollowers(beam.PTransform):
    """``{"rows": leaders' caption rows, "followers": (sha, record)}`` -> (rows copied to the
    followers, error rows of followers whose leader failed)."""

    def expand(self, inputs: PCollections) -> PCollections:
        keyed = inputs["rows"] | "KeyRowsByContent" >> beam.Map(lambda r: (r["image_sha256"], r))
        out = (
            {"rows": keyed, "followers": inputs["followers"]}
            | "GroupFollowers" >> beam.CoGroupByKey()
            | "CopyToFollowers" >> beam.ParDo(CopyToFollowers())
        )
        return (
            out | "FollowerRows" >> beam.Filter(lambda e: not isinstance(e, Failed)),
            out | "FollowerErrors" >> beam.FlatMap(lambda e: [e.row] if isinstance(e, Failed) else []),
        )
