"""Kill -9 a real captioning run once its progress line says N images are captioned, then finish
it with --resume, and print what was lost and redone (issue 14's acceptance run).

Reproduce::

    python bench/bench_kill_resume.py --images 600 --kill-at 360 --commit-every 16
    nice -n 10 python bench/bench_kill_resume.py --images 4000 --kill-at 2000 --commit-every 64 --precision int8

The first run uses the shipped model with the real Xception weights on Flickr8k photos (symlinks,
so --images may exceed the photos present), ``--progress_seconds 1``; its process group gets
SIGKILL at the first progress line saying >= --kill-at images. The table shows the images
captioned per that line, the rows committed at the kill, what the resumed run captioned and
skipped, and whether every photo ended up exactly once; then each run's images/s (captioned per
second of the whole process, start-up included), the images captioned twice ("redone": captioned
before the kill but not committed) and the peak RSS of each run's process tree (sampled every
0.5 s).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench.bench_throughput import dev_images, link_dir
from bench.common import REPO, XCEPTION_WEIGHTS, machine, process_tree_rss_mib, python, run_with_rss, table


def committed_uris(out: Path) -> list[str]:
    import pyarrow.dataset as pads

    return [
        u
        for sub in ("captions", "errors")
        if (out / sub).is_dir()
        for u in pads.dataset(str(out / sub), format="parquet")
        .to_table(columns=["image_uri"])
        .column("image_uri")
        .to_pylist()
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--kill-at", type=int, default=360)
    ap.add_argument("--commit-every", type=int, default=16)
    ap.add_argument("--commit-seconds", type=float, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--precision", default="float32", help="--precision of both runs (float32, bf16, int8)")
    args = ap.parse_args()
    print(f"machine: {machine()}\ncommand: {' '.join(sys.argv)}\n")
    work = Path(tempfile.mkdtemp(prefix="bench-kill-resume-"))
    images = link_dir(dev_images(args.images), work / "images")
    out = work / "out"
    cmd = [
        python(),
        str(REPO / "run_pipeline.py"),
        "--json",
        "--input",
        f"{images}/*.jpg",
        "--output",
        str(out),
        "--encoder_weights",
        str(XCEPTION_WEIGHTS),
        "--batch_size",
        str(args.batch_size),
        "--commit_every",
        str(args.commit_every),
        "--commit_seconds",
        str(args.commit_seconds),
        "--progress_seconds",
        "1",
        "--precision",
        args.precision,
    ]
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    first_peak = [0.0]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            first_peak[0] = max(first_peak[0], process_tree_rss_mib(proc.pid))
            sampling.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    at_kill = None
    for line in proc.stderr:
        found = re.search(r"progress \(pid \d+\): (\d+) images captioned", line)
        if found and int(found.group(1)) >= args.kill_at:
            os.killpg(proc.pid, signal.SIGKILL)
            at_kill = int(found.group(1))
            break
    proc.wait()
    killed_after = time.monotonic() - started
    sampling.set()
    sampler.join()
    if at_kill is None:
        raise SystemExit(f"the run ended (rc {proc.returncode}) before {args.kill_at} images were captioned")
    committed = committed_uris(out)
    resumed_at = time.monotonic()
    res, resume_peak, _ = run_with_rss(cmd + ["--resume"], cwd=REPO)
    resume_wall = time.monotonic() - resumed_at
    if res.returncode != 0:
        raise SystemExit(f"resume failed:\n{res.stderr[-3000:]}")
    summary = json.loads(res.stdout[res.stdout.index("{") :])
    final = committed_uris(out)
    expected = sorted(str(p) for p in images.iterdir())
    print(
        table(
            [
                "images",
                "commit_every",
                "captioned per last progress line",
                "killed after s",
                "rows committed at kill",
                "resumed: captioned",
                "resumed: failed",
                "resumed: skipped_resume",
                "skipped_from_interrupted",
                "rows in output",
                "distinct",
                "every photo once",
            ],
            [
                [
                    args.images,
                    args.commit_every,
                    at_kill,
                    round(killed_after, 1),
                    len(committed),
                    summary["captioned"],
                    summary["failed"],
                    summary["skipped_resume"],
                    summary["skipped_from_interrupted"],
                    len(final),
                    len(set(final)),
                    sorted(final) == expected,
                ]
            ],
        )
    )
    print()
    print(
        table(
            [
                "precision",
                "first run: images/s (to the kill)",
                "first run: peak RSS MiB",
                "resumed run: images/s",
                "resumed run: wall s",
                "resumed run: peak RSS MiB",
                "redone images (captioned before the kill, not committed)",
                "redone % of all",
            ],
            [
                [
                    args.precision,
                    round(at_kill / killed_after, 2),
                    round(first_peak[0]),
                    round(summary["captioned"] / resume_wall, 2),
                    round(resume_wall, 1),
                    round(resume_peak),
                    at_kill - len(committed),
                    round(100 * (at_kill - len(committed)) / args.images, 2),
                ]
            ],
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
