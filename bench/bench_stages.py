"""Per-stage CPU cost of captioning one image, next to the whole pipeline's (issue 31).

Each stage runs alone in this process over the same N dev photos, with the shipped model (``--model``), and is
charged the CPU time of the whole process (all threads: OpenVINO's included) while it runs:

  read      the file's bytes (``object_reads.read_local_limited``, as the pipeline reads local files)
  sha256    the ``image_sha256`` column
  decode    decode + upright + resize to the model's input (``model.image_loading.decode_image``)
  encoder   the encoder on batches of ``--batch_size`` (the pipeline's default)
  search    the caption search on those features, with the artifact's decode settings
  rows      ``records.caption_row`` per image
  commit    the caption rows to Parquet bytes and an atomic write, per ``--commit_every`` rows

The whole pipeline (``run_pipeline.py`` on the DirectRunner, a subprocess) is charged its CPU time
(user + system of the process tree) and wall time, **marginal** over N vs ``--small`` photos
(default N/4; issue 31 states its ratio over 1,000 vs 100), so that start-up and model loading
cancel out; "Beam and the rest" is the pipeline's marginal CPU per image minus the sum of the
stages. The last table puts the pipeline's marginal images/s next to the bare encoder's (wall,
pixels decoded beforehand): issue 31's ratio. The bare encoder is timed before each round's two
pipeline runs and again after them, and each round's ratio is taken against the mean of the two:
this machine's speed drifts by several per cent within minutes (docs/PERFORMANCE.md §13d), and
a bracket cancels a drift that is linear over the round.

    python -m bench.bench_stages --images 400 --precision int8 --runs 3
    python -m bench.bench_stages --images 1000 --small 100 --precision int8 --runs 3   # issue 31's ratio
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_throughput import dev_images, link_dir
from bench.common import REPO, XCEPTION_WEIGHTS, machine, python, table

STAGES = ("read", "sha256", "decode", "encoder", "search", "rows", "commit")


def cpu_seconds(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(process CPU s, wall s, result) of ``fn()``."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn()
    return time.process_time() - cpu, time.perf_counter() - wall, result


def timed_encoder(model: Any, pixels: np.ndarray, batch_size: int) -> tuple[float, float, list[np.ndarray]]:
    """(CPU s, wall s, features per batch) of the encoder over ``pixels`` in batches, after one
    untimed batch (the first call compiles and warms the request). The features stay per batch,
    as the pipeline keeps them (one array of every image's map would be a copy of hundreds of MB
    that the pipeline never makes)."""
    batches = [pixels[i : i + batch_size] for i in range(0, len(pixels), batch_size)]
    model.encode(batches[0])
    return cpu_seconds(lambda: [model.encode(b) for b in batches])


def stage_costs(
    photos: list[Path], precision: str, batch_size: int, commit_every: int, cache: str, model_dir: str
) -> dict[str, Any]:
    """CPU ms per image of each stage, the bare encoder's wall images/s, in this process, and
    ``time_encoder_again``: a call that times the bare encoder once more on the same pixels (the
    loaded model and decoded photos kept for it) and returns its images/s."""
    from beam_pipeline.commits import parquet_bytes
    from beam_pipeline.object_reads import read_local_limited
    from beam_pipeline.records import ImageRecord, ImageRef, caption_row
    from beam_pipeline.schemas import caption_schema
    from model.captioner import load_caption_model
    from model.image_loading import DEFAULT_MAX_BYTES, decode_image
    from model.storage import write_atomically

    model = load_caption_model(
        model_dir,
        encoder_weights=str(XCEPTION_WEIGHTS),
        precision=precision,
        cache=cache,
    )
    n = len(photos)
    cost: dict[str, float] = {}
    cpu, _, blobs = cpu_seconds(lambda: [read_local_limited(str(p), DEFAULT_MAX_BYTES) for p in photos])
    cost["read"] = cpu
    cost["sha256"], _, hashes = cpu_seconds(lambda: [hashlib.sha256(b).hexdigest() for b in blobs])
    cost["decode"], _, decoded = cpu_seconds(lambda: [decode_image(b, model.image_size) for b in blobs])
    pixels = np.stack([d.pixels for d in decoded])
    cost["encoder"], encoder_wall, features = timed_encoder(model, pixels, batch_size)
    model.caption_features(features[0])
    cost["search"], _, results = cpu_seconds(lambda: [r for f in features for r in model.caption_features(f)])
    records = [
        ImageRecord(ImageRef(str(p), p.name, len(b)), d.pixels, d.width, d.height, h)
        for p, b, d, h in zip(photos, blobs, decoded, hashes)
    ]
    settings = model.default_settings.describe()
    cost["rows"], _, rows = cpu_seconds(
        lambda: [
            caption_row(rec, res.caption, res.score, settings, model.model_id, model.encoder_name)
            for rec, res in zip(records, results)
        ]
    )
    schema = caption_schema()
    with tempfile.TemporaryDirectory(prefix="bench-stages-commit-") as folder:
        cost["commit"], _, _ = cpu_seconds(
            lambda: [
                write_atomically(
                    os.path.join(folder, f"part-{i}.parquet"), parquet_bytes(rows[i : i + commit_every], schema)
                )
                for i in range(0, n, commit_every)
            ]
        )
    return {
        "ms": {k: 1000 * v / n for k, v in cost.items()},
        "encoder_images_per_s": n / encoder_wall,
        "time_encoder_again": lambda: n / timed_encoder(model, pixels, batch_size)[1],
    }


def pipeline_run(photos: list[Path], precision: str, work: Path, cache: str, model_dir: str) -> tuple[float, float]:
    """(CPU s of the process tree, wall s) of ``run_pipeline.py`` over ``photos`` (a glob of links)."""
    inputs = link_dir(photos, work / f"in-{len(photos)}")
    out = work / f"out-{len(photos)}-{time.monotonic_ns()}"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        [
            python(),
            str(REPO / "run_pipeline.py"),
            "--json",
            "--input",
            f"{inputs}/*.jpg",
            "--output",
            str(out),
            "--encoder_weights",
            str(XCEPTION_WEIGHTS),
            "--precision",
            precision,
            "--model_cache_dir",
            cache,
            "--model",
            model_dir,
        ],
        check=True,
        capture_output=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    for path in sorted(inputs.iterdir()):
        path.unlink()
    inputs.rmdir()
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument(
        "--small", type=int, default=None, help="photos of the small run that the marginal rate subtracts (default N/4)"
    )
    parser.add_argument("--precision", default="int8", choices=["float32", "bfloat16", "int8"])
    parser.add_argument("--runs", type=int, default=3, help="interleaved repetitions; medians are reported")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--commit_every", type=int, default=256)
    parser.add_argument("--model", default=str(REPO / "models" / "flickr8k-xception"), help="model artifact")
    args = parser.parse_args()
    photos = dev_images(args.images)
    small = photos[: args.small or max(1, args.images // 4)]
    work = Path(tempfile.mkdtemp(prefix="bench-stages-"))
    cache = str(work / "graph-cache")
    pipeline_run(small, args.precision, work, cache, args.model)  # fills the graph cache: later runs start warm
    stage_runs: list[dict[str, Any]] = []
    marginal_cpu, marginal_rate, bracket = [], [], []
    for _ in range(args.runs):
        stages = stage_costs(photos, args.precision, args.batch_size, args.commit_every, cache, args.model)
        stage_runs.append(stages)
        cpu_big, wall_big = pipeline_run(photos, args.precision, work, cache, args.model)
        cpu_small, wall_small = pipeline_run(small, args.precision, work, cache, args.model)
        bracket.append((stages["encoder_images_per_s"] + stages.pop("time_encoder_again")()) / 2)
        extra = len(photos) - len(small)
        marginal_cpu.append(1000 * (cpu_big - cpu_small) / extra)
        marginal_rate.append(extra / (wall_big - wall_small))
    ms = {stage: statistics.median(r["ms"][stage] for r in stage_runs) for stage in STAGES}
    pipeline_ms = statistics.median(marginal_cpu)
    rest = pipeline_ms - sum(ms.values())
    rows = [[stage, f"{ms[stage]:.3f}", f"{100 * ms[stage] / pipeline_ms:.1f} %"] for stage in STAGES]
    rows.append(["Beam and the rest (pipeline − stages)", f"{rest:.2f}", f"{100 * rest / pipeline_ms:.1f} %"])
    rows.append(["whole pipeline, marginal", f"{pipeline_ms:.2f}", "100 %"])
    print(f"machine: {machine()}; load average before: {os.getloadavg()[0]:.2f}")
    print(
        f"{args.images} vs {len(small)} dev photos, --precision {args.precision}, {args.runs} interleaved runs, medians"
    )
    print(table(["stage", "CPU ms / image", "share of the pipeline's CPU"], rows))
    encoder_rate = statistics.median(r["encoder_images_per_s"] for r in stage_runs)
    pipeline_rate = statistics.median(marginal_rate)
    print(
        table(
            [
                "bare encoder images/s (wall)",
                "pipeline marginal images/s (wall)",
                "pipeline / encoder",
                "per-run pipeline images/s",
            ],
            [
                [
                    f"{encoder_rate:.1f}",
                    f"{pipeline_rate:.1f}",
                    f"{pipeline_rate / encoder_rate:.3f}",
                    ", ".join(f"{r:.1f}" for r in marginal_rate),
                ]
            ],
        )
    )
    print(
        table(
            ["round", "bare encoder images/s, mean of before and after", "pipeline marginal images/s", "ratio"],
            [[i + 1, f"{b:.1f}", f"{r:.1f}", f"{r / b:.3f}"] for i, (b, r) in enumerate(zip(bracket, marginal_rate))]
            + [["median", "", "", f"{statistics.median(r / b for b, r in zip(bracket, marginal_rate)):.3f}"]],
        )
    )


if __name__ == "__main__":
    main()
