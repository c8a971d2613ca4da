"""Arrow schemas of the pipeline outputs: the contract with DuckDB / Spark / pyarrow readers.

``captions/*.parquet`` holds one row per captioned image, ``errors/*.parquet`` one row per input
that could not be captioned; see docs/OUTPUTS.md "Output schemas".
"""

from __future__ import annotations

import pyarrow as pa

EMBEDDING_COLUMN = "embedding"
FLAGS_COLUMN = "flags"  # watch-list categories (--watchlist, beam_pipeline.moderation)

# The input as listed when its row was made (null when unknown: manifests, older files): --resume
# captions an input again when the listing now says otherwise (beam_pipeline.changes).
SOURCE_FIELDS = [
    pa.field("source_size", pa.int64(), nullable=True),
    pa.field("source_mtime", pa.timestamp("ms", tz="UTC"), nullable=True),
]

CAPTION_FIELDS = [
    pa.field("image_uri", pa.string(), nullable=False),
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("caption", pa.string(), nullable=False),
    pa.field("score", pa.float64(), nullable=False),  # mean token log-probability, <= 0
    pa.field("decode", pa.string(), nullable=False),  # e.g. "beam(k=3,alpha=0.7,max_len=34)"
    pa.field("model_id", pa.string(), nullable=False),
    pa.field("encoder", pa.string(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),  # upright size of the original image
    pa.field("height", pa.int32(), nullable=False),
    pa.field("processed_at", pa.timestamp("ms", tz="UTC"), nullable=False),
    pa.field("references", pa.list_(pa.string()), nullable=True),
    pa.field("bleu1", pa.float64(), nullable=True),
    pa.field("bleu2", pa.float64(), nullable=True),
    pa.field("bleu3", pa.float64(), nullable=True),
    pa.field("bleu4", pa.float64(), nullable=True),
    pa.field("image_sha256", pa.string(), nullable=True),  # hex SHA-256 of the bytes read
    pa.field("caption_source", pa.string(), nullable=True),  # "model", or "same_content" (--skip_known_content)
    *SOURCE_FIELDS,
]

ERROR_FIELDS = [
    pa.field("image_uri", pa.string(), nullable=False),
    pa.field("image_id", pa.string(), nullable=True),
    pa.field("stage", pa.string(), nullable=False),  # match / read / decode / infer
    pa.field("error_type", pa.string(), nullable=False),
    pa.field("message", pa.string(), nullable=False),
    pa.field("processed_at", pa.timestamp("ms", tz="UTC"), nullable=False),
    pa.field("image_sha256", pa.string(), nullable=True),  # null when no bytes were read
    *SOURCE_FIELDS,
]

ERROR_SCHEMA = pa.schema(ERROR_FIELDS)


def caption_schema(emit_embeddings: bool = False, flags: bool = False) -> pa.Schema:
    """Schema of caption rows; the embedding column exists only with ``--emit_embeddings``, the
    flags column (watch-list categories, ``beam_pipeline.moderation``) only with ``--watchlist``."""
    fields = list(CAPTION_FIELDS)
    if emit_embeddings:
        fields.append(pa.field(EMBEDDING_COLUMN, pa.list_(pa.float32()), nullable=True))
    if flags:
        fields.append(pa.field(FLAGS_COLUMN, pa.list_(pa.string()), nullable=True))
    return pa.schema(fields)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns: casts, and nulls for columns an older file lacks."""
    columns = []
    for field in schema:
        if field.name in table.column_names:
            columns.append(table.column(field.name).cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=schema)
