"""The issue-18 "done when" case on every engine: N Flickr8k photos + 2 bad files with the shipped
model and the real Xception weights, on the DirectRunner, a Dask cluster (scheduler + 2 worker
processes) and Beam's portable runner (job service + EXTERNAL worker pool), services started on
127.0.0.1 and stopped here. Prints one table: inputs accounted for, model loads, captions equal to
the DirectRunner's, wall time.

    python -m bench.bench_engines --photos 60
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import FLICKR8K, XCEPTION_WEIGHTS, machine, table
from tests.engine_services import beam_job_service, dask_cluster
from tests.pipeline_helpers import read_rows, run_pipeline


def _run(photos: Path, out: Path, extra: list[str]) -> tuple[dict, dict, dict, float]:
    started = time.perf_counter()
    summary = run_pipeline(["--input", f"{photos}/*.jpg", "--output", str(out),
                            "--encoder_weights", str(XCEPTION_WEIGHTS), *extra])
    wall = time.perf_counter() - started
    captions, errors = read_rows(out, "captions"), read_rows(out, "errors")
    uris = [r["image_uri"] for r in captions + errors]
    assert len(uris) == len(set(uris)), "an input has two rows"
    return (summary, {r["image_uri"]: r["caption"] for r in captions},
            {r["image_uri"]: r["error_type"] for r in errors}, wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=60)
    parser.add_argument("--engines", default="direct,dask,portable")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    photos = work / "photos"
    photos.mkdir()
    for src in sorted((FLICKR8K / "images").glob("*.jpg"))[:args.photos]:
        shutil.copy(src, photos / src.name)
    (photos / "not_a_photo.jpg").write_text("<html>404</html>")
    (photos / "empty.jpg").write_bytes(b"")
    results = {}
    for engine in args.engines.split(","):
        out = work / f"out-{engine}"
        if engine == "direct":
            results[engine] = _run(photos, out, [])
        elif engine == "dask":
            with dask_cluster(work / "logs", workers=2) as address:
                results[engine] = _run(photos, out, ["--runner", "DaskRunner", "--dask_client_address", address,
                                                     "--dask_npartitions", "4"])
        elif engine == "portable":
            with beam_job_service(work / "logs") as (job_endpoint, pool):
                results[engine] = _run(photos, out, ["--runner", "PortableRunner", "--job_endpoint", job_endpoint,
                                                     "--environment_type", "EXTERNAL", "--environment_config", pool])
    reference = results.get("direct")
    rows = []
    for engine, (summary, captions, errors, wall) in results.items():
        same = "—" if reference is None or engine == "direct" else \
            f"{sum(captions.get(u) == c for u, c in reference[1].items())}/{len(reference[1])}"
        rows.append([engine, args.photos + 2, summary["matched"], summary["captioned"], summary["failed"],
                     len(captions) + len(errors), summary["model_loads"], summary["worker_processes"], same,
                     f"{wall:.0f}"])
    print(f"machine: {machine()}")
    print(table(["engine", "inputs", "matched", "captioned", "failed", "rows written", "model loads",
                 "captioning processes", "captions = DirectRunner's", "wall s"], rows))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
