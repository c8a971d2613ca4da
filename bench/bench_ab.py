"""Interleaved A/B of the pipeline section of bench_throughput.py: run_pipeline.py from another
checkout (A, e.g. the commit before a change) and from this one (B), on the same photos with the
same flags, warm starts (one shared OpenVINO graph cache, warmed first by one uncounted run of each
build); the order alternates per round (A B, B A, A B, ...), so use an even number of rounds.

Reproduce (A = an exported copy of the baseline commit; without ``--model`` each build captions
with its own shipped model, and the harness warns that it timed two models)::

    git archive 94b5a4f | tar -x -C /tmp/base   # the baseline, outside this checkout
    python bench/bench_ab.py --baseline /tmp/base --images 480 --repeats 4 \
      --extra=--model --extra=/tmp/base/models/flickr8k-xception

Prints each run's images/s (from the run's own summary) and the medians; B/A < 1 means B is slower.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench.bench_throughput import dev_images, link_dir, pipeline_command, pipeline_summary
from bench.common import REPO, SHARED, XCEPTION_WEIGHTS, machine, table


def run_from(repo: Path, image_dir: Path, args: argparse.Namespace) -> dict:
    """One run of ``repo``'s run_pipeline.py (its own packages first on the path)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = pipeline_command(image_dir, f"{tmp}/out", args, args.extra)
        cmd[1] = str(repo / "run_pipeline.py")
        env = dict(os.environ, PYTHONPATH=str(repo), CAPTION_SHARED_DIR=str(SHARED))
        return pipeline_summary(subprocess.run(cmd, capture_output=True, text=True, cwd=repo, env=env))


def build_parser() -> argparse.ArgumentParser:
    """The command line (``--extra`` collects one run_pipeline.py argument per use, in order)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", type=Path, required=True, help="checkout of the baseline (A)")
    ap.add_argument("--images", type=int, default=480)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument(
        "--extra",
        action="append",
        default=[],
        help="one more run_pipeline.py argument for both builds; repeat it (--extra=--model --extra=DIR)",
    )
    return ap


def main() -> int:
    args = build_parser().parse_args()
    args.encoder_weights = XCEPTION_WEIGHTS
    print(f"machine: {machine()}\ncommand: {' '.join(sys.argv)}\n")
    work = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    args.model_cache_dir = work / "model-cache"
    image_dir = link_dir(dev_images(args.images), work / "images")
    pair = (("A", args.baseline.resolve()), ("B", REPO))
    for _, repo in pair:  # each build converts its own graphs into the shared cache once (not counted)
        run_from(repo, image_dir, args)
    rates: dict[str, list[float]] = {"A": [], "B": []}
    models: dict[str, set[str]] = {"A": set(), "B": set()}
    rows = []
    for i in range(args.repeats):
        # A B, then B A, ...: a build that always runs second in its round would carry any effect
        # of the order (the previous run's leftovers in caches, the host's own rhythm) alone.
        for label, repo in pair if i % 2 == 0 else pair[::-1]:
            s = run_from(repo, image_dir, args)
            rates[label].append(s["images_per_second"])
            models[label].add(f"{s.get('model_id')} ({s.get('decode')})")
            rows.append([i + 1, label, s["captioned"], s["wall_seconds"], s["images_per_second"]])
            print(f"run {i + 1} {label}: {s['images_per_second']} images/s", flush=True)
    print(table(["round", "build", "captioned", "wall s", "images/s"], rows))
    print(f"models: A {sorted(models['A'])}, B {sorted(models['B'])}")
    if models["A"] != models["B"]:
        # Each build's default model is its own shipped one: comparing them times two models, not two builds.
        print("WARNING: A and B captioned with different models (pass the same --extra=--model --extra=DIR to both)")
    a, b = statistics.median(rates["A"]), statistics.median(rates["B"])
    print()
    print(
        table(["median images/s A (baseline)", "median images/s B (this checkout)", "B/A"], [[a, b, round(b / a, 3)]])
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
