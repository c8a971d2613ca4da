"""Captions committed to Apache Iceberg tables (pyiceberg's SQL catalog on a SQLite file), with the
warehouse in a local folder and on a moto S3 server on 127.0.0.1. The catalog is configured only
through ``PYICEBERG_CATALOG__<NAME>__*`` environment variables, as a user would.

Real Flickr8k photos, the small test model (caption quality does not matter here), real Parquet
and real Iceberg metadata; rows are read back with pyiceberg's scan and with pyarrow from the
snapshot's data files.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("pyiceberg", reason="Iceberg tests need pyiceberg (pip install -e '.[test]')")

from beam_pipeline.preflight import PreflightError
from tests.pipeline_helpers import flickr8k_photos, read_rows, run_pipeline

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
TABLE = "lake.captions"


def _link(photos: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for photo in photos:
        (folder / photo.name).symlink_to(photo)
    return folder


def _catalog_env(mp: pytest.MonkeyPatch, name: str, tmp: Path, warehouse: str, **extra: str) -> None:
    prefix = f"PYICEBERG_CATALOG__{name.upper()}__"
    mp.setenv(prefix + "TYPE", "sql")
    mp.setenv(prefix + "URI", f"sqlite:///{tmp}/catalog-{name}.db")
    mp.setenv(prefix + "WAREHOUSE", warehouse)
    for key, value in extra.items():
        mp.setenv(prefix + key, value)


def _load(name: str, identifier: str) -> Any:
    from beam_pipeline.lake_table import open_catalog

    return open_catalog(name).load_table(identifier)


def _data_file_rows(table: Any, read_bytes: Callable[[str], bytes]) -> list[dict[str, Any]]:
    """Rows read with pyarrow straight from the current snapshot's data files (no pyiceberg reader)."""
    files = [task.file.file_path for task in table.scan().plan_files()]
    assert files, "the snapshot has no data files"
    return pa.concat_tables(
        [pq.read_table(io.BytesIO(read_bytes(f))) for f in files], promote_options="default"
    ).to_pylist()


def _local_bytes(uri: str) -> bytes:
    return Path(uri.removeprefix("file://")).read_bytes()


@pytest.fixture()
def lake(tmp_path, monkeypatch) -> str:
    _catalog_env(monkeypatch, "lake", tmp_path, f"file://{tmp_path}/warehouse")
    return "lake"


def test_two_runs_then_resume_leave_each_image_once_in_two_snapshots(tmp_path, lake, flickr8k, tiny_artifact):
    """The issue's "done when": 40 photos, then --resume with 40 more -> 80 distinct images, each
    once, in >= 2 snapshots, the same rows as the Parquet files; errors in the errors table."""
    first, second = (
        _link(flickr8k_photos(flickr8k, 0, 40), tmp_path / "a"),
        _link(flickr8k_photos(flickr8k, 40, 40), tmp_path / "b"),
    )
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "notes.jpg").write_text("not a picture")
    out = tmp_path / "out"
    common = [
        "--output",
        str(out),
        "--model",
        tiny_artifact,
        "--batch_size",
        "16",
        "--iceberg_table",
        TABLE,
        "--iceberg_catalog",
        lake,
    ]
    one = run_pipeline(
        ["--input", f"{first}/*.jpg", "--input", f"{bad}/*.jpg", "--input", f"{tmp_path}/nowhere/*.jpg"] + common
    )
    assert one["iceberg"]["captions"]["appended"] == 40 and one["iceberg"]["errors"]["appended"] == 2
    two = run_pipeline(
        ["--input", f"{first}/*.jpg", "--input", f"{second}/*.jpg", "--input", f"{bad}/*.jpg", "--resume"] + common
    )
    assert two["captioned"] == 40 and two["skipped_resume"] == 41
    assert two["iceberg"]["captions"]["appended"] == 40 and two["iceberg"]["errors"]["appended"] == 0

    table = _load(lake, TABLE)
    rows = table.scan().to_arrow().to_pylist()
    uris = [r["image_uri"] for r in rows]
    assert len(uris) == len(set(uris)) == 80
    assert len([s for s in table.snapshots()]) >= 2
    parquet = {r["image_uri"]: r for r in read_rows(out, "captions")}
    assert set(parquet) == set(uris)
    for row in rows:
        expected = parquet[row["image_uri"]]
        assert (row["caption"], row["image_id"], row["model_id"]) == (
            expected["caption"],
            expected["image_id"],
            expected["model_id"],
        )
        assert (
            row["image_sha256"]
            == expected["image_sha256"]
            == hashlib.sha256(Path(row["image_uri"]).read_bytes()).hexdigest()
        )
        assert row["caption_source"] == "model"
    direct = _data_file_rows(table, _local_bytes)
    assert sorted(r["image_uri"] for r in direct) == sorted(uris)
    assert [f.name for f in table.spec().fields] == ["processed_day"]

    errors = _load(lake, TABLE + "_errors").scan().to_arrow().to_pylist()
    by_type = {e["error_type"]: e for e in errors}
    assert set(by_type) == {"NotAnImage", "NoMatch"}
    assert by_type["NotAnImage"]["image_sha256"] == hashlib.sha256(b"not a picture").hexdigest()
    assert by_type["NoMatch"]["image_sha256"] is None  # no bytes were read

    # A crash between writing the files and committing the snapshot: a run without the flag leaves
    # exactly that state (Parquet files the table lacks). The next --resume repairs it.
    third_photos = _link(flickr8k_photos(flickr8k, 80, 3), tmp_path / "c")
    run_pipeline(["--input", f"{third_photos}/*.jpg", "--resume", "--output", str(out), "--model", tiny_artifact])
    snapshots = len(_load(lake, TABLE).snapshots())
    repair = run_pipeline(["--input", f"{third_photos}/*.jpg", "--resume"] + common)
    assert repair["captioned"] == 0 and repair["iceberg"]["captions"]["appended"] == 3
    table = _load(lake, TABLE)
    assert len(table.snapshots()) == snapshots + 1
    uris = table.scan(selected_fields=("image_uri",)).to_arrow().column("image_uri").to_pylist()
    assert len(uris) == len(set(uris)) == 83 == len(read_rows(out, "captions"))


def test_embeddings_add_the_column_and_a_foreign_model_is_refused(tmp_path, lake, flickr8k, tiny_artifact):
    from run_pipeline import main
    from tests.factories import make_tiny_artifact

    out = tmp_path / "out"
    common = ["--output", str(out), "--model", tiny_artifact, "--iceberg_table", TABLE, "--iceberg_catalog", lake]
    run_pipeline(["--input", f"{_link(flickr8k_photos(flickr8k, 0, 4), tmp_path / 'a')}/*.jpg"] + common)
    assert "embedding" not in {f.name for f in _load(lake, TABLE).schema().fields}
    run_pipeline(
        ["--input", f"{_link(flickr8k_photos(flickr8k, 4, 4), tmp_path / 'b')}/*.jpg", "--resume", "--emit_embeddings"]
        + common
    )
    table = _load(lake, TABLE)
    assert "embedding" in {f.name for f in table.schema().fields}
    rows = table.scan().to_arrow().to_pylist()
    assert len(rows) == 8
    with_embedding = [r for r in rows if r["embedding"] is not None]
    assert len(with_embedding) == 4 and all(len(r["embedding"]) > 0 for r in with_embedding)

    other = str(tmp_path / "other-model")
    make_tiny_artifact(other, seed=1)
    args = [
        "--input",
        f"{tmp_path / 'a'}/*.jpg",
        "--output",
        str(tmp_path / "out2"),
        "--model",
        other,
        "--iceberg_table",
        TABLE,
        "--iceberg_catalog",
        lake,
    ]
    with pytest.raises(PreflightError, match="already holds captions of model"):
        run_pipeline(args)
    assert main(args) == 2  # the command line's refusal exit code
    assert not (tmp_path / "out2").exists()
    assert (
        main(
            [
                "--input",
                f"{tmp_path / 'a'}/*.jpg",
                "--output",
                str(tmp_path / "out3"),
                "--model",
                tiny_artifact,
                "--iceberg_table",
                TABLE,
                "--iceberg_catalog",
                "nosuchcatalog",
            ]
        )
        == 2
    )


def test_skip_known_content_captions_each_content_once(tmp_path, lake, flickr8k, tiny_artifact):
    """Byte-identical copies in one run, in earlier Parquet files and in the Iceberg table are not
    run through the model again; each still gets its own row, marked same_content."""
    photos = flickr8k_photos(flickr8k, 0, 6)
    images = _link(photos, tmp_path / "images")
    for photo in photos[:3]:  # byte-identical copies under other names
        (images / f"copy-of-{photo.name}").write_bytes(photo.read_bytes())
    out = tmp_path / "out"
    common = [
        "--output",
        str(out),
        "--model",
        tiny_artifact,
        "--skip_known_content",
        "--iceberg_table",
        TABLE,
        "--iceberg_catalog",
        lake,
    ]
    one = run_pipeline(["--input", f"{images}/*.jpg"] + common)
    assert one["captioned"] == 9 and one["counters"]["images_captioned"] == 6
    assert one["counters"]["images_same_content"] == 3
    rows = {r["image_id"]: r for r in read_rows(out, "captions")}
    for photo in photos[:3]:  # which of the two went through the model is up to the runner
        pair = sorted((rows[f"copy-of-{photo.name}"], rows[photo.name]), key=lambda r: r["caption_source"])
        assert [r["caption_source"] for r in pair] == ["model", "same_content"]
        assert (pair[0]["caption"], pair[0]["score"], pair[0]["image_sha256"]) == (
            pair[1]["caption"],
            pair[1]["score"],
            pair[1]["image_sha256"],
        )
    assert all(rows[p.name]["caption_source"] == "model" for p in photos[3:])

    later = tmp_path / "later"  # copies of captioned photos arriving in a later --resume run
    later.mkdir()
    (later / "again.jpg").write_bytes(photos[4].read_bytes())
    two = run_pipeline(["--input", f"{later}/*.jpg", "--resume"] + common)
    assert two["captioned"] == 1 and two["counters"]["images_captioned"] == 0
    again = next(r for r in read_rows(out, "captions") if r["image_id"] == "again.jpg")
    assert again["caption_source"] == "same_content" and again["caption"] == rows[photos[4].name]["caption"]

    # A new output, same table: the known captions come from the table.
    three = run_pipeline(
        [
            "--input",
            f"{later}/*.jpg",
            "--output",
            str(tmp_path / "fresh"),
            "--model",
            tiny_artifact,
            "--skip_known_content",
            "--iceberg_table",
            TABLE,
            "--iceberg_catalog",
            lake,
        ]
    )
    assert three["counters"]["images_captioned"] == 0 and three["counters"]["images_same_content"] == 1
    # The URI is already in the table: the newer row replaces it (the latest row wins), still one row.
    assert (three["iceberg"]["captions"]["appended"], three["iceberg"]["captions"]["replaced"]) == (1, 1)
    uris = _load(lake, TABLE).scan(selected_fields=("image_uri",)).to_arrow().column("image_uri").to_pylist()
    assert uris.count(str(later / "again.jpg")) == 1


def test_warehouse_on_moto_s3(tmp_path, monkeypatch, flickr8k, tiny_artifact):
    """The table's data and metadata files on a moto S3 server (127.0.0.1, free port); pyiceberg's
    S3 FileIO is configured by the catalog's environment variables only."""
    import boto3

    from tests.s3_server import start_moto as _start_moto
    from tests.s3_server import stop_process as _stop

    proc, port = _start_moto(tmp_path / "moto.log")
    try:
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket="lake")
        _catalog_env(
            monkeypatch,
            "s3lake",
            tmp_path,
            "s3://lake/warehouse",
            S3__ENDPOINT=endpoint,
            S3__ACCESS_KEY_ID="testing",
            S3__SECRET_ACCESS_KEY="testing",
            S3__REGION="us-east-1",
        )
        for name in ("AWS_PROFILE", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        out = tmp_path / "out"
        common = [
            "--output",
            str(out),
            "--model",
            tiny_artifact,
            "--iceberg_table",
            TABLE,
            "--iceberg_catalog",
            "s3lake",
        ]
        run_pipeline(["--input", f"{_link(flickr8k_photos(flickr8k, 0, 5), tmp_path / 'a')}/*.jpg"] + common)
        run_pipeline(
            [
                "--input",
                f"{tmp_path / 'a'}/*.jpg",
                "--input",
                f"{_link(flickr8k_photos(flickr8k, 5, 5), tmp_path / 'b')}/*.jpg",
                "--resume",
            ]
            + common
        )
        table = _load("s3lake", TABLE)
        uris = [r["image_uri"] for r in table.scan().to_arrow().to_pylist()]
        assert len(uris) == len(set(uris)) == 10 and len(table.snapshots()) >= 2
        keys = [o["Key"] for o in client.list_objects_v2(Bucket="lake", Prefix="warehouse/")["Contents"]]
        assert any(k.endswith(".parquet") for k in keys) and any(k.endswith(".metadata.json") for k in keys)

        def s3_bytes(uri: str) -> bytes:
            bucket, _, key = uri.removeprefix("s3://").partition("/")
            return client.get_object(Bucket=bucket, Key=key)["Body"].read()

        direct = _data_file_rows(table, s3_bytes)
        assert sorted(r["image_uri"] for r in direct) == sorted(uris)
        assert all(r["image_sha256"] for r in direct)
    finally:
        _stop(proc)


def test_changed_photos_are_captioned_again_and_replace_their_rows_in_one_snapshot(
    tmp_path, lake, flickr8k, tiny_artifact
):
    """The issue's scenario: 40 photos into the table, 5 files overwritten with other photos, then
    --resume: exactly those 5 are captioned again, and the table holds 40 rows (one per URI) with
    the new captions and hashes, replaced in a single snapshot."""
    import shutil

    folder = tmp_path / "lake-photos"
    folder.mkdir()
    for photo in flickr8k_photos(flickr8k, 0, 40):
        shutil.copyfile(photo, folder / photo.name)
    out = tmp_path / "out"
    common = [
        "--input",
        f"{folder}/*.jpg",
        "--output",
        str(out),
        "--model",
        tiny_artifact,
        "--batch_size",
        "16",
        "--iceberg_table",
        TABLE,
        "--iceberg_catalog",
        lake,
    ]
    first = run_pipeline(common)
    assert first["captioned"] == 40 and first["iceberg"]["captions"]["appended"] == 40
    before = {r["image_uri"]: r for r in _load(lake, TABLE).scan().to_arrow().to_pylist()}
    snapshots = len(_load(lake, TABLE).snapshots())

    changed = sorted(folder.glob("*.jpg"))[::8]  # 5 of them
    for target, replacement in zip(changed, flickr8k_photos(flickr8k, 100, 5)):
        shutil.copyfile(replacement, target)
    second = run_pipeline(common + ["--resume"])
    assert (second["captioned"], second["recaptioned_changed"], second["skipped_resume"]) == (5, 5, 35)
    assert second["iceberg"]["captions"]["replaced"] == 5 and second["iceberg"]["captions"]["appended"] == 5

    table = _load(lake, TABLE)
    assert len(table.snapshots()) == snapshots + 1  # the 5 replacements are one snapshot
    rows = {r["image_uri"]: r for r in table.scan().to_arrow().to_pylist()}
    assert len(rows) == 40 == len(table.scan().to_arrow())
    latest = {}
    for row in read_rows(out, "captions"):
        if row["image_uri"] not in latest or row["processed_at"] > latest[row["image_uri"]]["processed_at"]:
            latest[row["image_uri"]] = row
    for uri, row in rows.items():
        assert row["image_sha256"] == hashlib.sha256(Path(uri).read_bytes()).hexdigest()
        assert row["caption"] == latest[uri]["caption"]
        if Path(uri) in changed:
            assert (
                row["image_sha256"] != before[uri]["image_sha256"] and row["processed_at"] > before[uri]["processed_at"]
            )
        else:
            assert row == before[uri]
    assert sorted(r["image_uri"] for r in _data_file_rows(table, _local_bytes)) == sorted(rows)
