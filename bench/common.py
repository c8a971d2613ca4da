"""Shared bits of the benchmark scripts: paths, timing, tables, process-tree RSS sampling."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CAPTION_SHARED_DIR", REPO.parent / "shared"))
FLICKR8K = SHARED / "data" / "flickr8k"
XCEPTION_WEIGHTS = SHARED / "models" / "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"


def machine() -> str:
    """One line naming the machine: CPU model, cores, bf16/AMX flags."""
    model, flags = "unknown CPU", set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni") if f in flags]
    shown = " ".join(wanted) or "none of avx512/amx"
    return f"{model}, {os.cpu_count()} cores, flags: {shown}, {platform.python_version()}"


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (pastes into docs/PERFORMANCE.md as is)."""
    cells = [[str(h) for h in headers]] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"

    return "\n".join(
        [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells[1:]]
    )


def processes_rss_mib(procs: Sequence[Any]) -> float:
    """Resident memory of these psutil processes together, in MiB (a process that has gone counts 0)."""
    import psutil

    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def process_tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its children, in MiB (0 once it has gone)."""
    import psutil

    try:
        parent = psutil.Process(pid)
        procs = [parent] + parent.children(recursive=True)
    except psutil.Error:
        return 0.0
    return processes_rss_mib(procs)


def run_with_rss(
    cmd: Sequence[str], interval: float = 0.5, **kwargs: Any
) -> tuple[subprocess.CompletedProcess, float, list[tuple[float, float]]]:
    """Run a command; sample the RSS of its whole process tree. Returns (result, peak MiB, samples)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    samples: list[tuple[float, float]] = []
    start = time.monotonic()
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.monotonic() - start, process_tree_rss_mib(proc.pid)))
            done.wait(interval)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, err = proc.communicate()
    done.set()
    t.join()
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    return result, max((s[1] for s in samples), default=0.0), samples


def python() -> str:
    return sys.executable
