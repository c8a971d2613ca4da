"""Start-up: ``run_pipeline.py`` from process start to its summary on ONE photo, with a warm
OpenVINO graph cache (one unmeasured run fills it first), on the DirectRunner with the shipped
model and the real Xception weights. Prints each run and min / median / max of the process wall
time, next to the pipeline's own wall time and the model load time (from summary.json).

    python -m bench.bench_startup --runs 15 [--baseline OTHER_CHECKOUT]

``--baseline`` runs another checkout's run_pipeline.py (its own packages first on the path)
interleaved with this one, run for run, so both see the same machine load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import FLICKR8K, REPO, XCEPTION_WEIGHTS, machine, python, table


def one_run(photo_dir: Path, out: Path, cache: Path, repo: Path = REPO) -> tuple[float, dict]:
    cmd = [
        python(),
        str(repo / "run_pipeline.py"),
        "--json",
        "--input",
        f"{photo_dir}/*.jpg",
        "--output",
        str(out),
        "--encoder_weights",
        str(XCEPTION_WEIGHTS),
        "--model_cache_dir",
        str(cache),
    ]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    started = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=repo, env=env)
    wall = time.perf_counter() - started
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    return wall, json.loads(res.stdout[res.stdout.index("{") :])


def stats_rows(label: str, walls: list[float], pipeline_walls: list[float], loads: list[float]) -> list[list]:
    return [
        [
            f"{label}: process start to summary s",
            f"{min(walls):.2f}",
            f"{statistics.median(walls):.2f}",
            f"{max(walls):.2f}",
        ],
        [f"{label}: pipeline wall s", min(pipeline_walls), statistics.median(pipeline_walls), max(pipeline_walls)],
        [f"{label}: model load s", min(loads), statistics.median(loads), max(loads)],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout, run interleaved")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    photo_dir = work / "photo"
    photo_dir.mkdir()
    first = sorted((FLICKR8K / "images").glob("*.jpg"))[0]
    shutil.copy(first, photo_dir / first.name)
    repos = {"this": REPO, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    for label, repo in repos.items():  # fills each checkout's graph cache (cache keys may differ)
        one_run(photo_dir, work / f"warm-up-{label}", work / f"cache-{label}", repo)
    rows = []
    measured: dict[str, tuple[list, list, list]] = {label: ([], [], []) for label in repos}
    for i in range(args.runs):
        for label, repo in repos.items():
            wall, summary = one_run(photo_dir, work / f"out-{label}-{i}", work / f"cache-{label}", repo)
            walls, pipeline_walls, loads = measured[label]
            walls.append(wall)
            pipeline_walls.append(summary["wall_seconds"])
            loads.append(summary["model_load_seconds"])
            rows.append([i + 1, label, f"{wall:.2f}", summary["wall_seconds"], summary["model_load_seconds"]])
    shutil.rmtree(work, ignore_errors=True)
    print(f"machine: {machine()}")
    print(table(["run", "checkout", "process start to summary s", "pipeline wall s", "model load s"], rows))
    print(
        table(
            ["", "min", "median", "max"],
            [row for label, values in measured.items() for row in stats_rows(label, *values)],
        )
    )


if __name__ == "__main__":
    main()
