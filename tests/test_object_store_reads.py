"""Reading images from S3 through faults: a real moto server process on 127.0.0.1 behind a
fault proxy of our own (tests/s3_fault_proxy.py) that throttles, resets connections, denies,
loses and delays objects per key, and counts every request it forwards.

The pipeline (tiny test model, local output) lists and reads ``s3://`` through the proxy; test
data is uploaded straight to moto, so the proxy sees only what the pipeline does.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.factories import write_jpeg
from tests.pipeline_helpers import read_rows, run_pipeline
from tests.s3_fault_proxy import Fault, FaultProxy
from tests.s3_server import LoopbackOnly, point_aws_env_at, require_s3_server, start_moto, stop_process

boto3 = require_s3_server()

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

BUCKET = "fault-test"
GOOD = [f"good{i}.jpg" for i in range(5)]
RETRIES = 2  # --read_retries: 3 tries in all
TRIES = RETRIES + 1
# key -> (fault, expected outcome: "caption" or the error type, GETs expected at the proxy).
# A reset costs up to 2 GETs per try: aiohttp re-sends an idempotent request once by itself when
# a kept-alive connection is closed under it (RFC 9112 9.3.1), and not again.
CASES = {
    "throttled-twice.jpg": (Fault(503, times=2), "caption", 3),
    "reset-once.jpg": (Fault("drop", times=1), "caption", 2),
    "always-throttled.jpg": (Fault(503), "Throttled", TRIES),
    "always-reset.jpg": (Fault("drop"), "ConnectionError", range(TRIES, 2 * TRIES + 1)),
    "server-error-once.jpg": (Fault(500, times=1), "caption", 2),
    "denied.jpg": (Fault(403), "PermissionDenied", 1),
    "vanished.jpg": (Fault(404), "FileNotFound", 1),
    "too-slow.jpg": (Fault("delay", delay=2.5), "ReadTimeout", TRIES),
}


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """moto on one port, the fault proxy on another; the AWS environment points at the proxy."""
    import s3fs

    tmp = tmp_path_factory.mktemp("moto-faults")
    proc, moto_port = start_moto(tmp / "moto.log")
    proxy = FaultProxy(moto_port)
    proxy_port = proxy.start()
    guard = LoopbackOnly()
    try:
        with pytest.MonkeyPatch.context() as mp:
            point_aws_env_at(mp, f"http://127.0.0.1:{proxy_port}", tmp)
            guard.install(mp)
            s3fs.S3FileSystem.clear_instance_cache()
            direct = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{moto_port}")
            direct.create_bucket(Bucket=BUCKET)
            yield {"direct": direct, "proxy": proxy, "proxy_port": proxy_port, "guard": guard, "tmp": tmp}
            s3fs.S3FileSystem.clear_instance_cache()
    finally:
        proxy.stop()
        stop_process(proc)


@pytest.fixture(scope="module")
def images(s3) -> list[str]:
    local = s3["tmp"] / "images"
    names = GOOD + list(CASES)
    for i, name in enumerate(names):
        path = write_jpeg(local / name, size=(64 + 2 * i, 48 + i), seed=i)
        s3["direct"].upload_file(str(path), BUCKET, f"images/{name}")
    return names


def test_faults_are_retried_or_reported_once_and_403_404_are_not_retried(s3, images, tiny_artifact, tmp_path):
    """One pipeline run over 13 objects: transient faults that clear are captioned after the
    right number of GETs; persistent ones are one error row each with the right type after
    exactly 1 + --read_retries GETs; 403 and 404 get one GET. Reads are one GET per object (no
    HEAD) and several are in flight at once, but never more than --read_concurrency."""
    proxy: FaultProxy = s3["proxy"]
    proxy.faults = {f"images/{name}": Fault(f.kind, f.times, f.delay) for name, (f, _, _) in CASES.items()}
    proxy.latency = 0.05  # every request: so that reads overlap visibly
    proxy.reset_counts()
    out = tmp_path / "out"
    try:
        summary = run_pipeline(
            [
                "--input",
                f"s3://{BUCKET}/images/*.jpg",
                "--output",
                str(out),
                "--model",
                tiny_artifact,
                "--batch_size",
                "4",
                "--read_concurrency",
                "4",
                "--read_retries",
                str(RETRIES),
                "--read_backoff_seconds",
                "0.05",
                "--read_timeout_seconds",
                "1",
            ]
        )
    finally:
        proxy.latency = 0.0
        proxy.faults = {}
    captions, errors = read_rows(out, "captions"), read_rows(out, "errors")
    expected_captioned = GOOD + [n for n, (_, outcome, _) in CASES.items() if outcome == "caption"]
    assert sorted(r["image_id"] for r in captions) == sorted(expected_captioned)
    expected_errors = {n: outcome for n, (_, outcome, _) in CASES.items() if outcome != "caption"}
    assert {r["image_id"]: r["error_type"] for r in errors} == expected_errors
    assert len(errors) == len(expected_errors)  # exactly one row each
    assert all(r["stage"] == "read" for r in errors)
    by_id = {r["image_id"]: r for r in errors}
    assert f"gave up after {TRIES} tries" in by_id["always-throttled.jpg"]["message"]
    assert "gave up" not in by_id["denied.jpg"]["message"]
    assert summary["matched"] == len(images) == summary["captioned"] + summary["failed"]

    for name in images:
        expected_gets = CASES[name][2] if name in CASES else 1
        gets = proxy.count("GET", f"images/{name}")
        assert gets in expected_gets if isinstance(expected_gets, range) else gets == expected_gets, (name, gets)
    assert proxy.object_requests("HEAD") == []  # the size came from the listing: no HEAD per object
    assert len(proxy.listing_requests()) <= 2  # one listing page (plus Beam's prefix check at most)
    assert 2 <= proxy.peak_gets_in_flight <= 4
    s3["guard"].assert_only_to(s3["proxy_port"])


def test_manifest_on_multi_processing_runner_reads_sizes_unknown_and_real_404(s3, images, tiny_artifact, tmp_path):
    """A manifest (sizes unknown, so each read is one ranged GET that also enforces the byte
    limit) on the multi_processing runner: worker processes read through the same proxy, a
    throttled object is captioned after a retry, a key that does not exist on the server is one
    FileNotFound row after one GET, and an object over --max_image_bytes is refused while reading."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    proxy: FaultProxy = s3["proxy"]
    big = s3["tmp"] / "big.jpg"
    write_jpeg(big, size=(400, 300), seed=99)
    s3["direct"].upload_file(str(big), BUCKET, "images-extra/big.jpg")
    uris = [f"s3://{BUCKET}/images/{n}" for n in GOOD[:3]] + [
        f"s3://{BUCKET}/images/throttled-twice.jpg",
        f"s3://{BUCKET}/images/missing.jpg",
        f"s3://{BUCKET}/images-extra/big.jpg",
    ]
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"image_uri": uris}), manifest)
    proxy.faults = {"images/throttled-twice.jpg": Fault(503, times=1)}
    proxy.reset_counts()
    out = tmp_path / "out"
    max_bytes = big.stat().st_size - 1
    try:
        summary = run_pipeline(
            [
                "--input_manifest",
                str(manifest),
                "--output",
                str(out),
                "--model",
                tiny_artifact,
                "--batch_size",
                "4",
                "--direct_running_mode",
                "multi_processing",
                "--direct_num_workers",
                "2",
                "--read_backoff_seconds",
                "0.05",
                "--max_image_bytes",
                str(max_bytes),
            ]
        )
    finally:
        proxy.faults = {}
    captions, errors = read_rows(out, "captions"), read_rows(out, "errors")
    assert sorted(r["image_id"] for r in captions) == sorted(GOOD[:3] + ["throttled-twice.jpg"])
    assert {r["image_id"]: (r["stage"], r["error_type"]) for r in errors} == {
        "missing.jpg": ("read", "FileNotFound"),
        "big.jpg": ("decode", "TooLarge"),
    }
    assert summary["matched"] == 6 == summary["captioned"] + summary["failed"]
    assert proxy.count("GET", "images/throttled-twice.jpg") == 2
    assert proxy.count("GET", "images/missing.jpg") == 1
    assert proxy.object_requests("HEAD") == []


def _outside_a_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beam's S3 filesystem takes its options from the running pipeline; these tests call the
    DoFn directly, so give it default ones (the AWS environment points at the proxy)."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    monkeypatch.setattr(FileSystems, "_pipeline_options", PipelineOptions([]))


def test_glob_over_many_objects_is_listed_by_pages(s3, monkeypatch):
    """2,500 objects under one prefix: Beam's matcher lists them with 3 listing pages (1,000
    keys each) and no request per object; every object comes with its size."""
    from beam_pipeline.matching import MatchGlob

    _outside_a_pipeline(monkeypatch)
    direct, proxy = s3["direct"], s3["proxy"]
    keys = [f"lake/img{i:05d}.jpg" for i in range(2500)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: direct.put_object(Bucket=BUCKET, Key=k, Body=k.encode()), keys))
    proxy.reset_counts()
    refs = list(MatchGlob().process(f"s3://{BUCKET}/lake/*.jpg"))
    assert sorted(r.uri for r in refs) == sorted(f"s3://{BUCKET}/{k}" for k in keys)
    assert all(r.size_bytes == len(r.uri.split(f"{BUCKET}/", 1)[1]) for r in refs)
    listings = proxy.listing_requests()
    assert len(listings) == 3, listings
    assert proxy.object_requests("GET") == [] and proxy.object_requests("HEAD") == []
    s3["guard"].assert_only_to(s3["proxy_port"])


def test_a_remote_glob_is_streamed_page_by_page(s3, monkeypatch):
    """Matching an object-store glob yields its first entries after the first listing page, before
    the next page is asked for (no list of the whole match is built first); a pattern without a
    glob character is one object, or NoMatch."""
    from beam_pipeline.matching import MatchGlob

    _outside_a_pipeline(monkeypatch)
    direct, proxy = s3["direct"], s3["proxy"]
    keys = [f"stream/img{i:05d}.jpg" for i in range(2100)] + ["stream/notes.txt"]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: direct.put_object(Bucket=BUCKET, Key=k, Body=k.encode()), keys))
    proxy.reset_counts()
    refs = MatchGlob().process(f"s3://{BUCKET}/stream/*.jpg")
    first = [next(refs) for _ in range(1000)]
    assert len(proxy.listing_requests()) == 1  # 1,000 entries out, one page asked for
    rest = list(refs)
    assert len(proxy.listing_requests()) == 3
    assert sorted(r.uri for r in first + rest) == sorted(f"s3://{BUCKET}/{k}" for k in keys if k.endswith(".jpg"))
    (one,) = MatchGlob().process(f"s3://{BUCKET}/stream/img00007.jpg")
    assert (one.uri, one.size_bytes) == (f"s3://{BUCKET}/stream/img00007.jpg", len("stream/img00007.jpg"))
    (none,) = MatchGlob().process(f"s3://{BUCKET}/stream/absent.jpg")
    assert none.row["error_type"] == "NoMatch"
    s3["guard"].assert_only_to(s3["proxy_port"])


def test_read_concurrency_1_reads_one_at_a_time_from_process(tmp_path, tiny_artifact):
    """--read_concurrency 1 (the fallback for a runner that drops finish_bundle outputs) gives
    every image its one row too, on local files with their checks."""
    images = tmp_path / "images"
    for i in range(5):
        write_jpeg(images / f"ok{i}.jpg", size=(40, 30), seed=i)
    (images / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    summary = run_pipeline(
        [
            "--input",
            f"{images}/*.jpg",
            "--output",
            str(out),
            "--model",
            tiny_artifact,
            "--read_concurrency",
            "1",
            "--read_bytes_in_flight",
            "1",
        ]
    )
    assert sorted(r["image_id"] for r in read_rows(out, "captions")) == [f"ok{i}.jpg" for i in range(5)]
    assert [(r["image_id"], r["error_type"]) for r in read_rows(out, "errors")] == [("empty.jpg", "EmptyFile")]
    assert summary["matched"] == 6 == summary["captioned"] + summary["failed"]


def test_read_settings_flags_are_checked_before_anything_is_read(tmp_path, tiny_artifact):
    from beam_pipeline.preflight import PreflightError

    with pytest.raises(PreflightError, match="read_concurrency"):
        run_pipeline(
            [
                "--input",
                f"{tmp_path}/*.jpg",
                "--output",
                str(tmp_path / "out"),
                "--model",
                tiny_artifact,
                "--read_concurrency",
                "0",
            ]
        )
    assert not (tmp_path / "out").exists()
