"""Pure parts of issue 16 (no Beam pipeline, no TensorFlow, no pyiceberg): content-hash columns
on rows, copies for byte-identical content, table names, conforming older files to the table."""

from __future__ import annotations

import datetime as dt
import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_pipeline.lake_table import table_names
from beam_pipeline.preflight import PreflightError
from beam_pipeline.records import ImageRecord, ImageRef, caption_row, error_row, exception_row, same_content_row
from beam_pipeline.same_content import complete, known_columns
from beam_pipeline.schemas import ERROR_SCHEMA, caption_schema, conform
from tests.factories import timed_caption_row


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
    earlier = {
        "image_sha256": "ab",
        "caption": "a dog runs",
        "score": -0.25,
        "decode": "beam(k=3)",
        "model_id": "m1",
        "encoder": "xception",
        "embedding": [0.5, 1.5],
        "image_uri": "/old/a.jpg",
    }
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
    row = {
        "image_uri": "/a.jpg",
        "image_id": "a.jpg",
        "caption": "c",
        "score": -1.0,
        "decode": "g",
        "model_id": "m",
        "encoder": "e",
        "width": 1,
        "height": 2,
        "processed_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    }
    conformed = conform(pa.Table.from_pylist([row], schema=old_schema), target)
    assert conformed.schema == target
    (out,) = conformed.to_pylist()
    assert out["image_sha256"] is None and out["embedding"] is None and out["caption"] == "c"


def test_older_files_give_null_columns_and_incomplete_rows_are_not_copied_from(tmp_path):
    from beam_pipeline.output_files import read_rows

    new, old = tmp_path / "new.parquet", tmp_path / "old.parquet"
    row = {
        "image_uri": "/a.jpg",
        "image_id": "a.jpg",
        "caption": "c",
        "score": -1.0,
        "decode": "g",
        "model_id": "m",
        "encoder": "e",
        "width": 1,
        "height": 2,
        "image_sha256": "f" * 64,
        "processed_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    }
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


def test_sync_plan_keeps_the_latest_row_per_uri_across_captions_and_errors(tmp_path):
    """What the Iceberg sync adds and replaces (beam_pipeline.lake_upsert.plan_bucket), on real
    Parquet files: a re-captioned URI replaces its table row, a URI whose latest row is now an
    error leaves the captions table, a URI the table already holds at that time is not added again."""
    from beam_pipeline.lake_upsert import output_keys, plan_bucket
    from beam_pipeline.output_files import epoch_ms, latest_rows

    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    t1 = t0 + dt.timedelta(hours=1)

    files = {
        "captions": [str(tmp_path / "c1.parquet"), str(tmp_path / "c2.parquet")],
        "errors": [str(tmp_path / "e1.parquet")],
    }
    pq.write_table(
        pa.Table.from_pylist(
            [timed_caption_row("a", t0, "old a"), timed_caption_row("b", t0, "b"), timed_caption_row("c", t0, "c")],
            schema=caption_schema(),
        ),
        files["captions"][0],
    )
    pq.write_table(
        pa.Table.from_pylist(
            [timed_caption_row("a", t1, "new a"), timed_caption_row("d", t1, "d")], schema=caption_schema()
        ),
        files["captions"][1],
    )
    pq.write_table(
        pa.Table.from_pylist(
            [error_row("c", "c", "decode", "TruncatedImage", "now broken") | {"processed_at": t1}], schema=ERROR_SCHEMA
        ),
        files["errors"][0],
    )
    latest = latest_rows(files)
    assert latest.get("a") == (epoch_ms(t1), "captions") and latest.get("c") == (epoch_ms(t1), "errors")
    assert latest.replaced == 2  # the old rows of a and c
    ordered = [(uri, kind) for kind, uris in files.items() for uri in uris]
    output = pa.concat_tables(
        [keys for index, (uri, kind) in enumerate(ordered) for keys in output_keys(index, uri, kind)]
    )
    held = pa.table(
        {
            "image_uri": ["a", "b", "c"],
            "processed_at": pa.array([epoch_ms(t0)] * 3, pa.int64()),
            "rank": pa.array([0, 0, 0], pa.int8()),
            "data_file": pa.array([0, 0, 1], pa.int32()),
        }
    )
    plans = plan_bucket(output, held, ["captions", "errors"])
    added = [
        pq.read_table(ordered[f][0]).slice(r, 1).to_pylist()[0]
        for f, r in zip(
            plans["captions"].adds.column("file").to_pylist(), plans["captions"].adds.column("row").to_pylist()
        )
    ]
    assert sorted((row["image_uri"], row["caption"]) for row in added) == [("a", "new a"), ("d", "d")]
    # a: a newer caption; c: its latest row is an error now (each dropped from the data file holding it)
    assert sorted(plans["captions"].drops.to_pylist(), key=str) == [
        {"data_file": 0, "image_uri": "a"},
        {"data_file": 1, "image_uri": "c"},
    ]
    assert plans["captions"].replaced == 2
    errors = plans["errors"]
    assert errors.adds.to_pylist() == [{"file": 2, "row": 0}] and errors.drops.num_rows == 0 and errors.replaced == 0


def test_latest_row_rule_ties_missing_times_and_unreadable_files(tmp_path):
    """output_files.latest_rows: the greatest processed_at wins; on a tie a caption beats an error,
    then the earlier file; a row without processed_at loses to any time; a damaged file raises,
    or is noted and left out when the caller asks."""
    from beam_pipeline.output_files import MISSING_TIME, epoch_ms, latest_rows

    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    c0, c1, c2, e1 = (str(tmp_path / n) for n in ("c0.parquet", "c1.parquet", "c2.parquet", "e1.parquet"))
    pq.write_table(pa.table({"image_uri": ["none"], "caption": ["a file without processed_at"]}), c0)
    pq.write_table(pa.Table.from_pylist([timed_caption_row("tie", t0, "first")], schema=caption_schema()), c1)
    pq.write_table(pa.Table.from_pylist([timed_caption_row("tie", t0, "second")], schema=caption_schema()), c2)
    pq.write_table(
        pa.Table.from_pylist(
            [error_row(u, u, "read", "FileNotFound", "gone") | {"processed_at": t0} for u in ("tie", "none")],
            schema=ERROR_SCHEMA,
        ),
        e1,
    )
    latest = latest_rows({"captions": [c0, c1, c2], "errors": [e1]})
    assert latest.get("tie") == (epoch_ms(t0), "captions") and latest.get("none") == (epoch_ms(t0), "errors")
    assert latest.rows_in(c1, "captions").tolist() == [0] and latest.rows_in(c2, "captions").tolist() == []
    assert latest.replaced == 3 and latest.get("elsewhere") is None
    assert latest.is_current(
        "captions", pa.array(["tie", "none"]), pa.array([epoch_ms(t0), MISSING_TIME], pa.int64())
    ).tolist() == [True, False]
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(pa.ArrowInvalid):
        latest_rows({"captions": [c1, str(broken)]})
    noted: list[str] = []
    assert latest_rows({"captions": [c1, str(broken)]}, unreadable=noted).get("tie") == (epoch_ms(t0), "captions")
    assert len(noted) == 1 and str(broken) in noted[0]
