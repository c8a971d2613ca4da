"""The pipeline on S3: a real S3-compatible server (moto's server mode, a separate process on
127.0.0.1) holds the images, the model artifact, the reference captions and the output.

Both S3 clients the project uses are pointed at it through the standard AWS environment
variables, which botocore (Beam's S3 filesystem, via boto3) and aiobotocore (fsspec's s3fs:
model artifact, references, preflight) both honour: ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``.
No ``--s3_*`` pipeline flag is needed. Every socket connect of the test process is checked to
go to 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.factories import write_jpeg
from tests.pipeline_helpers import run_pipeline, write_token_file
from tests.s3_server import LoopbackOnly, point_aws_env_at, require_s3_server, start_moto, stop_process

boto3 = require_s3_server()

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

BUCKET = "caption-test"
IMAGES = [f"img{i}.jpg" for i in range(6)]
BROKEN = "broken.jpg"
REFERENCES = {
    name: ["a dog runs on the grass", f"a man rides a bike number {i}"] for i, name in enumerate(IMAGES) if i % 2 == 0
}


def _clear_s3fs_instances() -> None:
    """fsspec caches filesystem instances (and s3fs their listings): none may outlive the server."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


def point_aws_at(mp: pytest.MonkeyPatch, endpoint: str, tmp: Path, guard: LoopbackOnly, proc: Any) -> Any:
    """Point both S3 clients (botocore, s3fs) of this process at ``endpoint`` through the AWS
    environment, install the loopback-only guard, and return a boto3 client once it answers."""
    point_aws_env_at(mp, endpoint, tmp)
    guard.install(mp)
    _clear_s3fs_instances()
    client = boto3.client("s3")
    deadline = time.monotonic() + 30
    while True:  # the port is bound before the line is printed; still, wait until it answers
        try:
            client.list_buckets()
            break
        except Exception:  # noqa: BLE001 - not answering yet
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.2)
    assert client.meta.endpoint_url == endpoint
    return client


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A running moto S3 server, the AWS environment pointing at it, and a loopback-only
    network guard; everything is undone at the end of the module."""
    tmp = tmp_path_factory.mktemp("moto")
    proc, port = start_moto(tmp / "moto.log")
    endpoint = f"http://127.0.0.1:{port}"
    guard = LoopbackOnly()
    try:
        with pytest.MonkeyPatch.context() as mp:
            client = point_aws_at(mp, endpoint, tmp, guard, proc)
            yield {"endpoint": endpoint, "port": port, "client": client, "guard": guard, "proc": proc}
            _clear_s3fs_instances()
    finally:
        stop_process(proc)
    assert proc.returncode is not None


def _upload_dir(client: Any, local: Path, prefix: str) -> None:
    for path in sorted(local.iterdir()):
        client.upload_file(str(path), BUCKET, f"{prefix}/{path.name}")


@pytest.fixture(scope="module")
def bucket(s3, tiny_artifact, tmp_path_factory) -> dict[str, Any]:
    """6 JPEGs and a text file named .jpg under images/, the tiny artifact under models/tiny/,
    a Flickr8k token file at refs.txt."""
    client = s3["client"]
    client.create_bucket(Bucket=BUCKET)
    local = tmp_path_factory.mktemp("upload")
    for i, name in enumerate(IMAGES):
        write_jpeg(local / "images" / name, size=(80 + 4 * i, 60 + 2 * i), seed=i)
    (local / "images" / BROKEN).write_text("<!DOCTYPE html><html>not an image</html>")
    _upload_dir(client, local / "images", "images")
    _upload_dir(client, Path(tiny_artifact), "models/tiny")
    client.upload_file(str(write_token_file(local / "refs.txt", REFERENCES)), BUCKET, "refs.txt")
    model_id = json.loads((Path(tiny_artifact) / "manifest.json").read_text())["model_id"]
    return {"client": client, "model_id": model_id, "artifact": Path(tiny_artifact)}


def _keys(client: Any, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _rows(client: Any, prefix: str) -> list[dict[str, Any]]:
    """All rows of the Parquet files under s3://BUCKET/PREFIX/ (downloaded with boto3)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [
        pq.read_table(io.BytesIO(client.get_object(Bucket=BUCKET, Key=key)["Body"].read()))
        for key in _keys(client, prefix + "/")
        if key.endswith(".parquet")
    ]
    return pa.concat_tables(tables).to_pylist() if tables else []


def _json(client: Any, key: str) -> dict[str, Any]:
    return json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def _args(out: str, model: str = "models/tiny", images: str = "*.jpg") -> list[str]:
    return [
        "--input",
        f"s3://{BUCKET}/images/{images}",
        "--model",
        f"s3://{BUCKET}/{model}",
        "--output",
        f"s3://{BUCKET}/{out}",
        "--references",
        f"s3://{BUCKET}/refs.txt",
        "--batch_size",
        "4",
    ]


@pytest.fixture(scope="module")
def first_run(s3, bucket) -> dict[str, Any]:
    return run_pipeline(_args("out"))


def test_pipeline_reads_model_images_references_from_s3_and_writes_parquet_there(s3, bucket, first_run):
    client, summary = bucket["client"], first_run
    captions, errors = _rows(client, "out/captions"), _rows(client, "out/errors")

    assert sorted(r["image_uri"] for r in captions) == [f"s3://{BUCKET}/images/{n}" for n in IMAGES]
    assert {r["image_id"] for r in captions} == set(IMAGES)
    assert all(r["model_id"] == bucket["model_id"] and r["caption"] for r in captions)
    with_refs = {r["image_id"]: r for r in captions if r["references"]}
    assert set(with_refs) == set(REFERENCES)
    assert all(with_refs[n]["references"] == REFERENCES[n] and 0 <= with_refs[n]["bleu4"] <= 1 for n in REFERENCES)
    (error,) = errors
    assert error["image_uri"] == f"s3://{BUCKET}/images/{BROKEN}"
    assert error["error_type"] == "NotAnImage" and error["stage"] == "decode"

    assert summary["matched"] == 7 and summary["captioned"] == 6 and summary["failed"] == 1
    assert summary["matched"] == summary["captioned"] + summary["failed"]
    assert summary["skipped_resume"] == 0 and summary["resumed_from_files"] == 0
    assert summary["bleu"] is not None and all(0 <= summary["bleu"][f"bleu{n}"] <= 1 for n in range(1, 5))
    assert summary["bleu_segments"] == len(REFERENCES)
    assert summary["model_id"] == bucket["model_id"] and summary["model"] == f"s3://{BUCKET}/models/tiny"
    assert summary["output"] == f"s3://{BUCKET}/out"
    # the run's own copy (the top-level summary.json is the latest run's, see the resume test)
    assert _json(client, f"out/_runs/{summary['run_id']}/summary.json") == summary
    assert f"out/_runs/{summary['run_id']}/stats.json" in _keys(client, "out/_runs/")
    assert "out/summary.json" in _keys(client, "out/")
    assert not [k for k in _keys(client, "out/") if "beam-temp" in k]  # Beam's temp files were finalised
    s3["guard"].assert_only_to(s3["port"])


def test_resume_on_s3_adds_only_new_images_and_then_skips_everything(s3, bucket):
    """Three runs in one process: a subset, a --resume over all images (after a crashed run's
    temp files were left behind), and a --resume that must skip all 7 inputs. The third run only
    sees the second run's files if no stale S3 listing from the second run is reused."""
    from beam_pipeline.preflight import PreflightError

    client = bucket["client"]
    first = run_pipeline(_args("resume", images="img[0-2].jpg"))
    assert first["captioned"] == 3 and first["failed"] == 0
    with pytest.raises(PreflightError, match="not empty; use --resume"):
        run_pipeline(_args("resume"))
    stale = "resume/captions/beam-temp-part-crashed-0123456789/00000000-0000.parquet"
    client.put_object(Bucket=BUCKET, Key=stale, Body=b"half-written by a crashed run")

    second = run_pipeline(_args("resume") + ["--resume"])
    assert second["skipped_resume"] == 3 and second["captioned"] == 3 and second["failed"] == 1
    assert second["matched"] == second["captioned"] + second["failed"] + second["skipped_resume"] == 7
    assert not [k for k in _keys(client, "resume/") if "beam-temp" in k]  # the stale temp files are gone

    before = _keys(client, "resume/captions/") + _keys(client, "resume/errors/")
    third = run_pipeline(_args("resume") + ["--resume"])
    assert third["skipped_resume"] == 7 and third["resumed_from_files"] == len(before) >= 3
    assert third["captioned"] == 0 and third["failed"] == 0 and third["matched"] == 7
    assert third["bleu"] is None
    assert _json(client, "resume/summary.json") == third
    captions, errors = _rows(client, "resume/captions"), _rows(client, "resume/errors")
    uris = [r["image_uri"] for r in captions + errors]
    assert len(captions) == 6 and len(errors) == 1 and len(uris) == len(set(uris)) == 7
    assert {r["image_id"] for r in captions} == set(IMAGES)
    runs = {k.split("/")[2] for k in _keys(client, "resume/_runs/")}
    assert runs == {first["run_id"], second["run_id"], third["run_id"]}
    s3["guard"].assert_only_to(s3["port"])


def test_tampered_artifact_on_s3_is_refused_before_any_output(s3, bucket):
    from model.artifact import ArtifactError

    client = bucket["client"]
    for path in sorted(bucket["artifact"].iterdir()):
        client.upload_file(str(path), BUCKET, f"models/tampered/{path.name}")
    client.put_object(
        Bucket=BUCKET, Key="models/tampered/vocab.json", Body=b'{"format": "image-caption-vocab/1", "tokens": []}'
    )
    with pytest.raises(ArtifactError, match="vocab.json"):
        run_pipeline(_args("tampered-out", model="models/tampered"))
    assert _keys(client, "tampered-out") == []
    s3["guard"].assert_only_to(s3["port"])


def test_folder_markers_are_error_rows_and_changed_objects_are_captioned_again(s3, bucket, tmp_path):
    """A lake prefix with zero-byte folder marker objects (the console's ``name/`` and Hadoop's
    ``name_$folder$``) and three photos; one photo is overwritten with another (new size, new
    LastModified) and --resume captions exactly that one again."""
    client = bucket["client"]
    photos = [write_jpeg(tmp_path / f"p{i}.jpg", size=(70 + 10 * i, 50 + 5 * i), seed=10 + i) for i in range(4)]
    for key in ("lake/2024/", "lake/old_$folder$"):
        client.put_object(Bucket=BUCKET, Key=key, Body=b"")
    for i, photo in enumerate(photos[:3]):
        client.upload_file(str(photo), BUCKET, f"lake/2024/p{i}.jpg")
    args = [
        "--input",
        f"s3://{BUCKET}/lake/**",
        "--model",
        f"s3://{BUCKET}/models/tiny",
        "--output",
        f"s3://{BUCKET}/lake-out",
        "--batch_size",
        "4",
    ]
    first = run_pipeline(args)
    assert (first["matched"], first["captioned"], first["failed"]) == (5, 3, 2)
    errors = {r["image_uri"]: r for r in _rows(client, "lake-out/errors")}
    assert {u: r["error_type"] for u, r in errors.items()} == {
        f"s3://{BUCKET}/lake/2024/": "FolderMarker",
        f"s3://{BUCKET}/lake/old_$folder$": "FolderMarker",
    }
    captions = {r["image_uri"]: r for r in _rows(client, "lake-out/captions")}
    head = client.head_object(Bucket=BUCKET, Key="lake/2024/p1.jpg")
    row = captions[f"s3://{BUCKET}/lake/2024/p1.jpg"]
    assert row["source_size"] == head["ContentLength"] == photos[1].stat().st_size
    assert abs(row["source_mtime"].timestamp() - head["LastModified"].timestamp()) < 1

    client.upload_file(str(photos[3]), BUCKET, "lake/2024/p1.jpg")  # overwritten in place
    second = run_pipeline(args + ["--resume"])
    assert (second["captioned"], second["recaptioned_changed"], second["skipped_resume"]) == (1, 1, 4)
    rows = [r for r in _rows(client, "lake-out/captions") if r["image_uri"].endswith("/p1.jpg")]
    newest = max(rows, key=lambda r: r["processed_at"])
    assert len(rows) == 2 and newest["image_sha256"] == hashlib.sha256(photos[3].read_bytes()).hexdigest()
    assert run_pipeline(args + ["--resume"])["captioned"] == 0  # unchanged since: nothing redone
    s3["guard"].assert_only_to(s3["port"])
