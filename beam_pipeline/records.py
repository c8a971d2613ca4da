"""Plain data that flows through the pipeline, and the output rows built from it.

Pure Python (no Beam, no TensorFlow), so the row logic is tested on its own.
"""

from __future__ import annotations

import datetime as dt
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

STAGE_MATCH = "match"
STAGE_READ = "read"
STAGE_DECODE = "decode"
STAGE_INFER = "infer"
SOURCE_MODEL = "model"  # caption_source: this image went through the model
SOURCE_SAME_CONTENT = "same_content"  # copied from a caption of byte-identical content (--skip_known_content)


@dataclass(frozen=True)
class ImageRef:
    """One input: where the image is, its id (join key for references), optional references.
    ``size_bytes`` and ``modified_ms`` (mtime in ms since the epoch) come from the listing (None
    when unknown, e.g. manifest rows); ``entry_error`` names what the entry is when it is not a
    readable regular file (``beam_pipeline.listing``), and the read stage reports it unopened."""

    uri: str
    image_id: str
    size_bytes: int | None = None
    references: tuple[str, ...] | None = None
    modified_ms: int | None = None
    entry_error: str | None = None


@dataclass(frozen=True, eq=False)
class ImageRecord:
    """A decoded image ready for the encoder."""

    ref: ImageRef
    pixels: np.ndarray
    width: int
    height: int
    sha256: str | None = None  # hex SHA-256 of the bytes read (the image_sha256 column)


def image_id_from_uri(uri: str) -> str:
    """Default image id: the file name (Flickr8k references are keyed that way)."""
    return posixpath.basename(uri.rstrip("/"))


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def source_columns(ref: ImageRef | None) -> dict[str, Any]:
    """``source_size`` and ``source_mtime`` of a row: the input as listed when it was processed
    (null when unknown). ``--resume`` compares them with the next listing to find changed inputs."""
    size = None if ref is None else ref.size_bytes
    mtime = (
        None if ref is None or ref.modified_ms is None else dt.datetime.fromtimestamp(ref.modified_ms / 1000, dt.UTC)
    )
    return {"source_size": size, "source_mtime": mtime}


def error_row(
    uri: str,
    image_id: str | None,
    stage: str,
    error_type: str,
    message: str,
    image_sha256: str | None = None,
    source: ImageRef | None = None,
) -> dict[str, Any]:
    """An ``errors/*.parquet`` row (schema: beam_pipeline.schemas.ERROR_SCHEMA); ``image_sha256``
    is null when no bytes were read (no match, missing file, too large); ``source``: the input's
    listing (size, mtime), when there is one."""
    return {
        "image_uri": uri,
        "image_id": image_id,
        "stage": stage,
        "error_type": error_type,
        "message": message[:2000],
        "processed_at": now_utc(),
        "image_sha256": image_sha256,
        **source_columns(source),
    }


def exception_row(ref: ImageRef, stage: str, exc: BaseException, image_sha256: str | None = None) -> dict[str, Any]:
    return error_row(ref.uri, ref.image_id, stage, type(exc).__name__, str(exc) or repr(exc), image_sha256, ref)


def caption_row(
    record: ImageRecord,
    caption: str,
    score: float,
    decode: str,
    model_id: str,
    encoder: str,
    embedding: np.ndarray | None = None,
) -> dict[str, Any]:
    """A ``captions/*.parquet`` row; references and BLEU are filled in by ``with_references``."""
    row = {
        "image_uri": record.ref.uri,
        "image_id": record.ref.image_id,
        "caption": caption,
        "score": float(score),
        "decode": decode,
        "model_id": model_id,
        "encoder": encoder,
        "width": int(record.width),
        "height": int(record.height),
        "processed_at": now_utc(),
        "references": None,
        "bleu1": None,
        "bleu2": None,
        "bleu3": None,
        "bleu4": None,
        "image_sha256": record.sha256,
        "caption_source": SOURCE_MODEL,
        **source_columns(record.ref),
    }
    if record.ref.references is not None:
        row["references"] = list(record.ref.references)
    if embedding is not None:
        row["embedding"] = [float(x) for x in np.asarray(embedding, np.float32)]
    return row


def with_reference_captions(ref: ImageRef, captions: Sequence[str]) -> ImageRef:
    """The ImageRef with reference captions from a references file (they replace a manifest's);
    unchanged when the file has none for its image id."""
    from dataclasses import replace

    return replace(ref, references=tuple(captions)) if captions else ref


def same_content_row(record: ImageRecord, earlier: dict[str, Any]) -> dict[str, Any]:
    """A caption row for ``record`` copied from ``earlier``, a caption of byte-identical content
    (``--skip_known_content``): its own URI, id, size and references; the earlier caption."""
    row = caption_row(
        record,
        earlier["caption"],
        earlier["score"],
        earlier["decode"],
        earlier["model_id"],
        earlier["encoder"],
        earlier.get("embedding"),
    )
    row["caption_source"] = SOURCE_SAME_CONTENT
    return row


def with_references(row: dict[str, Any], references: Sequence[str] | None) -> dict[str, Any]:
    """Attach reference captions and smoothed sentence BLEU-1..4 to a caption row."""
    from model.bleu import bleu_tokens, sentence_bleu_scores

    refs = list(references) if references else (row.get("references") or [])
    row = dict(row)
    if not refs:
        return row
    row["references"] = refs
    scores = sentence_bleu_scores(bleu_tokens(row["caption"]), [bleu_tokens(r) for r in refs])
    row.update(scores)
    return row


def bleu_pair(row: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(hypothesis tokens, reference token lists) for corpus BLEU."""
    from model.bleu import bleu_tokens

    return bleu_tokens(row["caption"]), [bleu_tokens(r) for r in row["references"]]


def parse_references_column(value: Any) -> tuple[str, ...] | None:
    """A manifest's reference cell: a list of captions, one caption, or captions split by ``|``."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        refs = tuple(str(v) for v in value if v)
    else:
        refs = tuple(part.strip() for part in str(value).split("|") if part.strip())
    return refs or None
