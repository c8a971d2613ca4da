"""Soak run: ``run_pipeline.py`` over many small generated images, sampling memory as it goes.

Reproduce (on an otherwise idle machine; ~20,000 images, a few minutes)::

    python bench/bench_soak.py                  # 20,000 images
    python bench/bench_soak.py --images 2000    # short check

What it does:

1. writes N small JPEGs (default 64x64) into a temporary folder: a few dozen distinct encoded
   photo-like variants, each file made unique by a JPEG comment holding its index (fast:
   ~1 s per 10,000 files);
2. builds the tiny test model (``tests.factories.make_tiny_artifact``: MobileNetV3Small at
   64 px with a small random decoder, weights embedded) unless ``--model`` is given;
3. runs ``python run_pipeline.py`` on the DirectRunner as a subprocess, sampling the RSS of
   its whole process tree with psutil every ``--interval`` seconds and reading its progress
   lines (``--progress_seconds``) to know how many images were captioned when;
4. prints Markdown tables: images, wall seconds, images/s, peak RSS; RSS at 25/50/75/100 % of
   the captioning progress and at time quantiles; and whether memory grew.

"Flat" means: RSS at the end of captioning is at most max(5 %, 32 MiB) above RSS at 25 %
progress (the first quarter covers model load, tracing and allocator warm-up), and the
least-squares slope of RSS over captioned images in that span is reported per 10,000 images.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench.common import REPO, machine, process_tree_rss_mib, python, table

PROGRESS = re.compile(r"progress \(pid \d+\): (\d+) images captioned")


def jpeg_variants(count: int, size: int, quality: int = 85) -> list[bytes]:
    """``count`` distinct photo-like JPEGs of size x size pixels."""
    import io

    from PIL import Image

    from tests.image_corpus import make_photo_like_array

    out = []
    for seed in range(count):
        buf = io.BytesIO()
        Image.fromarray(make_photo_like_array((size, size), seed)).save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def write_images(folder: Path, n: int, size: int, variants: int) -> float:
    """N files img000000.jpg ...; each is a variant plus a COM segment naming its index."""
    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    encoded = jpeg_variants(variants, size)
    for i in range(n):
        data = encoded[i % len(encoded)]
        comment = f"soak image {i}".encode()
        segment = b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment
        (folder / f"img{i:06d}.jpg").write_bytes(data[:2] + segment + data[2:])
    return time.perf_counter() - started


def build_model(target: Path) -> None:
    """The tiny test artifact, built in a subprocess so this process never imports TensorFlow."""
    code = "import sys; from tests.factories import make_tiny_artifact; print(make_tiny_artifact(sys.argv[1]))"
    subprocess.run([python(), "-c", code, str(target)], cwd=REPO, check=True, capture_output=True, text=True)


class Sampler:
    """Runs a command; samples process-tree RSS and parses progress lines from its stderr."""

    def __init__(self, cmd: list[str], interval: float, log_path: Path) -> None:
        self.cmd = cmd
        self.interval = interval
        self.log_path = log_path
        self.rss: list[tuple[float, float]] = []  # (seconds since start, MiB)
        self.progress: list[tuple[float, int]] = []  # (seconds since start, images captioned)

    def run(self) -> tuple[int, str, float]:
        start = time.monotonic()
        proc = subprocess.Popen(self.cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                self.rss.append((time.monotonic() - start, process_tree_rss_mib(proc.pid)))
                done.wait(self.interval)

        def read_stderr() -> None:
            with open(self.log_path, "w") as log:
                for line in proc.stderr:
                    log.write(line)
                    m = PROGRESS.search(line)
                    if m:
                        self.progress.append((time.monotonic() - start, int(m.group(1))))

        threads = [threading.Thread(target=sample, daemon=True), threading.Thread(target=read_stderr, daemon=True)]
        for t in threads:
            t.start()
        stdout = proc.stdout.read()
        proc.wait()
        wall = time.monotonic() - start
        done.set()
        for t in threads:
            t.join()
        return proc.returncode, stdout, wall


def rss_at(samples: list[tuple[float, float]], t: float) -> float:
    """The RSS sample nearest in time to ``t``."""
    return min(samples, key=lambda s: abs(s[0] - t))[1]


def time_at_progress(progress: list[tuple[float, int]], count: float) -> float | None:
    """When ``count`` images had been captioned (linear between progress lines)."""
    prev = (0.0, 0)
    for t, c in progress:
        if c >= count:
            if c == prev[1]:
                return t
            return prev[0] + (t - prev[0]) * (count - prev[1]) / (c - prev[1])
        prev = (t, c)
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--size", type=int, default=64, help="width and height of the generated JPEGs")
    ap.add_argument("--variants", type=int, default=32, help="distinct encoded images to cycle through")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--interval", type=float, default=0.5, help="RSS sampling interval, seconds")
    ap.add_argument("--progress-seconds", type=float, default=0.5, help="the pipeline's progress-line interval")
    ap.add_argument("--model", default=None, help="model artifact (default: build the tiny test model)")
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one, removed afterwards)")
    ap.add_argument("--keep", action="store_true", help="keep the working folder (images, output, log)")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print(f"command: {' '.join(sys.argv)}\n")

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        gen_s = write_images(work / "images", args.images, args.size, args.variants)
        print(f"generated {args.images} {args.size}x{args.size} JPEGs in {gen_s:.1f} s under {work / 'images'}")
        model = args.model
        if model is None:
            model = str(work / "model")
            build_model(Path(model))
        cmd = [
            python(),
            str(REPO / "run_pipeline.py"),
            "--json",
            "--input",
            f"{work / 'images'}/*.jpg",
            "--output",
            str(work / "out"),
            "--model",
            model,
            "--batch_size",
            str(args.batch_size),
            "--progress_seconds",
            str(args.progress_seconds),
        ]
        sampler = Sampler(cmd, args.interval, work / "pipeline.log")
        rc, stdout, wall = sampler.run()
        if rc != 0:
            print(open(work / "pipeline.log").read()[-4000:], file=sys.stderr)
            raise SystemExit(f"run_pipeline.py failed with exit status {rc}")
        summary = json.loads(stdout[stdout.index("{") :])
        return report(args, summary, wall, sampler)
    finally:
        if args.keep or args.work:
            print(f"\nkept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def report(args: argparse.Namespace, summary: dict, wall: float, sampler: Sampler) -> int:
    rss, progress = sampler.rss, sampler.progress
    total = summary["captioned"]
    peak = max(r for _, r in rss)
    print()
    print(
        table(
            [
                "images",
                "captioned",
                "failed",
                "wall s (process)",
                "wall s (pipeline)",
                "images/s (pipeline)",
                "peak RSS MiB (process tree)",
                "RSS samples",
            ],
            [
                [
                    args.images,
                    total,
                    summary["failed"],
                    round(wall, 1),
                    summary["wall_seconds"],
                    summary["images_per_second"],
                    round(peak, 1),
                    len(rss),
                ]
            ],
        )
    )

    # Progress lines come every --progress-seconds, so the last one may be a little short of
    # the total; it marks the end of captioning. Process exit (after the Parquet writes, the
    # statistics and interpreter shutdown) is shown on its own row.
    rows, at = [], {}
    for pct in (25, 50, 75):
        t = time_at_progress(progress, total * pct / 100)
        if t is not None:
            at[pct] = (t, rss_at(rss, t))
            rows.append([f"{pct} %", int(total * pct / 100), round(t, 1), round(at[pct][1], 1)])
    if progress:
        t_last, c_last = progress[-1]
        at[100] = (t_last, rss_at(rss, t_last))
        rows.append(
            [
                f"{100 * c_last / max(total, 1):.0f} % (last progress line)",
                c_last,
                round(t_last, 1),
                round(at[100][1], 1),
            ]
        )
    rows.append(["process exit (last sample)", total, round(rss[-1][0], 1), round(rss[-1][1], 1)])
    print()
    print(table(["captioning progress", "images captioned", "elapsed s", "RSS MiB"], rows))

    times = [s[0] for s in rss]
    rows = [
        [f"{q} %", round(times[-1] * q / 100, 1), round(rss_at(rss, times[-1] * q / 100), 1)]
        for q in (10, 25, 50, 75, 90, 100)
    ]
    print()
    print(table(["time quantile", "elapsed s", "RSS MiB"], rows))

    if 25 in at and 100 in at and at[100][0] > at[25][0]:
        (t25, r25), (t100, r100) = at[25], at[100]
        span = [(t, r) for t, r in rss if t25 <= t <= t100]
        slope = None
        if len(span) >= 3:
            images = np.interp([t for t, _ in span], [0.0] + [t for t, _ in progress], [0] + [c for _, c in progress])
            if np.ptp(images) > 0:
                slope = float(np.polyfit(images, [r for _, r in span], 1)[0]) * 10_000
        top = max([r for _, r in span] + [r100])
        growth = r100 - r25
        allowed = max(0.05 * r25, 32.0)
        verdict = "FLAT" if growth <= allowed and top - r25 <= allowed else "GREW"
        print(
            f"\nRSS from 25 % of captioning to its end: {r25:.1f} -> {r100:.1f} MiB ({growth:+.1f} MiB, "
            f"{100 * growth / r25:+.1f} %), highest in between {top:.1f} MiB; allowed +{allowed:.0f} MiB; "
            f"slope {'n/a' if slope is None else f'{slope:+.1f} MiB per 10,000 images'} "
            f"({len(span)} samples): {verdict}"
        )
    else:
        print("\ntoo few progress lines to judge growth (use more --images or a smaller --progress-seconds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
