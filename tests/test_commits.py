"""The commit rules on their own (no Beam runner, no TensorFlow): file naming, atomic writes,
the commit policy, retries, and the writer DoFn fed the same bundle twice (a runner's retry)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from beam_pipeline.commit_writer import CommitRows
from beam_pipeline.commits import (
    CommitBuffer,
    CommitError,
    commit_file_name,
    is_committed_name,
    parquet_bytes,
    run_id_of,
    with_retries,
)
from beam_pipeline.retries import RetryPolicy
from beam_pipeline.schemas import ERROR_SCHEMA
from model.storage import join


def write_atomically(directory: str, name: str, data: bytes) -> str:
    """How ``CommitRows`` writes a commit file."""
    from model.storage import write_atomically as write

    return write(join(directory, name), data)


RUN = "20261127T152958Z-abc123"


def _error(uri: str) -> dict:
    return {
        "image_uri": uri,
        "image_id": uri.rsplit("/", 1)[-1],
        "stage": "read",
        "error_type": "FileNotFound",
        "message": "gone",
        "processed_at": dt.datetime(2026, 11, 27, tzinfo=dt.UTC),
    }


def test_file_name_depends_on_content_not_order():
    a = commit_file_name(RUN, "captions", ["s3://b/2.jpg", "s3://b/1.jpg"])
    assert a == commit_file_name(RUN, "captions", ["s3://b/1.jpg", "s3://b/2.jpg"])
    assert a != commit_file_name(RUN, "captions", ["s3://b/1.jpg"])
    assert a != commit_file_name(RUN, "errors-read", ["s3://b/1.jpg", "s3://b/2.jpg"])  # writers never collide
    assert a != commit_file_name(RUN, "captions", ["s3://b/1.jpg", "s3://b/1.jpg", "s3://b/2.jpg"])
    assert a.startswith(f"part-{RUN}-") and a.endswith(".parquet") and is_committed_name(a)
    assert run_id_of(a) == RUN and run_id_of(f"/x/part-{RUN}-00000-of-00001.parquet") == RUN  # Beam's old names
    assert run_id_of("other.parquet") is None
    assert not is_committed_name(".tmp-" + a + "-1234abcd") and not is_committed_name("_SUCCESS")


def test_atomic_write_leaves_only_the_finished_file(tmp_path: Path):
    data = parquet_bytes([_error("a.jpg"), _error("b.jpg")], ERROR_SCHEMA)
    target = write_atomically(str(tmp_path / "errors"), "part-x.parquet", data)
    assert os.listdir(tmp_path / "errors") == ["part-x.parquet"] and target.endswith("errors/part-x.parquet")
    assert pq.read_table(target).column("image_uri").to_pylist() == ["a.jpg", "b.jpg"]
    write_atomically(str(tmp_path / "errors"), "part-x.parquet", data)  # a retry overwrites
    assert os.listdir(tmp_path / "errors") == ["part-x.parquet"]


def test_failed_local_write_leaves_no_temp_file(tmp_path: Path):
    (tmp_path / "errors").mkdir()
    (tmp_path / "errors" / "part-x.parquet").mkdir()  # os.replace onto a directory fails
    with pytest.raises(OSError):
        write_atomically(str(tmp_path / "errors"), "part-x.parquet", b"data")
    assert os.listdir(tmp_path / "errors") == ["part-x.parquet"]


def test_buffer_commits_by_count_and_by_age():
    now = [0.0]
    buf = CommitBuffer(every=3, seconds=10, clock=lambda: now[0])
    assert not buf.due() and not buf.add({"n": 1}) and not buf.add({"n": 2})
    assert buf.add({"n": 3}) and [r["n"] for r in buf.take()] == [1, 2, 3] and not buf.due()
    buf.add({"n": 4})
    now[0] = 9.9
    assert not buf.due()
    now[0] = 10.0
    assert buf.due()  # the oldest waiting row is 10 s old
    assert buf.take() == [{"n": 4}] and buf.take() == []
    by_count_only = CommitBuffer(every=100, seconds=0, clock=lambda: now[0])
    by_count_only.add({"n": 5})
    now[0] = 1e9
    assert not by_count_only.due()


def test_retries_back_off_then_fail_loudly_with_the_reason():
    slept, calls, retried = [], [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("503 Slow Down")
        return "ok"

    policy = RetryPolicy(tries=4, base_delay=0.5, max_delay=1.0)
    assert with_retries(flaky, policy, "x", sleep=slept.append, on_retry=lambda n, e: retried.append(n)) == "ok"
    assert slept == [0.5, 1.0] and retried == [1, 2]

    def broken():
        raise OSError("500 Internal Server Error")

    slept.clear()
    with pytest.raises(CommitError, match=r"could not commit 7 rows after 4 attempts: OSError: 500 Internal"):
        with_retries(broken, policy, "7 rows", sleep=slept.append)
    assert slept == [0.5, 1.0, 1.0]


def _run_bundle(writer: CommitRows, rows: list[dict]) -> None:
    """What a runner does with one bundle: start_bundle, process each element, finish_bundle."""
    writer.start_bundle()
    for row in rows:
        list(writer.process(row))
    writer.finish_bundle()


def test_same_bundle_through_the_writer_twice_leaves_no_duplicates(tmp_path: Path):
    """A runner retrying a bundle (after a worker died once the first attempt had committed) runs
    the same elements through the writer again: the files get the same names and are replaced."""
    rows = [_error(f"s3://b/img{i:02d}.jpg") for i in range(20)]
    out = tmp_path / "errors"
    writer = CommitRows(str(out), RUN, "errors-read", ERROR_SCHEMA, every=8, seconds=0)
    _run_bundle(writer, rows)
    first = sorted(os.listdir(out))
    assert len(first) == 3  # 8 + 8 + 4 rows
    _run_bundle(CommitRows(str(out), RUN, "errors-read", ERROR_SCHEMA, every=8, seconds=0), rows)  # the retry
    assert sorted(os.listdir(out)) == first
    uris = pads.dataset(str(out)).to_table().column("image_uri").to_pylist()
    assert sorted(uris) == [r["image_uri"] for r in rows]


def test_writer_failure_raises_after_retries_and_commits_nothing(tmp_path: Path):
    blocked = tmp_path / "errors"
    blocked.write_text("a file where the output folder should be")
    writer = CommitRows(
        str(blocked), RUN, "errors-read", ERROR_SCHEMA, every=2, seconds=0, policy=RetryPolicy(tries=2, base_delay=0.01)
    )
    writer.start_bundle()
    list(writer.process(_error("a.jpg")))
    with pytest.raises(CommitError, match="could not commit 2 errors-read rows .* after 2 attempts"):
        list(writer.process(_error("b.jpg")))


def test_resume_listing_skips_temp_files_removes_them_and_finds_interrupted_runs(tmp_path: Path):
    from beam_pipeline.preflight import existing_outputs, interrupted_outputs, remove_stale_temp_dirs

    finished, killed = RUN, "20261127T160000Z-def456"
    data = parquet_bytes([_error("a.jpg")], ERROR_SCHEMA)
    for run in (finished, killed):
        write_atomically(str(tmp_path / "errors"), commit_file_name(run, "errors-read", [run]), data)
    (tmp_path / "errors" / f".tmp-part-{killed}-half.parquet-0123abcd").write_bytes(b"PAR1 half")
    (tmp_path / "_runs" / finished).mkdir(parents=True)
    (tmp_path / "_runs" / finished / "summary.json").write_text("{}")
    (tmp_path / "_runs" / killed).mkdir(parents=True)  # stats only: it never finished

    done = existing_outputs(str(tmp_path))
    assert [run_id_of(f) for f in done] == sorted([finished, killed]) and all(is_committed_name(f) for f in done)
    assert [run_id_of(f) for f in interrupted_outputs(str(tmp_path), done)] == [killed]
    removed = remove_stale_temp_dirs(str(tmp_path))
    assert [Path(r).name for r in removed] == [f".tmp-part-{killed}-half.parquet-0123abcd"]
    assert sorted(os.listdir(tmp_path / "errors")) == sorted(Path(f).name for f in done)
