"""Object-store reads: the same photos from local disk and from S3 (a moto server on 127.0.0.1),
at 0 ms and at 50 ms added per request (tests/s3_fault_proxy.py in front of moto).

Reproduce (shared 2-core machine: a few minutes; all sections by default)::

    python bench/bench_object_store.py                       # reads + pipeline + listing
    python bench/bench_object_store.py --sections reads      # only the read-path comparison
    python bench/bench_object_store.py --sections listing --listing_objects 20000

Sections:

* ``reads``: per-object cost of each way to fetch N objects from the same moto server, one at a
  time and concurrently: boto3 ``get_object``, Beam ``FileSystems.open().read()``, s3fs
  ``cat_file``, s3fs ``cat`` of all paths (async), and this project's ``ObjectReader`` (one
  ranged GET through s3fs, sequential and with ``ReadAhead`` at 16 in flight). Median of
  ``--repeats`` rounds, variants interleaved.
* ``pipeline``: ``run_pipeline.py`` (shipped model, real Xception weights, default flags) over
  the same N Flickr8k photos from local disk, from S3 at 0 ms and from S3 at 50 ms per request,
  interleaved (local, s3-0, s3-50, local, …); images/s from the run's own ``wall_seconds`` and
  the ratio of medians to local.
* ``listing``: one glob over a prefix of ``--listing_objects`` objects, matched in a fresh
  process by Beam's ``FileSystems.match`` (what ``MatchGlob`` does): time, listing requests
  (counted at the proxy), and the process's RSS before/after and peak.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_throughput import dev_images, pipeline_command, pipeline_summary
from bench.common import REPO, XCEPTION_WEIGHTS, machine, python, table
from tests.s3_fault_proxy import FaultProxy
from tests.s3_server import start_moto, stop_process

BUCKET = "bench"


def aws_env(endpoint: str, tmp: Path) -> dict[str, str]:
    """Environment for a process whose S3 clients must talk to ``endpoint`` only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and "proxy" not in k.lower()}
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
        AWS_ENDPOINT_URL_S3=endpoint,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=str(tmp / "none"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp / "none"),
        NO_PROXY="127.0.0.1,localhost",
    )
    return env


def use_endpoint(endpoint: str, tmp: Path) -> None:
    """Point this process's S3 clients at ``endpoint`` (and drop cached s3fs clients)."""
    import s3fs

    os.environ.clear()
    os.environ.update(aws_env(endpoint, tmp))
    s3fs.S3FileSystem.clear_instance_cache()


def upload(client: Any, files: list[tuple[str, bytes]]) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: client.put_object(Bucket=BUCKET, Key=kv[0], Body=kv[1]), files))


# -- reads -------------------------------------------------------------------------------------
def read_variants(keys: list[str], sizes: dict[str, int]) -> dict[str, Callable[[list[str]], int]]:
    """name -> function reading the given keys, returning the bytes read."""
    import boto3
    import fsspec
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipeline.object_reads import ObjectReader, ReadSettings
    from beam_pipeline.read_ahead import ReadAhead

    FileSystems.set_options(PipelineOptions([]))  # what a runner does before the first read
    from botocore.config import Config

    client = boto3.client("s3", config=Config(max_pool_connections=16))
    default_fs = fsspec.filesystem("s3")
    reader = ObjectReader(ReadSettings())
    max_bytes = 50 << 20

    def boto3_seq(ks):
        return sum(len(client.get_object(Bucket=BUCKET, Key=k)["Body"].read()) for k in ks)

    def boto3_16(ks):
        with ThreadPoolExecutor(16) as pool:
            return sum(pool.map(lambda k: len(client.get_object(Bucket=BUCKET, Key=k)["Body"].read()), ks))

    def beam_open(ks):
        total = 0
        for k in ks:
            with FileSystems.open(f"s3://{BUCKET}/{k}") as f:
                total += len(f.read())
        return total

    def s3fs_cat_file(ks):
        return sum(len(default_fs.cat_file(f"{BUCKET}/{k}")) for k in ks)

    def s3fs_cat_many(ks):
        return sum(len(v) for v in default_fs.cat([f"{BUCKET}/{k}" for k in ks]).values())

    def ours_seq(ks):
        return sum(len(reader.read(f"s3://{BUCKET}/{k}", max_bytes, sizes[k])) for k in ks)

    def ours_16(ks):
        reads = ReadAhead(16, 256 << 20)
        try:
            got = [
                n
                for k in ks
                for _, n in reads.submit(
                    lambda k=k: len(reader.read(f"s3://{BUCKET}/{k}", max_bytes, sizes[k])), sizes[k]
                )
            ]
            return sum(got) + sum(n for _, n in reads.drain())
        finally:
            reads.close()

    return {
        "boto3 get_object, 1 at a time": boto3_seq,
        "boto3 get_object, 16 threads": boto3_16,
        "Beam FileSystems.open().read()": beam_open,
        "s3fs cat_file, 1 at a time": s3fs_cat_file,
        "s3fs cat(all paths), async": s3fs_cat_many,
        "ObjectReader.read, 1 at a time": ours_seq,
        "ObjectReader.read + ReadAhead(16)": ours_16,
    }


def bench_reads(keys: list[str], sizes: dict[str, int], repeats: int, slow_subset: int) -> dict[str, float]:
    """Median ms per object of each variant (Beam's reader on ``slow_subset`` keys only: it is slow)."""
    variants = read_variants(keys, sizes)
    for fn in variants.values():  # warm up clients and connection pools
        fn(keys[:3])
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            ks = keys[:slow_subset] if name.startswith("Beam") else keys
            started = time.perf_counter()
            total = fn(ks)
            times[name].append((time.perf_counter() - started) * 1000 / len(ks))
            assert total == sum(sizes[k] for k in ks), name
    return {name: statistics.median(ts) for name, ts in times.items()}


# -- pipeline ----------------------------------------------------------------------------------
def pipeline_runs(
    args: argparse.Namespace, local_dir: Path, moto_port: int, proxy_port: int, tmp: Path, extra: list[str]
) -> dict[str, list[dict]]:
    variants = {
        "local disk": (str(local_dir), None),
        "S3, 0 ms": (f"s3://{BUCKET}/photos", f"http://127.0.0.1:{moto_port}"),
        "S3, 50 ms per request": (f"s3://{BUCKET}/photos", f"http://127.0.0.1:{proxy_port}"),
    }
    if args.pipeline_variants:
        variants = {k: v for k, v in variants.items() if k in args.pipeline_variants.split(";")}
    results: dict[str, list[dict]] = {name: [] for name in variants}
    for round_ in range(args.runs):
        for name, (source, endpoint) in variants.items():
            env = aws_env(endpoint, tmp) if endpoint else None
            with tempfile.TemporaryDirectory() as out:
                res = subprocess.run(
                    pipeline_command(source, f"{out}/out", args, extra),
                    capture_output=True,
                    text=True,
                    cwd=REPO,
                    env=env,
                )
            summary = pipeline_summary(res)
            assert summary["captioned"] == args.images and summary["failed"] == 0, summary
            results[name].append(summary)
            print(f"  round {round_ + 1} {name}: {summary['wall_seconds']} s", file=sys.stderr, flush=True)
    return results


# -- listing -----------------------------------------------------------------------------------
LISTING_PROBE = """
import json, resource, sys, time, psutil
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
FileSystems.set_options(PipelineOptions([]))  # what a runner does first
proc = psutil.Process()
before = proc.memory_info().rss
started = time.perf_counter()
metas = [m for r in FileSystems.match([sys.argv[1]]) for m in r.metadata_list]
seconds = time.perf_counter() - started
after = proc.memory_info().rss
peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"objects": len(metas), "seconds": seconds, "rss_before_mib": before / 2**20,
                  "rss_after_mib": after / 2**20, "peak_rss_mib": peak_mib}))
"""


def bench_listing(n: int, client: Any, proxy: FaultProxy, proxy_port: int, tmp: Path, repeats: int) -> list[dict]:
    started = time.perf_counter()
    upload(client, [(f"lake/img{i:06d}.jpg", b"x" * 100) for i in range(n)])
    print(f"  uploaded {n} objects in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    out = []
    for _ in range(repeats):
        proxy.reset_counts()
        res = subprocess.run(
            [python(), "-c", LISTING_PROBE, f"s3://{BUCKET}/lake/*.jpg"],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=aws_env(f"http://127.0.0.1:{proxy_port}", tmp),
        )
        if res.returncode != 0:
            raise SystemExit(f"listing probe failed:\n{res.stderr[-3000:]}")
        row = json.loads(res.stdout.strip().splitlines()[-1])
        row["listing_requests"] = len(proxy.listing_requests())
        row["object_requests"] = len(proxy.object_requests("GET")) + len(proxy.object_requests("HEAD"))
        out.append(row)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="reads,pipeline,listing")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3, help="pipeline runs per variant (interleaved)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of the read comparison")
    parser.add_argument(
        "--beam_open_subset",
        type=int,
        default=10,
        help="objects read with Beam's FileSystems.open per round (it is slow)",
    )
    parser.add_argument("--latency_ms", type=float, default=50.0)
    parser.add_argument(
        "--pipeline_variants",
        default="",
        help="';'-separated subset of: local disk;S3, 0 ms;S3, 50 ms per request (default all)",
    )
    parser.add_argument("--listing_objects", type=int, default=20000)
    parser.add_argument("--encoder_weights", default=str(XCEPTION_WEIGHTS))
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--model_cache_dir", default=None)
    parser.add_argument("pipeline_args", nargs="*", help="extra run_pipeline.py flags (after --)")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="bench-object-store-"))
    args.model_cache_dir = args.model_cache_dir or str(tmp / "cache")
    print(f"machine: {machine()}; {args.images} photos; shared machine, medians of interleaved runs\n")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops the moto server
    proc, moto_port = start_moto(tmp / "moto.log")
    proxy = FaultProxy(moto_port, latency=args.latency_ms / 1000)
    proxy_port = proxy.start()
    try:
        import boto3

        photos = dev_images(args.images)
        local_dir = tmp / "photos"
        local_dir.mkdir()
        files = []
        for i, p in enumerate(photos):
            name = f"{i:06d}_{p.name}"
            (local_dir / name).symlink_to(p)
            files.append((f"photos/{name}", p.read_bytes()))
        use_endpoint(f"http://127.0.0.1:{moto_port}", tmp)
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        upload(client, files)
        keys = [k for k, _ in files]
        sizes = {k: len(v) for k, v in files}
        print(f"{len(keys)} photos, {sum(sizes.values()) / len(keys) / 1024:.0f} KiB on average\n")

        if "reads" in sections:
            for label, endpoint in (("0 ms", moto_port), (f"{args.latency_ms:g} ms per request", proxy_port)):
                use_endpoint(f"http://127.0.0.1:{endpoint}", tmp)
                ms = bench_reads(keys, sizes, args.repeats, args.beam_open_subset)
                base = ms["boto3 get_object, 1 at a time"]
                print(f"### Reads from S3 (moto), {label}\n")
                print(
                    table(
                        ["read path", "ms per object (median)", "vs boto3 get_object 1 at a time"],
                        [[name, v, f"{v / base:.2f}x"] for name, v in ms.items()],
                    )
                    + "\n",
                    flush=True,
                )

        if "pipeline" in sections:
            results = pipeline_runs(args, local_dir, moto_port, proxy_port, tmp, args.pipeline_args)
            local = (
                statistics.median(args.images / s["wall_seconds"] for s in results.get("local disk", []))
                if results.get("local disk")
                else float("nan")
            )
            rows = []
            for name, runs in results.items():
                walls = [s["wall_seconds"] for s in runs]
                ips = statistics.median(args.images / w for w in walls)
                rows.append(
                    [name, statistics.median(walls), ips, f"{ips / local:.2f}", " / ".join(f"{w:.1f}" for w in walls)]
                )
            print(f"### Pipeline, {args.images} photos (shipped model, Xception, batch {args.batch_size})\n")
            print(
                table(["source", "wall s (median)", "images/s (median)", "ratio to local", "runs (s)"], rows) + "\n",
                flush=True,
            )

        if "listing" in sections:
            proxy.latency = 0.0
            use_endpoint(f"http://127.0.0.1:{moto_port}", tmp)
            runs = bench_listing(args.listing_objects, boto3.client("s3"), proxy, proxy_port, tmp, repeats=3)
            print(f"### Listing one glob over {args.listing_objects} objects (Beam FileSystems.match, fresh process)\n")
            print(
                table(
                    [
                        "run",
                        "objects",
                        "seconds",
                        "listing requests",
                        "object requests",
                        "RSS before MiB",
                        "RSS after MiB",
                        "peak RSS MiB",
                    ],
                    [
                        [
                            i + 1,
                            r["objects"],
                            r["seconds"],
                            r["listing_requests"],
                            r["object_requests"],
                            r["rss_before_mib"],
                            r["rss_after_mib"],
                            r["peak_rss_mib"],
                        ]
                        for i, r in enumerate(runs)
                    ],
                )
            )
    finally:
        proxy.stop()
        stop_process(proc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
