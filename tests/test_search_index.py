"""The LanceDB caption index (``--search_index``) and ``python -m caption_index``: real pipeline runs
with the small test model on real Flickr8k photos, a real LanceDB in temporary folders."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("lancedb", reason="search index tests need lancedb (pip install -e '.[test]')")

from beam_pipeline.preflight import PreflightError
from beam_pipeline.schemas import caption_schema
from beam_pipeline.search_index import open_table, prepare_index, sync_output_to_index
from caption_index.cli import main as index_main
from tests.pipeline_helpers import flickr8k_photos, read_rows, run_pipeline

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def _copy(photos: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for photo in photos:
        shutil.copyfile(photo, folder / photo.name)
    return folder


def _index_rows(uri: str) -> list[dict]:
    return open_table(uri).search().limit(None).to_arrow().to_pylist()


def _json_lines(capsys: pytest.CaptureFixture) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


def test_two_resume_runs_index_each_image_once_and_are_searchable(tmp_path, flickr8k, tiny_artifact, capsys):
    images = _copy(flickr8k_photos(flickr8k, 0, 5), tmp_path / "images")
    out, index = tmp_path / "out", str(tmp_path / "index")
    base = ["--input", f"{images}/*.jpg", "--output", str(out), "--model", tiny_artifact, "--search_index", index]
    first = run_pipeline(base)
    assert first["search_index"]["upserted"] == 5 and first["search_index"]["rows"] == 5
    rows = _index_rows(index)
    assert sorted(r["image_uri"] for r in rows) == sorted(r["image_uri"] for r in read_rows(out, "captions"))
    word = rows[0]["caption"].split()[-1]  # a word the index must find (last words are rarely stop words)
    assert index_main(["search", index, word, "--json", "--k", "3"]) == 0
    (line,) = _json_lines(capsys)
    assert line["query"] == word and 1 <= len(line["results"]) <= 3
    assert all(word in hit["caption"] for hit in line["results"])
    assert [h["score"] for h in line["results"]] == sorted((h["score"] for h in line["results"]), reverse=True)

    _copy(flickr8k_photos(flickr8k, 5, 4), images)  # four new photos beside the five done ones
    second = run_pipeline(base + ["--resume"])
    assert second["search_index"]["upserted"] == 4 and second["search_index"]["rows"] == 9
    uris = [r["image_uri"] for r in _index_rows(index)]
    assert len(uris) == len(set(uris)) == 9
    assert set(uris) == {r["image_uri"] for r in read_rows(out, "captions")}
    by_uri = {r["image_uri"]: r for r in read_rows(out, "captions")}
    for row in _index_rows(index):  # the index holds the committed rows' values
        assert row["caption"] == by_uri[row["image_uri"]]["caption"]
        assert row["image_sha256"] == by_uri[row["image_uri"]]["image_sha256"]
        assert row["flags"] is None and "embedding" not in row
    queries = tmp_path / "queries.txt"
    queries.write_text(f"{word}\n\nnothing-like-this-word\n")
    assert index_main(["search", index, "--queries", str(queries)]) == 0
    lines = _json_lines(capsys)
    assert [line["query"] for line in lines] == [word, "nothing-like-this-word"]
    assert lines[0]["results"] and lines[1]["results"] == []


def _caption_file(out: Path, name: str, rows: list[tuple[str, str, int]]) -> None:
    """A committed caption file with (uri, caption, seconds) rows."""
    schema = caption_schema()
    full = [
        {
            "image_uri": uri,
            "image_id": uri,
            "caption": caption,
            "score": -1.0,
            "decode": "greedy",
            "model_id": "m1",
            "encoder": "tiny",
            "width": 10,
            "height": 10,
            "references": None,
            "processed_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=s),
            "bleu1": None,
            "bleu2": None,
            "bleu3": None,
            "bleu4": None,
            "image_sha256": None,
            "caption_source": "model",
        }
        for uri, caption, s in rows
    ]
    (out / "captions").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(full, schema=schema), out / "captions" / name)


def test_the_newest_row_per_uri_is_what_the_index_holds(tmp_path):
    out, index = tmp_path / "out", str(tmp_path / "index")
    _caption_file(out, "part-a.parquet", [("u1", "old cat", 1), ("u2", "a dog", 1), ("u1", "older cat", 0)])
    _caption_file(out, "part-b.parquet", [("u1", "new cat", 5)])
    assert sync_output_to_index(index, str(out))["upserted"] == 2
    assert {r["image_uri"]: r["caption"] for r in _index_rows(index)} == {"u1": "new cat", "u2": "a dog"}
    _caption_file(out, "part-c.parquet", [("u1", "stale cat", 3), ("u2", "a newer dog", 9)])
    assert sync_output_to_index(index, str(out))["upserted"] == 1  # only u2 is newer than the index
    assert {r["image_uri"]: r["caption"] for r in _index_rows(index)} == {"u1": "new cat", "u2": "a newer dog"}
    assert sync_output_to_index(index, str(out))["upserted"] == 0
    assert len(_index_rows(index)) == 2
    open_table(index).drop_index("caption_idx")  # as if a sync had stopped before indexing
    assert sync_output_to_index(index, str(out))["upserted"] == 0
    assert [ix.columns for ix in open_table(index).list_indices()] == [["caption"]]


def _error_file(out: Path, name: str, rows: list[tuple[str, int]]) -> None:
    """A committed error file with (uri, seconds) rows."""
    from beam_pipeline.records import error_row
    from beam_pipeline.schemas import ERROR_SCHEMA

    full = [
        error_row(uri, uri, "decode", "NotAnImage", "overwritten by a text file")
        | {"processed_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=s)}
        for uri, s in rows
    ]
    (out / "errors").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(full, schema=ERROR_SCHEMA), out / "errors" / name)


def test_a_uri_whose_latest_row_is_an_error_leaves_the_index(tmp_path):
    """OUTPUT's latest-row rule over captions *and* errors: an object overwritten by a corrupt file
    and run again (--resume) has an error as its latest row, so its old caption is deleted from the
    index; an older error row does not hide a newer caption; a later caption brings it back."""
    out, index = tmp_path / "out", str(tmp_path / "index")
    _caption_file(out, "part-a.parquet", [("u1", "a cat", 1), ("u2", "a dog", 1), ("u3", "a bird", 5)])
    _error_file(out, "part-e0.parquet", [("u3", 2)])  # older than u3's caption: u3 stays
    assert sync_output_to_index(index, str(out))["upserted"] == 3
    _error_file(out, "part-e1.parquet", [("u1", 4)])  # u1 was overwritten by a file that is not an image
    result = sync_output_to_index(index, str(out))
    assert (result["upserted"], result["deleted"], result["rows"]) == (0, 1, 2)
    assert {r["image_uri"]: r["caption"] for r in _index_rows(index)} == {"u2": "a dog", "u3": "a bird"}
    assert sync_output_to_index(index, str(out))["deleted"] == 0  # nothing left to delete
    assert [ix.columns for ix in open_table(index).list_indices()] == [["caption"]]
    _caption_file(out, "part-b.parquet", [("u1", "a new cat", 9)])  # fixed and captioned again
    assert sync_output_to_index(index, str(out))["upserted"] == 1
    assert {r["image_uri"]: r["caption"] for r in _index_rows(index)} == {
        "u1": "a new cat",
        "u2": "a dog",
        "u3": "a bird",
    }
    fresh = str(tmp_path / "fresh")  # a new index built from the same OUTPUT agrees
    _error_file(out, "part-e2.parquet", [("u2", 10)])
    assert sync_output_to_index(fresh, str(out))["upserted"] == 2
    assert sorted(r["image_uri"] for r in _index_rows(fresh)) == ["u1", "u3"]


def test_like_finds_a_byte_identical_copy_first(tmp_path, flickr8k, tiny_artifact, capsys):
    photos = flickr8k_photos(flickr8k, 10, 6)
    images = _copy(photos, tmp_path / "images")
    out, index = tmp_path / "out", str(tmp_path / "index")
    summary = run_pipeline(
        [
            "--input",
            f"{images}/*.jpg",
            "--output",
            str(out),
            "--model",
            tiny_artifact,
            "--search_index",
            index,
            "--emit_embeddings",
        ]
    )
    assert summary["search_index"]["rows"] == 6 and summary["search_index"]["indexes"]["vector"] is False
    query = tmp_path / "elsewhere" / "query.jpg"  # a copy under another name, not in the index
    query.parent.mkdir()
    shutil.copyfile(photos[3], query)
    html = tmp_path / "like.html"
    assert (
        index_main(
            ["search", index, "--like", str(query), "--model", tiny_artifact, "--k", "4", "--json", "--html", str(html)]
        )
        == 0
    )
    (line,) = _json_lines(capsys)
    hits = line["results"]
    assert len(hits) == 4 and hits[0]["image_uri"] == str(images / photos[3].name) and hits[0]["score"] == 1.0
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    page = html.read_text()
    assert page.count("data:image/jpeg;base64,") == 4 and "<script" not in page

    # The embedding alone (no hash match) also puts the same photo first, at distance ~0.
    from caption_index.query import embed_image, like_search, model_id_of

    table = open_table(index)
    vector, model_id = embed_image(query.read_bytes(), tiny_artifact)
    assert model_id == model_id_of(table)
    nearest = like_search(table, b"not these bytes", vector, k=3)
    assert nearest[0].image_uri == str(images / photos[3].name) and nearest[0].score > 0.999
    assert nearest[1].score < nearest[0].score

    from tests.factories import make_tiny_artifact

    other = str(tmp_path / "other-model")
    make_tiny_artifact(other, seed=1)
    assert index_main(["search", index, "--like", str(query), "--model", other]) == 2
    assert "cannot be compared" in capsys.readouterr().err


def test_an_index_of_another_model_and_an_unwritable_index_are_refused(tmp_path, flickr8k, tiny_artifact, capsys):
    images = _copy(flickr8k_photos(flickr8k, 20, 2), tmp_path / "images")
    index = str(tmp_path / "index")
    run_pipeline(
        [
            "--input",
            f"{images}/*.jpg",
            "--output",
            str(tmp_path / "out"),
            "--model",
            tiny_artifact,
            "--search_index",
            index,
        ]
    )
    from run_pipeline import main as pipeline_main
    from tests.factories import make_tiny_artifact

    other = str(tmp_path / "other-model")
    make_tiny_artifact(other, seed=1)
    status = pipeline_main(
        [
            "--input",
            f"{images}/*.jpg",
            "--output",
            str(tmp_path / "out-other"),
            "--model",
            other,
            "--search_index",
            index,
            "--progress_seconds",
            "0",
        ]
    )
    assert status == 2 and "holds captions of model" in capsys.readouterr().err
    assert read_rows(tmp_path / "out-other", "captions") == []
    with pytest.raises(PreflightError, match="holds captions of model"):
        prepare_index(index, "another-model", emit_embeddings=False)
    with pytest.raises(PreflightError, match="built without --emit_embeddings"):
        prepare_index(index, _index_rows(index)[0]["model_id"], emit_embeddings=True)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = tmp_path / "out2"
    status = pipeline_main(
        [
            "--input",
            f"{images}/*.jpg",
            "--output",
            str(out),
            "--model",
            tiny_artifact,
            "--search_index",
            str(blocker / "index"),
            "--progress_seconds",
            "0",
        ]
    )
    assert status == 2 and "is not writable" in capsys.readouterr().err
    assert read_rows(out, "captions") == [] and read_rows(out, "errors") == []  # refused before reading


def test_the_search_command_is_strict_about_its_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        index_main(["search", str(tmp_path), "dog", "--top", "3"])
    assert exc.value.code == 2 and "unrecognized arguments: --top" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        index_main(["search", str(tmp_path), "dog", "--like", "x.jpg"])
    assert exc.value.code == 2
    assert index_main(["search", str(tmp_path / "nothing"), "dog"]) == 2
    assert "no caption index" in capsys.readouterr().err


def test_bulk_files_parse_as_ndjson_and_round_trip_to_the_rows(tmp_path, capsys):
    import hashlib

    out, index = tmp_path / "out", str(tmp_path / "index")
    rows = [
        {
            "image_uri": f"s3://bucket/img-{i:02d}.jpg",
            "image_id": f"img-{i:02d}.jpg",
            "caption": f"a dog number {i}",
            "score": -0.5 - i / 100,
            "decode": "greedy",
            "model_id": "m1",
            "encoder": "tiny",
            "width": 10 + i,
            "height": 20,
            "references": None,
            "bleu1": None,
            "bleu2": None,
            "bleu3": None,
            "bleu4": None,
            "processed_at": dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC),
            "image_sha256": hashlib.sha256(bytes([i])).hexdigest(),
            "caption_source": "model",
            "embedding": [float(i), 0.5, -1.0],
            "flags": ["animal"] if i % 3 == 0 else [],
        }
        for i in range(30)
    ]
    (out / "captions").mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist(rows, schema=caption_schema(emit_embeddings=True, flags=True)),
        out / "captions" / "part-x.parquet",
    )
    sync_output_to_index(index, str(out))
    bulk = tmp_path / "bulk"
    assert index_main(["export", index, "--format", "bulk-ndjson", str(bulk), "--max_mb", "0.002"]) == 0
    files = sorted(bulk.glob("bulk-*.ndjson"))
    assert capsys.readouterr().out.split() == [str(f) for f in files] and len(files) > 3
    docs = {}
    for f in files:
        data = f.read_bytes()
        assert len(data) <= 2000 and data.endswith(b"\n")
        lines = [json.loads(line) for line in data.decode().splitlines()]  # every line is one JSON value
        assert len(lines) % 2 == 0
        for action, doc in zip(lines[::2], lines[1::2]):
            assert action == {
                "index": {"_index": "captions", "_id": hashlib.sha1(doc["image_uri"].encode()).hexdigest()}
            }
            docs[doc["image_uri"]] = doc
    assert len(docs) == 30
    for row in rows:
        doc = docs[row["image_uri"]]
        assert doc["processed_at"] == "2026-01-02T03:04:05.678Z"
        assert doc["embedding"] == row["embedding"] and doc["flags"] == row["flags"]
        assert {k: doc[k] for k in ("caption", "score", "image_id", "image_sha256", "width", "height", "model_id")} == {
            k: row[k] for k in ("caption", "score", "image_id", "image_sha256", "width", "height", "model_id")
        }
    assert index_main(["export", index, "--format", "bulk-ndjson", str(bulk)]) == 2  # never mixed with old files
    with pytest.raises(SystemExit) as exc:
        index_main(["export", index, str(bulk)])  # --format is required
    assert exc.value.code == 2


def test_a_big_enough_index_gets_an_ivf_pq_vector_index_and_still_finds_the_same_vector_first(tmp_path, monkeypatch):
    import numpy as np

    from beam_pipeline import search_index
    from caption_index.query import like_search

    monkeypatch.setattr(search_index, "VECTOR_INDEX_MIN_ROWS", 300)
    assert search_index.ivf_partitions(400) == 1 and search_index.ivf_partitions(100_000) == 316
    rng = np.random.default_rng(0)
    vectors = rng.random((400, 32), dtype=np.float32)
    out, index = tmp_path / "out", str(tmp_path / "index")
    (out / "captions").mkdir(parents=True)
    schema = caption_schema(emit_embeddings=True)
    for part, rows in (("a", range(0, 200)), ("b", range(200, 400))):  # two syncs: 200 rows (exact), then 400
        table = pa.Table.from_pylist(
            [
                {
                    "image_uri": f"u{i}",
                    "image_id": f"u{i}",
                    "caption": f"photo {i}",
                    "score": -1.0,
                    "decode": "greedy",
                    "model_id": "m",
                    "encoder": "e",
                    "width": 1,
                    "height": 1,
                    "references": None,
                    "bleu1": None,
                    "bleu2": None,
                    "bleu3": None,
                    "bleu4": None,
                    "image_sha256": None,
                    "caption_source": "model",
                    "processed_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                    "embedding": vectors[i].tolist(),
                }
                for i in rows
            ],
            schema=schema,
        )
        pq.write_table(table, out / "captions" / f"part-{part}.parquet")
        result = sync_output_to_index(index, str(out))
        assert result["indexes"]["vector"] is (part == "b")
    assert result["rows"] == 400
    assert any(ix.index_type.lower().startswith("ivf") for ix in open_table(index).list_indices())
    table = open_table(index)
    for i in (3, 250, 399):
        hits = like_search(table, b"query bytes", vectors[i], k=5)
        assert hits[0].image_uri == f"u{i}" and hits[0].score > 0.999  # re-ranked on the full vectors


def test_an_index_on_s3_is_written_searched_and_an_unwritable_bucket_refused(
    tmp_path, flickr8k, tiny_artifact, monkeypatch, capsys
):
    """LanceDB on a moto S3 server on 127.0.0.1 (the AWS environment of tests/s3_server.py)."""
    pytest.importorskip("moto.server")
    import s3fs

    from run_pipeline import main as pipeline_main
    from tests.test_s3 import LoopbackOnly, point_aws_at, start_moto, stop_process

    proc, port = start_moto(tmp_path / "moto.log")
    guard = LoopbackOnly()
    try:
        client = point_aws_at(monkeypatch, f"http://127.0.0.1:{port}", tmp_path, guard, proc)
        monkeypatch.setenv("AWS_ALLOW_HTTP", "true")  # moto speaks http; LanceDB refuses http unless told
        client.create_bucket(Bucket="caption-index")
        images = _copy(flickr8k_photos(flickr8k, 40, 3), tmp_path / "images")
        uri = "s3://caption-index/lake/index"
        common = ["--input", f"{images}/*.jpg", "--model", tiny_artifact]
        summary = run_pipeline(common + ["--output", str(tmp_path / "out"), "--search_index", uri])
        assert summary["search_index"]["rows"] == 3
        word = _index_rows(uri)[0]["caption"].split()[-1]
        assert index_main(["search", uri, word, "--json"]) == 0
        (line,) = _json_lines(capsys)
        assert line["results"] and all(word in h["caption"] for h in line["results"])
        status = pipeline_main(
            common
            + [
                "--output",
                str(tmp_path / "out2"),
                "--search_index",
                "s3://no-such-bucket/index",
                "--progress_seconds",
                "0",
            ]
        )
        assert status == 2 and "is not writable" in capsys.readouterr().err
        guard.assert_only_to(port)  # Python's clients; LanceDB's own (Rust) get only the AWS_* endpoint
    finally:
        s3fs.S3FileSystem.clear_instance_cache()  # no cached client may outlive the server
        stop_process(proc)
