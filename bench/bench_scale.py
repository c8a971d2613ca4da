"""``--inventory`` at lake scale: wall time and peak RSS of the driver and the workers.

A corpus of N inputs is built in a temp folder (never in the repository): ``--distinct`` real
Flickr8k photos copied once, then hard links to them (N / distinct names per photo, in folders
of 1,000) and ``--broken`` small files with distinct junk content named .jpg. The inventory
runs as its own process (``run_pipeline.py --inventory``); a sampler thread reads the RSS of that
process (the driver; with the DirectRunner's default in-process mode it is also the worker) and
of its children (worker processes, e.g. ``--direct_running_mode multi_processing``) every 0.2 s.
The corpus is deleted at the end.

    nice -n 10 python bench/bench_scale.py --inputs 100000 --distinct 1000 --broken 10
    nice -n 10 python bench/bench_scale.py --inputs 100000 300000 --dask 2

Targets (issue 30): 100,010 inputs -> matched 100,010, distinct_content 1,010, 10 unreadable,
under 20 minutes, peak RSS under 2 GB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import FLICKR8K, REPO, machine, processes_rss_mib, table


def build_corpus(root: Path, inputs: int, distinct: int, broken: int) -> str:
    """``inputs`` hard links to ``distinct`` photos plus ``broken`` junk files; returns the glob."""
    photos = sorted((FLICKR8K / "images").glob("*.jpg"))[:distinct]
    if len(photos) < distinct:
        raise SystemExit(f"need {distinct} photos in {FLICKR8K / 'images'}")
    source = root / "source"
    source.mkdir(parents=True)
    copies = []
    for photo in photos:
        shutil.copyfile(photo, source / photo.name)
        copies.append(source / photo.name)
    lake = root / "lake"
    for i in range(inputs):
        folder = lake / f"d{i // 1000:05d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True)
        os.link(copies[i % distinct], folder / f"{i:07d}.jpg")
    bad = lake / "broken"
    bad.mkdir(parents=True)
    for i in range(broken):
        (bad / f"bad{i:03d}.jpg").write_text(f"not an image, broken file number {i}\n")
    return f"{lake}/*/*.jpg"


def rss_mib(proc) -> tuple[float, float]:  # noqa: ANN001 - a psutil.Process
    """(driver RSS, workers' RSS) in MiB: the driver's children, and with ``--dask`` the cluster's
    processes (children of this benchmark process other than the driver)."""
    import psutil

    try:
        driver = proc.memory_info().rss
        workers = proc.children(recursive=True)
        workers += [p for p in psutil.Process().children(recursive=True) if p.pid != proc.pid and p not in workers]
    except psutil.Error:
        return 0.0, 0.0
    return driver / 2**20, processes_rss_mib(workers)


def run_inventory(pattern: str, out: Path, extra: list[str]) -> tuple[dict, float, float, float]:
    """(summary, wall seconds, peak driver MiB, peak workers MiB) of one inventory process."""
    import psutil

    cmd = [
        sys.executable,
        str(REPO / "run_pipeline.py"),
        "--json",
        "--inventory",
        "--input",
        pattern,
        "--output",
        str(out),
        *extra,
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    watched = psutil.Process(proc.pid)
    peaks = [0.0, 0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            driver, workers = rss_mib(watched)
            peaks[0], peaks[1] = max(peaks[0], driver), max(peaks[1], workers)
            done.wait(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    stdout, stderr = proc.communicate()
    wall = time.monotonic() - started
    done.set()
    thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"inventory failed ({proc.returncode}):\n{stderr[-4000:]}")
    return json.loads(stdout[stdout.index("{") :]), wall, peaks[0], peaks[1]


SYNC_CHILD = r"""
import datetime as dt, json, resource, sys, time
import pyarrow as pa, pyarrow.parquet as pq
from beam_pipeline.lake_table import sync_output_to_table
from beam_pipeline.schemas import caption_schema
out, rows, changed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
def write(name, start, count, when, caption):
    pq.write_table(pa.Table.from_pylist([{
        "image_uri": f"/lake/d{i // 1000:05d}/{i:08d}.jpg", "image_id": f"{i:08d}.jpg",
        "caption": caption, "score": -1.0, "decode": "beam", "model_id": "m", "encoder": "xception", "width": 224,
        "height": 224, "processed_at": when, "image_sha256": f"{i:064x}", "caption_source": "model",
        "source_size": 30000, "source_mtime": t0} for i in range(start, start + count)], schema=caption_schema()),
        f"{out}/captions/{name}.parquet")
import os; os.makedirs(f"{out}/captions")
for k in range(0, rows, 100000):
    write(f"part-a{k:08d}", k, min(100000, rows - k), t0, "a dog runs on the grass")
t = time.monotonic(); first = sync_output_to_table("bench", "lake.captions", out, False); t1 = time.monotonic() - t
write("part-b", 0, changed, t0 + dt.timedelta(hours=1), "a new caption")
t = time.monotonic(); second = sync_output_to_table("bench", "lake.captions", out, False); t2 = time.monotonic() - t
peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"first_s": t1, "second_s": t2, "appended": first["captions"]["appended"],
                  "replaced": second["captions"]["replaced"], "peak_rss_mib": peak_mib}))
"""


def sync_rss(rows: int, changed: int, workdir: Path) -> dict:
    """The Iceberg sync in the driver (``lake_table.sync_output_to_table``) over ``rows`` committed
    caption rows into a new table (SQL catalog on SQLite, local warehouse), then again after
    ``changed`` rows were captioned again; the peak RSS of that process."""
    root = Path(tempfile.mkdtemp(prefix="bench-scale-sync-", dir=workdir))
    try:
        env = dict(
            os.environ,
            PYTHONPATH=str(REPO),
            PYICEBERG_CATALOG__BENCH__TYPE="sql",
            PYICEBERG_CATALOG__BENCH__URI=f"sqlite:///{root}/catalog.db",
            PYICEBERG_CATALOG__BENCH__WAREHOUSE=f"file://{root}/warehouse",
        )
        done = subprocess.run(
            [sys.executable, "-c", SYNC_CHILD, str(root / "out"), str(rows), str(changed)],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
        )
        if done.returncode != 0:
            raise SystemExit(f"sync benchmark failed:\n{done.stderr[-4000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, nargs="+", default=[100_000], help="hard links (one run per value)")
    ap.add_argument("--distinct", type=int, default=1000)
    ap.add_argument("--broken", type=int, default=10)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument(
        "--dask",
        type=int,
        default=0,
        help="run on a local Dask cluster with this many workers (started here, on 127.0.0.1)",
    )
    ap.add_argument(
        "--sync-rows",
        type=int,
        nargs="*",
        default=[],
        help="instead: peak RSS of the Iceberg sync over this many committed caption rows",
    )
    ap.add_argument("extra", nargs="*", help="more run_pipeline.py flags (after --)")
    args = ap.parse_args()
    print(machine())
    if args.sync_rows:
        rows = []
        for n in args.sync_rows:
            r = sync_rss(n, 1000, args.workdir)
            rows.append(
                [
                    n,
                    r["appended"],
                    f"{r['first_s']:.1f}",
                    r["replaced"],
                    f"{r['second_s']:.1f}",
                    f"{r['peak_rss_mib']:.0f}",
                ]
            )
        print(
            table(
                ["committed rows", "appended", "first sync (s)", "replaced", "second sync (s)", "peak RSS (MiB)"], rows
            )
        )
        return 0
    with contextlib.ExitStack() as stack:
        if args.dask:
            from tests.engine_services import dask_cluster, dask_runner_flags

            logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-scale-dask-")))
            address = stack.enter_context(dask_cluster(logs, workers=args.dask))
            args.extra += dask_runner_flags(address, 2 * args.dask)
        return run_all(args)


def run_all(args: argparse.Namespace) -> int:
    rows = []
    for n in args.inputs:
        root = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.workdir))
        try:
            t = time.monotonic()
            pattern = build_corpus(root, n, args.distinct, args.broken)
            built = time.monotonic() - t
            summary, wall, driver, workers = run_inventory(pattern, root / "out", args.extra)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        expected = (n + args.broken, args.distinct + args.broken, args.broken)
        got = (summary["matched"], summary["distinct_content"], summary["unreadable"])
        rows.append(
            [
                n + args.broken,
                summary["matched"],
                summary["distinct_content"],
                summary["unreadable"],
                "yes" if got == expected else f"NO, expected {expected}",
                f"{built:.0f}",
                f"{wall:.0f}",
                f"{summary['inputs_per_second']:.0f}",
                f"{driver:.0f}",
                f"{workers:.0f}",
            ]
        )
        print(
            json.dumps(
                {
                    k: summary[k]
                    for k in (
                        "matched",
                        "readable",
                        "unreadable_by_type",
                        "distinct_content",
                        "duplicate_inputs",
                        "bytes",
                        "wall_seconds",
                    )
                }
            ),
            flush=True,
        )
    print(
        table(
            [
                "inputs",
                "matched",
                "distinct_content",
                "unreadable",
                "as expected",
                "corpus built (s)",
                "inventory wall (s)",
                "inputs/s",
                "peak RSS driver (MiB)",
                "peak RSS workers (MiB)",
            ],
            rows,
        )
    )
    print("flags:", " ".join(args.extra) or "(DirectRunner defaults)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
