"""Incremental commits through the real pipeline: a reader polling the output while a run goes,
and an S3 output store that fails (a fault-injecting proxy of our own in front of moto's real S3
server, both on 127.0.0.1). The SIGKILL + --resume test is in test_reliability.py."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads
import pytest

from tests.factories import write_jpeg
from tests.pipeline_helpers import read_rows, read_summary, run_pipeline
from tests.s3_fault_proxy import FaultProxy

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

REPO = Path(__file__).resolve().parents[1]


def test_reader_polling_the_output_during_a_run_never_fails_on_a_file(tmp_path, tiny_artifact):
    images = tmp_path / "images"
    for i in range(96):
        write_jpeg(images / f"img{i:03d}.jpg", size=(64, 64), seed=i)
    out = tmp_path / "out"
    args = [
        sys.executable,
        str(REPO / "run_pipeline.py"),
        "--input",
        f"{images}/*.jpg",
        "--output",
        str(out),
        "--model",
        tiny_artifact,
        "--batch_size",
        "4",
        "--commit_every",
        "4",
        "--progress_seconds",
        "0",
    ]
    proc = subprocess.Popen(
        args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    seen: list[int] = []  # rows the reader saw, read after read, while the run was going
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            if (out / "captions").is_dir():
                # Every file the dataset lists must read completely (no half-written Parquet).
                table = pads.dataset(str(out / "captions"), format="parquet").to_table()
                seen.append(table.num_rows)
            time.sleep(0.05)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    assert seen == sorted(seen), "rows disappeared between two reads"
    assert [n for n in seen if 0 < n < 96], "the reader never saw a partly done run: nothing was committed early"
    rows = read_rows(out, "captions")
    assert sorted(r["image_uri"] for r in rows) == sorted(str(p) for p in images.iterdir())
    assert not [p for p in (out / "captions").iterdir() if p.name.startswith(".")]  # no temp file left


# --------------------------------------------------------------------------- S3 output store failing


@pytest.fixture(scope="module")
def faulty_s3(tmp_path_factory: pytest.TempPathFactory, tiny_artifact: str) -> Iterator[dict[str, Any]]:
    """moto's S3 server behind a FaultProxy; the AWS environment points at the proxy. 12 JPEGs and
    one text file named .jpg under images/, the tiny model under models/tiny/."""
    from tests.s3_server import LoopbackOnly as _LoopbackOnly
    from tests.s3_server import require_s3_server
    from tests.s3_server import start_moto as _start_moto
    from tests.s3_server import stop_process as _stop

    require_s3_server()
    from tests.test_s3 import BUCKET, _clear_s3fs_instances, _upload_dir, point_aws_at

    tmp = tmp_path_factory.mktemp("faulty-s3")
    moto_proc, moto_port = _start_moto(tmp / "moto.log")
    try:
        with FaultProxy(moto_port) as proxy, pytest.MonkeyPatch.context() as mp:
            guard = _LoopbackOnly()
            client = point_aws_at(mp, f"http://127.0.0.1:{proxy.port}", tmp, guard, moto_proc)
            client.create_bucket(Bucket=BUCKET)
            for i in range(12):
                write_jpeg(tmp / "images" / f"img{i:02d}.jpg", size=(64, 64), seed=i)
            (tmp / "images" / "broken.jpg").write_text("not an image")
            _upload_dir(client, tmp / "images", "images")
            _upload_dir(client, Path(tiny_artifact), "models/tiny")
            yield {"client": client, "proxy": proxy, "bucket": BUCKET, "guard": guard}
            _clear_s3fs_instances()
    finally:
        _stop(moto_proc)


def _keys(client: Any, bucket: str, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _uris(client: Any, bucket: str, prefix: str) -> list[str]:
    import io

    import pyarrow.parquet as pq

    return [
        uri
        for key in _keys(client, bucket, prefix)
        if key.endswith(".parquet")
        for uri in pq.read_table(
            io.BytesIO(client.get_object(Bucket=bucket, Key=key)["Body"].read()), columns=["image_uri"]
        )
        .column("image_uri")
        .to_pylist()
    ]


def test_output_store_failing_fails_the_job_loudly_and_resume_completes_it(faulty_s3, monkeypatch):
    """The S3 server starts answering 500 to every Parquet PUT after the first two commits: the
    run fails with the reason (after retries), writes no summary, and --resume then adds exactly
    the rows that were not committed."""
    from tests.test_s3 import _clear_s3fs_instances

    client, proxy, bucket = faulty_s3["client"], faulty_s3["proxy"], faulty_s3["bucket"]
    # botocore would retry each 500 itself (5 tries, up to ~15 s of backoff); one try each keeps
    # this test short and makes the pipeline's own retries (--commit_attempts) the ones tested.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    _clear_s3fs_instances()
    allowed = [2]

    def fault(method: str, path: str) -> bool:
        if method not in ("PUT", "POST") or "/failing/" not in path or ".parquet" not in path:
            return False
        with proxy.lock:
            if allowed[0] > 0:
                allowed[0] -= 1
                return False
        return True

    proxy.fail = fault
    args = [
        "--input",
        f"s3://{bucket}/images/*.jpg",
        "--model",
        f"s3://{bucket}/models/tiny",
        "--output",
        f"s3://{bucket}/failing",
        "--batch_size",
        "2",
        "--commit_every",
        "2",
        "--commit_attempts",
        "2",
    ]
    reason = r"could not commit .* after 2 attempts: OSError: .*internal error"
    with pytest.raises(Exception, match=reason) as failure:
        run_pipeline(args)
    tries = Counter(path for _, path in proxy.failed)
    assert tries and set(tries.values()) == {2}, f"each failing commit is tried --commit_attempts times: {tries}"
    keys = _keys(client, bucket, "failing/")
    assert "failing/summary.json" not in keys, f"a failed run reported a summary ({failure.value})"
    committed = _uris(client, bucket, "failing/captions/") + _uris(client, bucket, "failing/errors/")
    assert len(committed) == len(set(committed)) <= 4, committed  # only the two commits that got through

    proxy.fail = lambda method, path: False
    summary = run_pipeline(args + ["--resume"])
    assert summary["matched"] == 13 == summary["captioned"] + summary["failed"] + summary["skipped_resume"]
    assert summary["skipped_resume"] == summary["skipped_from_interrupted"] == len(committed)
    uris = _uris(client, bucket, "failing/captions/") + _uris(client, bucket, "failing/errors/")
    assert sorted(uris) == sorted(
        f"s3://{bucket}/images/{n}" for n in [f"img{i:02d}.jpg" for i in range(12)] + ["broken.jpg"]
    )
    assert summary["counters"]["rows_committed"] == 13 - len(committed)
    _clear_s3fs_instances()
    faulty_s3["guard"].assert_only_to(proxy.port)


def test_resume_counts_an_image_once_when_two_files_hold_it(tmp_path, tiny_artifact):
    """Should a retry ever leave one image in two files, --resume still skips it once."""
    import shutil

    images = tmp_path / "images"
    for i in range(3):
        write_jpeg(images / f"img{i}.jpg", size=(64, 64), seed=i)
    out = tmp_path / "out"
    args = ["--input", f"{images}/*.jpg", "--output", str(out), "--model", tiny_artifact]
    first = run_pipeline(args)
    assert first["captioned"] == 3 and first["skipped_from_interrupted"] == 0
    (committed,) = sorted((out / "captions").glob("*.parquet"))
    shutil.copy(committed, committed.with_name(f"part-{first['run_id']}-{'0' * 32}.parquet"))
    second = run_pipeline(args + ["--resume"])
    assert second["matched"] == 3 == second["skipped_resume"] and second["captioned"] == second["failed"] == 0
    assert second["skipped_from_interrupted"] == 0 and second["resumed_from_files"] == 2  # run 1 had finished
    assert read_summary(out) == second
