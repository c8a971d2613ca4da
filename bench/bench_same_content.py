"""Saving of ``--skip_known_content`` on a run where half the images are byte-identical copies.

N real Flickr8k dev photos: N/2 distinct ones, each present twice under two names (the second a
byte-identical copy). The shipped model captions them with and without the flag, interleaved
(A B A B ...), each in a fresh output directory; the table shows median wall time (whole
``run_pipeline.py`` process, model load included) and the pipeline's own wall_seconds.

    python bench/bench_same_content.py --images 96 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench.bench_throughput import dev_images, pipeline_command, pipeline_summary
from bench.common import REPO, XCEPTION_WEIGHTS, machine, table


def half_copies(n: int, root: Path) -> Path:
    """n files: n/2 distinct photos, each written twice under two names (real copies, not links)."""
    root.mkdir(parents=True, exist_ok=True)
    for i, photo in enumerate(dev_images(n // 2)):
        data = photo.read_bytes()
        (root / f"{i:06d}_a_{photo.name}").write_bytes(data)
        (root / f"{i:06d}_b_{photo.name}").write_bytes(data)
    return root


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--encoder-weights", default=str(XCEPTION_WEIGHTS))
    args = ap.parse_args()
    variants = {"default": [], "--skip_known_content": ["--skip_known_content"]}
    walls: dict[str, list[float]] = {v: [] for v in variants}
    pipeline_walls: dict[str, list[float]] = {v: [] for v in variants}
    model_runs: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        images = half_copies(args.images, Path(tmp) / "images")
        args.model_cache_dir = str(Path(tmp) / "cache")
        subprocess.run(pipeline_command(images, f"{tmp}/warm", args), capture_output=True, cwd=REPO)  # fill the cache
        for r in range(args.repeats):
            for name, extra in variants.items():
                started = time.perf_counter()
                res = subprocess.run(
                    pipeline_command(images, f"{tmp}/{r}-{len(extra)}", args, extra),
                    capture_output=True,
                    text=True,
                    cwd=REPO,
                )
                wall = time.perf_counter() - started
                summary = pipeline_summary(res)
                assert summary["captioned"] == args.images // 2 * 2, summary
                walls[name].append(wall)
                pipeline_walls[name].append(summary["wall_seconds"])
                model_runs[name] = summary["counters"]["images_captioned"]
                print(f"repeat {r} {name}: {wall:.1f} s", flush=True)
    rows = [
        [
            name,
            args.images,
            model_runs[name],
            statistics.median(walls[name]),
            statistics.median(pipeline_walls[name]),
            " ".join(f"{w:.1f}" for w in walls[name]),
        ]
        for name in variants
    ]
    print(f"\nmachine: {machine()}")
    print(
        table(
            ["variant", "images", "through the model", "median process s", "median pipeline s", "process s (all runs)"],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
