"""Run the real pipeline in-process and read its real Parquet output back with pyarrow."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads


def run_pipeline(args: Sequence[str]) -> dict[str, Any]:
    from beam_pipeline.pipeline import run

    return run(list(args) + ["--progress_seconds", "0"])


def read_rows(out: Path | str, kind: str) -> list[dict[str, Any]]:
    """All rows of OUT/captions or OUT/errors (every run's files)."""
    path = Path(out) / kind
    files = sorted(str(p) for p in path.glob("*.parquet"))
    if not files:
        return []
    return pads.dataset(files, format="parquet").to_table().to_pylist()


def read_summary(out: Path | str) -> dict[str, Any]:
    return json.loads((Path(out) / "summary.json").read_text())


def write_token_file(path: Path, captions: dict[str, list[str]]) -> Path:
    """Reference captions in the Flickr8k token format."""
    lines = [f"{name}#{i}\t{c}" for name, caps in captions.items() for i, c in enumerate(caps)]
    path.write_text("\n".join(lines) + "\n")
    return path


def flickr8k_photos(flickr8k: Path, start: int, count: int) -> list[Path]:
    """``count`` real Flickr8k photos, the ``start``-th onwards in name order."""
    names = sorted(p.name for p in (flickr8k / "images").glob("*.jpg"))[start : start + count]
    assert len(names) == count, "not enough Flickr8k photos"
    return [flickr8k / "images" / n for n in names]
