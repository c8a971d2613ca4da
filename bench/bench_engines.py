"""The issue-18 "done when" case on every engine: N Flickr8k photos + 2 bad files with the shipped
model and the real Xception weights, on the DirectRunner, a Dask cluster (scheduler + 2 worker
processes) and Beam's portable runner (job service + EXTERNAL worker pool), services started on
127.0.0.1 and stopped here. Prints one table: inputs accounted for, model loads, captions equal to
the DirectRunner's, wall time.

    python -m bench.bench_engines --photos 60

``--scaling`` measures instead how the Dask runner scales: the same photos on a cluster of 1 and
of 2 worker processes (each ``--nthreads 1``, the model limited to 1 core per process with
``CAPTION_MODEL_THREADS=1``; with ``--pin_cores`` each worker process pinned to its own core, so
that the single worker cannot borrow the idle core for its helper threads), ``--rounds``
interleaved rounds; prints images/s per run, the
medians and the speed-up, and how many photos each worker process captioned.

    python -m bench.bench_engines --scaling --photos 300 --rounds 3 [--pin_cores]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import FLICKR8K, XCEPTION_WEIGHTS, machine, table
from tests.engine_services import beam_job_service, dask_cluster, dask_runner_flags, portable_runner_flags
from tests.pipeline_helpers import read_rows, run_pipeline


def _run(photos: Path, out: Path, extra: list[str]) -> tuple[dict, dict, dict, float]:
    started = time.perf_counter()
    summary = run_pipeline(
        ["--input", f"{photos}/*.jpg", "--output", str(out), "--encoder_weights", str(XCEPTION_WEIGHTS), *extra]
    )
    wall = time.perf_counter() - started
    captions, errors = read_rows(out, "captions"), read_rows(out, "errors")
    uris = [r["image_uri"] for r in captions + errors]
    assert len(uris) == len(set(uris)), "an input has two rows"
    return (
        summary,
        {r["image_uri"]: r["caption"] for r in captions},
        {r["image_uri"]: r["error_type"] for r in errors},
        wall,
    )


def scaling(work: Path, photos: Path, count: int, rounds: int, npartitions: int, pin_cores: bool) -> None:
    """1 vs 2 Dask worker processes, 1 thread and 1 model core each, interleaved rounds
    (``pin_cores``: each worker process pinned to its own core)."""
    os.environ["CAPTION_MODEL_THREADS"] = "1"  # inherited by the worker processes
    rates: dict[int, list[float]] = {1: [], 2: []}
    rows = []
    for r in range(rounds):
        for workers in (1, 2):
            out = work / f"out-{workers}-{r}"
            with dask_cluster(work / "logs", workers=workers, pin_cores=pin_cores) as address:
                summary, captions, _, wall = _run(photos, out, dask_runner_flags(address, npartitions))
            assert summary["captioned"] == len(captions) == count, summary
            rates[workers].append(summary["images_per_second"])
            shares = sorted(summary["captioned_per_process"].values(), reverse=True)
            rows.append(
                [
                    r + 1,
                    workers,
                    summary["captioned"],
                    summary["wall_seconds"],
                    summary["images_per_second"],
                    " / ".join(map(str, shares)),
                ]
            )
            shutil.rmtree(out, ignore_errors=True)
    print(f"machine: {machine()}; worker processes {'each pinned to one core' if pin_cores else 'unpinned'}")
    print(table(["round", "worker processes", "captioned", "pipeline wall s", "images/s", "photos per process"], rows))
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    print(
        table(
            ["worker processes", "median images/s", "speed-up"],
            [[1, f"{one:.2f}", "1.00x"], [2, f"{two:.2f}", f"{two / one:.2f}x"]],
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=60)
    parser.add_argument("--engines", default="direct,dask,portable")
    parser.add_argument("--scaling", action="store_true", help="Dask: 1 vs 2 worker processes (see above)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dask_npartitions", type=int, default=4)
    parser.add_argument(
        "--pin_cores",
        action="store_true",
        help="--scaling: pin worker process i to core i (taskset), so 1 worker has exactly 1 core",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    photos = work / "photos"
    photos.mkdir()
    for src in sorted((FLICKR8K / "images").glob("*.jpg"))[: args.photos]:
        shutil.copy(src, photos / src.name)
    if args.scaling:
        scaling(work, photos, args.photos, args.rounds, args.dask_npartitions, args.pin_cores)
        shutil.rmtree(work, ignore_errors=True)
        return
    (photos / "not_a_photo.jpg").write_text("<html>404</html>")
    (photos / "empty.jpg").write_bytes(b"")
    results = {}
    for engine in args.engines.split(","):
        out = work / f"out-{engine}"
        if engine == "direct":
            results[engine] = _run(photos, out, [])
        elif engine == "dask":
            with dask_cluster(work / "logs", workers=2) as address:
                results[engine] = _run(photos, out, dask_runner_flags(address, 4))
        elif engine == "portable":
            with beam_job_service(work / "logs") as (job_endpoint, pool):
                results[engine] = _run(photos, out, portable_runner_flags(job_endpoint, pool))
    reference = results.get("direct")
    rows = []
    for engine, (summary, captions, errors, wall) in results.items():
        same = (
            "—"
            if reference is None or engine == "direct"
            else f"{sum(captions.get(u) == c for u, c in reference[1].items())}/{len(reference[1])}"
        )
        rows.append(
            [
                engine,
                args.photos + 2,
                summary["matched"],
                summary["captioned"],
                summary["failed"],
                len(captions) + len(errors),
                summary["model_loads"],
                summary["worker_processes"],
                same,
                f"{wall:.0f}",
            ]
        )
    print(f"machine: {machine()}")
    print(
        table(
            [
                "engine",
                "inputs",
                "matched",
                "captioned",
                "failed",
                "rows written",
                "model loads",
                "captioning processes",
                "captions = DirectRunner's",
                "wall s",
            ],
            rows,
        )
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
