"""Pure parts of issue 16 (no Beam pipeline, no TensorFlow, no pyiceberg): content-hash columns
on rows, copies for byte-identical content, table names, conforming older files to the table."""
from __future__ import annotations

import datetime as dt
import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_pipeline.lake_table import _conform, table_names
from beam_pipeline.preflight import PreflightError
from beam_pipeline.records import (ImageRecord, ImageRef, caption_row, error_row, exception_row,
                                   same_content_row)
from beam_pipeline.same_content import complete, known_columns
from beam_pipeline.schemas import ERROR_SCHEMA, caption_schema


def _record(uri: str, sha: str | None, refs: tuple[str, ...] | None = None) -> ImageRecord:
    return ImageRecord(ImageRef(uri, uri.rsplit("/", 1)[-1], 10, refs), np.zeros((2, 2, 3), np.uint8), 30, 20, sha)


def test_rows_carry_the_content_hash_and_fit_the_schemas():
    sha = hashlib.sha256(b"bytes").hexdigest()
    row = caption_row(_record("/x/a.jpg", sha), "a dog", -0.5, "greedy", "m1", "xception")
    assert row["image_sha256"] == sha and row["caption_source"] == "model"
    pa.Table.from_pylist([row], schema=caption_schema())  # every column has a place in the schema
    assert set(row) == set(caption_schema().names)
    assert error_row("/x/missing.jpg", "missing.jpg", "read", "FileNotFound", "gone")["image_sha256"] is None
    err = exception_row(ImageRef("/x/b.jpg", "b.jpg"), "infer", RuntimeError("boom"), sha)
    assert err["image_sha256"] == sha and set(err) == set(ERROR_SCHEMA.names)
    pa.Table.from_pylist([err], schema=ERROR_SCHEMA)


def test_same_content_row_copies_the_caption_but_keeps_its_own_identity():
    earlier = {"image_sha256": "ab", "caption": "a dog runs", "score": -0.25, "decode": "beam(k=3)",
               "model_id": "m1", "encoder": "xception", "embedding": [0.5, 1.5], "image_uri": "/old/a.jpg"}
    row = same_content_row(_record("/new/copy.jpg", "ab", ("a dog",)), earlier)
    assert row["image_uri"] == "/new/copy.jpg" and row["image_id"] == "copy.jpg"
    assert (row["width"], row["height"], row["references"]) == (30, 20, ["a dog"])
    assert (row["caption"], row["score"], row["decode"], row["model_id"]) == ("a dog runs", -0.25, "beam(k=3)", "m1")
    assert row["caption_source"] == "same_content" and row["embedding"] == [0.5, 1.5]
    assert "embedding" not in same_content_row(_record("/new/c.jpg", "ab"), {**earlier, "embedding": None})


@pytest.mark.parametrize("bad", ["captions", ".captions", "lake.", "a..b", ""])
def test_table_names_need_a_namespace(bad):
    with pytest.raises(PreflightError, match="NAMESPACE.TABLE"):
        table_names(bad)


def test_table_names():
    assert table_names("lake.captions") == ("lake.captions", "lake.captions_errors")
    assert table_names("db.sub.t") == ("db.sub.t", "db.sub.t_errors")


def test_conform_fills_columns_an_older_file_lacks():
    target = caption_schema(emit_embeddings=True)
    old_schema = pa.schema([f for f in caption_schema() if f.name not in ("image_sha256", "caption_source")])
    row = {"image_uri": "/a.jpg", "image_id": "a.jpg", "caption": "c", "score": -1.0, "decode": "g",
           "model_id": "m", "encoder": "e", "width": 1, "height": 2,
           "processed_at": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)}
    conformed = _conform(pa.Table.from_pylist([row], schema=old_schema), target)
    assert conformed.schema == target
    (out,) = conformed.to_pylist()
    assert out["image_sha256"] is None and out["embedding"] is None and out["caption"] == "c"


def test_older_files_give_null_columns_and_incomplete_rows_are_not_copied_from(tmp_path):
    from beam_pipeline.output_files import read_rows

    new, old = tmp_path / "new.parquet", tmp_path / "old.parquet"
    row = {"image_uri": "/a.jpg", "image_id": "a.jpg", "caption": "c", "score": -1.0, "decode": "g",
           "model_id": "m", "encoder": "e", "width": 1, "height": 2, "image_sha256": "f" * 64,
           "processed_at": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)}
    pq.write_table(pa.Table.from_pylist([row], schema=caption_schema()), new)
    old_schema = pa.schema([f for f in caption_schema() if f.name != "image_sha256"])
    pq.write_table(pa.Table.from_pylist([row], schema=old_schema), old)
    columns = known_columns(False)
    (from_new,), (from_old,) = list(read_rows(str(new), columns)), list(read_rows(str(old), columns))
    assert sorted(from_new) == sorted(from_old) == sorted(columns)
    assert from_old["image_sha256"] is None and from_new["image_sha256"] == "f" * 64
    assert complete(from_new, columns) and not complete(from_old, columns)
    (with_embedding,) = read_rows(str(new), known_columns(True))
    assert not complete(with_embedding, known_columns(True))  # no embedding column: not a source of copies
