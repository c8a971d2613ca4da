"""A fixed run on real photos whose rows and summary are kept as a golden file, so a re-layout
of the code can be checked to change no output (tests/test_golden_run.py).

Only the pipeline's public entry point (``beam_pipeline.pipeline.run``) is used, so the same
module regenerates the golden file from an older checkout:

    PYTHONPATH=OLD_CHECKOUT python -m tests.golden_run --flickr8k ../shared/data/flickr8k \
        --weights ../shared/models/xception_weights_tf_dim_ordering_tf_kernels_notop.h5 \
        --out tests/data/golden_run.json [--model MODEL_DIR]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads

PHOTOS = 10
# Volatile or machine-dependent fields, left out of the comparison.
SUMMARY_SKIP = {
    "run_id",
    "wall_seconds",
    "images_per_second",
    "inputs",
    "input_manifest",
    "references",
    "output",
    "model",
    "model_load_seconds",
    "worker_processes",
    "captioned_per_process",
    "hosts",
    "report",
}
VOLATILE_COLUMNS = ("processed_at", "created_at", "run_id")
# Added after the golden file was made (issue 30): the input's listing (source_mtime is the
# machine's file time) and the count of changed inputs captioned again. Left out of the
# comparison; every column and summary field the golden file holds is still compared.
ADDED_COLUMNS = ("source_size", "source_mtime")
ADDED_SUMMARY_KEYS = {"recaptioned_changed"}
COUNTERS = ("images_read", "images_captioned", "images_failed", "bytes_read", "rows_committed", "model_loads")


def make_inputs(folder: Path, flickr8k: Path) -> tuple[list[str], Path]:
    """Ten dev photos and four bad inputs; returns (pipeline input args, reference token file)."""
    images = folder / "images"
    images.mkdir(parents=True)
    dev = sorted(
        n for n in (flickr8k / "Flickr_8k.devImages.txt").read_text().split() if (flickr8k / "images" / n).exists()
    )[:PHOTOS]
    for name in dev:
        (images / name).write_bytes((flickr8k / "images" / name).read_bytes())
    first = (flickr8k / "images" / dev[0]).read_bytes()
    (images / "zz_truncated.jpg").write_bytes(first[:600])
    (images / "zz_text.jpg").write_text("this is not an image\n")
    (images / "zz_empty.jpg").write_bytes(b"")
    wanted = set(dev)
    lines = [
        line for line in (flickr8k / "Flickr8k.token.txt").read_text().splitlines() if line.split("#", 1)[0] in wanted
    ]
    tokens = folder / "references.txt"
    tokens.write_text("\n".join(lines) + "\n")
    # The first photo matched twice (a duplicate input) and a glob that matches nothing.
    args = ["--input", f"{images}/*.jpg", "--input", f"{images}/{dev[0]}", "--input", f"{folder}/missing/*.jpg"]
    return args, tokens


def _rows(out: Path, kind: str) -> list[dict[str, Any]]:
    files = sorted(str(p) for p in (out / kind).glob("*.parquet"))
    return pads.dataset(files, format="parquet").to_table().to_pylist() if files else []


def _name(uri: str | None) -> str | None:
    return None if uri is None else uri.rstrip("/").rsplit("/", 1)[-1]


def normalise(out: Path, summary: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Rows and summary with paths reduced to file names (``<dir>`` in messages) and volatile
    fields removed."""

    def rows(kind: str) -> list[dict[str, Any]]:
        kept = []
        for row in _rows(out, kind):
            row = {k: v for k, v in row.items() if k not in VOLATILE_COLUMNS and k not in ADDED_COLUMNS}
            row["image_uri"] = _name(row["image_uri"])
            kept.append(row)
        return kept

    captions, errors = rows("captions"), rows("errors")
    kept = {k: v for k, v in summary.items() if k not in SUMMARY_SKIP | ADDED_SUMMARY_KEYS and k != "counters"}
    kept["counters"] = {k: summary.get("counters", {}).get(k) for k in COUNTERS}
    kept["summary_keys"] = sorted(set(summary) - ADDED_SUMMARY_KEYS)

    def key(r: dict[str, Any]) -> tuple[str, str]:
        return str(r.get("image_uri")), str(r.get("error_type", ""))

    result = {"captions": sorted(captions, key=key), "errors": sorted(errors, key=key), "summary": kept}
    return json.loads(json.dumps(result, default=str).replace(str(folder), "<dir>"))


def golden_run(
    folder: Path, flickr8k: Path, weights: Path, model: str | None = None, extra: Sequence[str] = ()
) -> dict[str, Any]:
    """Run the fixed inputs through the pipeline (``extra``: more flags, e.g. another runner) and
    return the normalised result."""
    from beam_pipeline.pipeline import run

    args, tokens = make_inputs(folder, flickr8k)
    out = folder / "out"
    argv = args + [
        "--output",
        str(out),
        "--encoder_weights",
        str(weights),
        "--references",
        str(tokens),
        "--progress_seconds",
        "0",
        "--batch_size",
        "4",
    ]
    if model:
        argv += ["--model", model]
    return normalise(out, run(argv + list(extra)), folder)


def main(argv: Sequence[str] | None = None) -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flickr8k", type=Path, required=True)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--model")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = golden_run(Path(tmp), args.flickr8k.resolve(), args.weights.resolve(), args.model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True, default=str) + "\n")


if __name__ == "__main__":
    main()
