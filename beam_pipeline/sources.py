"""Inputs: glob matching, manifest tables, image reading/decoding and reference captions.

Reading uses Beam's ``FileSystems`` (local, gs://, s3:// … whatever Beam is installed with);
every failure becomes an error row (wrapped by ``outcomes.failed``), never an exception.
"""
from __future__ import annotations

import logging
import os
import stat
from typing import Any, Iterable, Iterator

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from beam_pipeline.outcomes import failed
from beam_pipeline.records import (STAGE_DECODE, STAGE_MATCH, STAGE_READ, ImageRecord, ImageRef, error_row,
                                   exception_row, image_id_from_uri, parse_references_column)
from model.image_decoding import ImageDecodeError, decode_image
from model.storage import read_table, read_text, sha256_hex

log = logging.getLogger(__name__)
NAMESPACE = "captioning"


class MatchGlob(beam.DoFn):
    """Expand one glob into ImageRefs; a glob matching nothing is an error row, not a crash."""

    def process(self, pattern: str) -> Iterator[Any]:
        try:
            results = FileSystems.match([pattern])
            files = [m for r in results for m in r.metadata_list]
        except Exception as exc:  # noqa: BLE001 - e.g. bucket missing, permission denied
            yield failed(error_row(pattern, None, STAGE_MATCH, type(exc).__name__,
                                   f"cannot match {pattern}: {exc}"))
            return
        if not files:
            yield failed(error_row(pattern, None, STAGE_MATCH, "NoMatch",
                                   f"no file matches {pattern}"))
            return
        for meta in files:
            yield ImageRef(meta.path, image_id_from_uri(meta.path), int(meta.size_in_bytes))


class ReadManifest(beam.DoFn):
    """Rows of a manifest table -> ImageRefs (with optional ids and reference captions)."""

    def __init__(self, uri_column: str, id_column: str | None, references_column: str | None) -> None:
        self.uri_column = uri_column
        self.id_column = id_column
        self.references_column = references_column

    def process(self, manifest_uri: str) -> Iterator[Any]:
        table = read_table(manifest_uri)
        wanted = [c for c in (self.uri_column, self.id_column, self.references_column) if c]
        missing = [c for c in wanted if c not in table.column_names]
        if missing:
            raise ValueError(f"manifest {manifest_uri} has no column(s) {missing}; it has {table.column_names}")
        for batch in table.select(wanted).to_batches(max_chunksize=10_000):
            for row in batch.to_pylist():
                uri = row[self.uri_column]
                if not uri:
                    yield failed(error_row(f"{manifest_uri}#<empty>", None, STAGE_MATCH,
                                           "EmptyUri", "manifest row has an empty image URI"))
                    continue
                uri = str(uri)
                image_id = str(row[self.id_column]) if self.id_column and row[self.id_column] is not None \
                    else image_id_from_uri(uri)
                refs = parse_references_column(row[self.references_column]) if self.references_column else None
                yield ImageRef(uri, image_id, None, refs)


class NotARegularFile(OSError):
    """A local input that is a FIFO, socket or device (a glob matches those too)."""


def _refuse_special_local_file(uri: str) -> None:
    """open() on a FIFO blocks until a writer appears (the job would hang forever) and a device
    such as /dev/zero never ends: refuse local non-regular files before opening them."""
    if "://" in uri and not uri.startswith("file://"):
        return
    try:
        mode = os.stat(uri[len("file://"):] if uri.startswith("file://") else uri).st_mode
    except OSError:
        return  # missing / not permitted: the open below reports it
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise NotARegularFile(f"{uri} is not a regular file (a FIFO, socket or device); not opened")


def _read_limited(uri: str, max_bytes: int) -> bytes:
    _refuse_special_local_file(uri)
    with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        data = f.read(max_bytes + 1)
    return data


def _read_error_type(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, NotARegularFile):
        return "NotARegularFile"
    if isinstance(exc, FileNotFoundError) or "No such file" in text or "Not Found" in text or "NoSuchKey" in text \
            or "404" in text:
        return "FileNotFound"
    if isinstance(exc, PermissionError) or "Permission denied" in text or "AccessDenied" in text or "403" in text:
        return "PermissionDenied"
    if isinstance(exc, IsADirectoryError):
        return "IsADirectory"
    return type(exc).__name__


class ReadAndDecode(beam.DoFn):
    """ImageRef -> ImageRecord (RGB uint8 at the model's input size) or an error row."""

    def __init__(self, image_size: tuple[int, int], max_bytes: int, max_pixels: int) -> None:
        self.image_size = tuple(image_size)
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.read_counter = Metrics.counter(NAMESPACE, "images_read")
        self.failed_counter = Metrics.counter(NAMESPACE, "images_failed")
        self.bytes_counter = Metrics.counter(NAMESPACE, "bytes_read")

    def process(self, ref: ImageRef) -> Iterator[Any]:
        if ref.size_bytes is not None and ref.size_bytes > self.max_bytes:
            self.failed_counter.inc()
            yield failed(error_row(
                ref.uri, ref.image_id, STAGE_READ, "TooLarge",
                f"file has {ref.size_bytes} bytes, over the limit of {self.max_bytes} (--max_image_bytes)"))
            return
        try:
            data = _read_limited(ref.uri, self.max_bytes)
        except Exception as exc:  # noqa: BLE001 - every storage failure is an error row
            self.failed_counter.inc()
            yield failed(error_row(ref.uri, ref.image_id, STAGE_READ,
                                   _read_error_type(exc), f"cannot read: {exc}"))
            return
        sha256 = sha256_hex(data)  # the image_sha256 column of caption and error rows
        self.read_counter.inc()
        self.bytes_counter.inc(len(data))
        try:
            decoded = decode_image(data, self.image_size, max_bytes=self.max_bytes, max_pixels=self.max_pixels)
        except ImageDecodeError as exc:
            self.failed_counter.inc()
            yield failed(error_row(ref.uri, ref.image_id, STAGE_DECODE,
                                   exc.error_type, exc.message, sha256))
            return
        except Exception as exc:  # noqa: BLE001 - defensive: decode_image promises not to, but never crash
            self.failed_counter.inc()
            yield failed(exception_row(ref, STAGE_DECODE, exc, sha256))
            return
        yield ImageRecord(ref, decoded.pixels, decoded.width, decoded.height, sha256)


def read_references(uri: str, id_column: str = "image_id", caption_column: str = "caption") -> Iterable[tuple[str, list[str]]]:
    """(image id, [captions]) from a Flickr8k token file or a table of image id + caption rows."""
    lower = uri.lower()
    if lower.endswith(".txt") or lower.endswith(".token"):
        from training.datasets import parse_token_file

        return list(parse_token_file(read_text(uri)).items())
    table = read_table(uri)
    missing = [c for c in (id_column, caption_column) if c not in table.column_names]
    if missing:
        raise ValueError(f"references table {uri} has no column(s) {missing}; it has {table.column_names}")
    grouped: dict[str, list[str]] = {}
    for row in table.select([id_column, caption_column]).to_pylist():
        if row[id_column] is None or not row[caption_column]:
            continue
        grouped.setdefault(str(row[id_column]), []).append(str(row[caption_column]))
    return list(grouped.items())
