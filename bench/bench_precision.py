"""Encoder precision: float32, bfloat16 (float32 stem) and INT8, for the bare encoder and the
whole pipeline, on real Flickr8k photos (dev split first).

Reproduce (the model must carry an INT8 encoder: ``python -m training.quantize``)::

    python bench/bench_precision.py --images 480 --repeats 3
    python bench/bench_precision.py --model /path/to/artifact --only pipeline --images 960 --repeats 3
    python bench/bench_precision.py --only pipeline --precisions float32 int8 --images 6000 --repeats 3

Variants run interleaved (float32, bf16, INT8, float32, bf16, INT8, ...) so that load from other
jobs on a shared machine falls on all of them alike; medians are reported.

Sections (each prints a Markdown table):
  encoder   bare encoder (OpenVINO, batch 16, pre-decoded 299x299 pixels): images/s, speed-up,
            captions identical to float32 and BLEU-1/4 on these images (beam-3, shipped decoder)
  pipeline  run_pipeline.py end to end on the DirectRunner, warm start (graphs cached by one
            cold run per variant on 32 of the photos first): images/s, speed-up, images per
            core-hour and core-hours per million images
  gate      the INT8 quality gate recorded in the artifact (1,000 dev images, training.quantize)
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from bench.bench_throughput import decode_all, dev_images, link_dir, run_pipeline_once
from bench.common import FLICKR8K, REPO, XCEPTION_WEIGHTS, machine, table

PRECISIONS = ("float32", "bfloat16", "int8")


def encoder_section(args, paths: list[Path]) -> None:
    from model.bleu import bleu_tokens, corpus_bleu_scores
    from model.captioner import load_caption_model
    from model.flickr8k import parse_token_file

    models = {
        p: load_caption_model(
            args.model,
            encoder_weights=args.encoder_weights,
            precision=p,
            runtime="openvino",
            cache=str(args.model_cache_dir),
        )
        for p in PRECISIONS
    }
    pixels = decode_all(paths, models["float32"].image_size)
    b = args.batch_size
    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for p in PRECISIONS:
        models[p].encode(pixels[:b])  # warm up
    for _ in range(args.repeats):
        for p in PRECISIONS:
            started = time.perf_counter()
            for i in range(0, len(pixels), b):
                models[p].encode(pixels[i : i + b])
            times[p].append(time.perf_counter() - started)
    refs_by_id = parse_token_file((FLICKR8K / "Flickr8k.token.txt").read_text())
    refs = [[bleu_tokens(c) for c in refs_by_id[p.name]] for p in paths]
    captions = {}
    for p in PRECISIONS:
        feats = np.concatenate([models[p].encode(pixels[i : i + b]) for i in range(0, len(pixels), b)])
        captions[p] = [r.caption for r in models["float32"].caption_features(feats)]
    rate = {p: len(pixels) / statistics.median(times[p]) for p in PRECISIONS}
    rows = []
    for p in PRECISIONS:
        bleu = corpus_bleu_scores([bleu_tokens(c) for c in captions[p]], refs)
        same = np.mean([a == c for a, c in zip(captions["float32"], captions[p])])
        rows.append(
            [
                p,
                round(rate[p], 2),
                round(rate[p] / rate["float32"], 2),
                f"{100 * same:.1f} %",
                round(bleu["bleu1"], 4),
                round(bleu["bleu4"], 4),
            ]
        )
    print(
        table(
            [
                "encoder precision",
                f"images/s (median of {args.repeats}, interleaved)",
                "speed-up vs float32",
                f"captions identical to float32 ({len(paths)} images)",
                "BLEU-1",
                "BLEU-4",
            ],
            rows,
        )
    )
    print()


def pipeline_section(args, paths: list[Path], work: Path) -> None:
    image_dir = link_dir(paths, work / "pipeline")
    precisions = args.precisions
    extra = {p: ["--model", args.model, "--precision", p, "--encoder_runtime", "openvino"] for p in precisions}
    warm_up_dir = link_dir(paths[:32], work / "warm-up")
    for p in precisions:
        run_pipeline_once(warm_up_dir, args, extra[p])  # cold start: converts and caches the graphs
    runs: dict[str, list[dict]] = {p: [] for p in precisions}
    for _ in range(args.repeats):
        for p in precisions:
            runs[p].append(run_pipeline_once(image_dir, args, extra[p]))
    cores = os.cpu_count() or 1
    rate = {p: statistics.median(r["images_per_second"] for r in runs[p]) for p in precisions}
    rows = []
    for p in precisions:
        per_core_hour = rate[p] * 3600 / cores
        rows.append(
            [
                p,
                " / ".join(f"{r['images_per_second']:.1f}" for r in runs[p]),
                round(rate[p], 2),
                round(rate[p] / rate["float32"], 2),
                int(round(per_core_hour)),
                round(1e6 / per_core_hour, 1),
            ]
        )
    print(
        table(
            [
                "pipeline precision",
                "runs (images/s)",
                f"median images/s ({len(paths)} images)",
                "speed-up vs float32",
                f"images per core-hour ({cores} cores)",
                "core-hours per 1 M images",
            ],
            rows,
        )
    )
    print()


def gate_section(args) -> None:
    from model.artifact import read_artifact

    gate = (read_artifact(args.model).config.encoder.int8 or {}).get("quality_gate")
    if not gate:
        print("(the artifact records no INT8 quality gate)\n")
        return
    rows = [
        [k, round(gate["bleu_float32"][k], 4), round(gate["bleu_quantised"][k], 4), f"{gate['bleu_delta'][k]:+.4f}"]
        for k in ("bleu1", "bleu2", "bleu3", "bleu4")
    ]
    print(
        f"INT8 quality gate recorded in the artifact: {gate['images']} {gate['split']} images, {gate['decode']}, "
        f"identical captions {100 * gate['identical_captions']:.1f} %, feature cosine median "
        f"{gate['feature_cosine']['median']:.4f} / min {gate['feature_cosine']['min']:.4f}"
    )
    print(table(["corpus BLEU", "float32", "INT8", "delta"], rows))
    print()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=480)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32, help="the pipeline's --batch_size (its default)")
    ap.add_argument("--model", default=str(REPO / "models" / "flickr8k-xception"))
    ap.add_argument("--encoder-weights", default=str(XCEPTION_WEIGHTS))
    ap.add_argument(
        "--only", nargs="+", default=["gate", "encoder", "pipeline"], choices=["gate", "encoder", "pipeline"]
    )
    ap.add_argument(
        "--precisions",
        nargs="+",
        default=list(PRECISIONS),
        choices=PRECISIONS,
        help="pipeline section: which precisions to run (float32 first: the speed-ups are against it)",
    )
    args = ap.parse_args()
    if "float32" not in args.precisions:
        ap.error("--precisions must include float32 (the speed-ups are against it)")
    print(f"machine: {machine()}")
    print(f"command: {' '.join(sys.argv)}\n")
    work = Path(tempfile.mkdtemp(prefix="bench-precision-"))
    atexit.register(shutil.rmtree, work, True)
    args.model_cache_dir = work / "model-cache"
    paths = dev_images(args.images)
    if "gate" in args.only:
        gate_section(args)
    if "pipeline" in args.only:  # child processes first, before this process holds any encoder
        pipeline_section(args, paths, work)
    if "encoder" in args.only:
        encoder_section(args, paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
