"""``--inventory``: what a captioning run would face, without the model.

    MatchInputs -> SkipDoneAndDuplicates (duplicate URIs only) -> InspectImages -> CommitRows
    ; InventoryStats

Every matched entry is read once (the same bounded, retried reads as captioning:
``image_reads.read_bytes``), hashed (SHA-256) and its header checked (``model.image_loading.
probe_image``: format, upright size, the byte, "not an image" and decompression-bomb checks; no
pixel is decoded, so an image whose pixel data is truncated passes here and fails only when
captioned). One row per input goes to ``OUTPUT/inventory/*.parquet`` (``INVENTORY_SCHEMA``,
committed while the run goes, like caption rows) and the counts to
``OUTPUT/inventory_summary.json``, with the estimated captioning cost per encoder precision.
No caption or error rows are written, and the model is never loaded.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from beam_pipeline.commit_writer import CommitRows
from beam_pipeline.image_reads import ReadAndDecode, read_bytes
from beam_pipeline.object_reads import ObjectReader
from beam_pipeline.options import CaptionOptions, read_settings
from beam_pipeline.preflight import PreflightError, check_output
from beam_pipeline.records import ImageRef, now_utc, source_columns
from beam_pipeline.retries import RetryPolicy
from beam_pipeline.run_stats import write_stats
from beam_pipeline.transforms import MatchInputs, SkipDoneAndDuplicates
from model.image_loading import ImageDecodeError, probe_image
from model.storage import sha256_hex

INVENTORY_SCHEMA = pa.schema(
    [
        pa.field("image_uri", pa.string(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=True),  # bytes read (null when nothing was read)
        pa.field("sha256", pa.string(), nullable=True),  # hex SHA-256 of those bytes
        pa.field("format", pa.string(), nullable=True),  # Pillow's format name, e.g. JPEG
        pa.field("width", pa.int32(), nullable=True),  # upright size, from the header
        pa.field("height", pa.int32(), nullable=True),
        pa.field("error_type", pa.string(), nullable=True),  # null: readable; else as in error rows
        pa.field("message", pa.string(), nullable=True),
        pa.field("source_size", pa.int64(), nullable=True),  # as listed
        pa.field("source_mtime", pa.timestamp("ms", tz="UTC"), nullable=True),
        pa.field("processed_at", pa.timestamp("ms", tz="UTC"), nullable=False),
    ]
)

# Captioning throughput per CPU core, per encoder precision: recorded, not measured by the
# inventory. Source: docs/PERFORMANCE.md section 6, "Current (2026-11-28)": whole-pipeline
# images/s of 2,000-photo runs of the shipped model on the 2-core development machine (float32
# 23.5, bfloat16 34.1, int8 60.6 images/s on 2 cores), divided by 2.
RECORDED_RATES = {"float32": 23.3 / 2, "bfloat16": 34.1 / 2, "int8": 60.85 / 2}
RATES_SOURCE = (
    "recorded: docs/PERFORMANCE.md section 13b (2026-12-06, the shipped attention model, 2-core "
    "development machine, 2,000-photo runs, median of 6) for float32 and int8; bfloat16 from section 6 "
    "(2026-11-28, the merge-ensemble model shipped before); not measured by this run"
)


def inventory_row(
    ref: ImageRef,
    data: bytes | None = None,
    header: Any = None,
    error_type: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    """One ``inventory/*.parquet`` row."""
    return {
        "image_uri": ref.uri,
        "bytes": None if data is None else len(data),
        "sha256": None if data is None else sha256_hex(data),
        "format": header.format if header else None,
        "width": header.width if header else None,
        "height": header.height if header else None,
        "error_type": error_type,
        "message": None if message is None else message[:2000],
        **source_columns(ref),
        "processed_at": now_utc(),
    }


def error_as_inventory_row(row: dict[str, Any]) -> dict[str, Any]:
    """A match / duplicate error row (``records.error_row``) as an inventory row."""
    return {
        "image_uri": row["image_uri"],
        "bytes": None,
        "sha256": None,
        "format": None,
        "width": None,
        "height": None,
        "error_type": row["error_type"],
        "message": row["message"],
        "source_size": row.get("source_size"),
        "source_mtime": row.get("source_mtime"),
        "processed_at": row["processed_at"],
    }


def inspect_one(ref: ImageRef, reader: ObjectReader, max_bytes: int, max_pixels: int) -> tuple[str, Any, int | None]:
    """Read, hash and check one input's header; never raises. Returns ReadAndDecode's
    ``(tag, value, bytes read or None)`` with an inventory row as the value."""
    data, error = read_bytes(ref, reader, max_bytes)
    if error is not None:
        return "rows", inventory_row(ref, None, None, error["error_type"], error["message"]), None
    try:
        header = probe_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        return "rows", inventory_row(ref, data, None, exc.error_type, exc.message), len(data)
    except Exception as exc:  # noqa: BLE001 - probe_image promises not to, but never crash
        return "rows", inventory_row(ref, data, None, type(exc).__name__, str(exc)), len(data)
    return "rows", inventory_row(ref, data, header), len(data)


class InspectImages(ReadAndDecode):
    """ImageRef -> inventory row: ReadAndDecode's concurrent, bounded reads with ``inspect_one``
    as the work on each image."""

    def __init__(self, max_bytes: int, max_pixels: int, settings: Any = None) -> None:
        super().__init__((1, 1), max_bytes, max_pixels, settings)

    def task(self, ref: ImageRef) -> Callable[[], tuple[str, Any, int | None]]:
        reader, max_bytes, max_pixels = self._reader, self.max_bytes, self.max_pixels
        return lambda: inspect_one(ref, reader, max_bytes, max_pixels)


class InventoryCountsFn(beam.CombineFn):
    """Inventory rows -> matched, readable, unreadable by type, bytes read."""

    def create_accumulator(self) -> dict[str, Any]:
        return {"matched": 0, "readable": 0, "unreadable": {}, "bytes": 0, "inputs_with_bytes": 0}

    def add_input(self, acc: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
        acc["matched"] += 1
        if row["error_type"] is None:
            acc["readable"] += 1
        else:
            acc["unreadable"][row["error_type"]] = acc["unreadable"].get(row["error_type"], 0) + 1
        if row["bytes"] is not None:
            acc["bytes"] += row["bytes"]
            acc["inputs_with_bytes"] += 1
        return acc

    def merge_accumulators(self, accumulators: Iterable[dict[str, Any]]) -> dict[str, Any]:
        merged = self.create_accumulator()
        for acc in accumulators:
            for key in ("matched", "readable", "bytes", "inputs_with_bytes"):
                merged[key] += acc[key]
            for kind, n in acc["unreadable"].items():
                merged["unreadable"][kind] = merged["unreadable"].get(kind, 0) + n
        return merged

    def extract_output(self, acc: dict[str, Any]) -> dict[str, Any]:
        return acc


def _merge_dicts(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for part in parts:
        merged.update(part)
    return merged


def build_inventory(p: beam.Pipeline, options: CaptionOptions, output: str, run_id: str, stats_path: str) -> None:
    """Compose the inventory pipeline on ``p`` (see module docstring)."""
    refs, match_errors = p | "MatchInputs" >> MatchInputs(
        list(options.input or []), options.input_manifest, options.manifest_uri_column, options.manifest_id_column
    )
    todo, duplicates, _, _ = refs | "SkipDuplicates" >> SkipDoneAndDuplicates()
    inspected = todo | "InspectImages" >> beam.ParDo(
        InspectImages(options.max_image_bytes, options.max_image_pixels, read_settings(options))
    )
    others = (
        [match_errors, duplicates]
        | "MatchAndDuplicateErrors" >> beam.Flatten()
        | "AsInventoryRows" >> beam.Map(error_as_inventory_row)
    )
    directory = FileSystems.join(output, "inventory")
    policy = RetryPolicy(tries=options.commit_attempts)
    for label, rows in (("inventory", inspected), ("inventory-errors", others)):
        rows | f"Commit-{label}" >> beam.ParDo(
            CommitRows(directory, run_id, label, INVENTORY_SCHEMA, options.commit_every, options.commit_seconds, policy)
        )
    rows = [inspected, others] | "AllRows" >> beam.Flatten()
    counts = rows | "Counts" >> beam.CombineGlobally(InventoryCountsFn())
    distinct = (
        rows
        | "Hashes" >> beam.FlatMap(lambda r: [r["sha256"]] if r["sha256"] else [])
        | "DistinctContent" >> beam.Distinct()
        | "CountDistinct" >> beam.combiners.Count.Globally()
        | "AsDict" >> beam.Map(lambda n: {"distinct_content": n})
    )
    (
        [counts, distinct]
        | "Stats" >> beam.Flatten()
        | "Merge" >> beam.CombineGlobally(_merge_dicts)
        | "WriteStats" >> beam.Map(write_stats, stats_path)
    )


def estimate(readable: int, cores: int, rates: dict[str, float] | None = None) -> dict[str, Any]:
    """Captioning time of ``readable`` images per precision: core-hours at the per-core rate, and
    wall hours on ``cores`` cores (assuming throughput scales with cores: an estimate)."""
    rates = rates or RECORDED_RATES
    per_precision = {}
    for precision, rate in rates.items():
        core_hours = readable / rate / 3600
        per_precision[precision] = {
            "images_per_second_per_core": round(rate, 2),
            "core_hours": round(core_hours, 6),
            "wall_hours_on_cores": round(core_hours / max(cores, 1), 6),
        }
    return {"images": readable, "cores": cores, "rates": RATES_SOURCE, "per_precision": per_precision}


def check_inventory_options(options: CaptionOptions) -> str:
    """Refuse what an inventory cannot do; returns the output directory."""
    if not options.output:
        raise PreflightError("--output is required")
    if not options.input and not options.input_manifest:
        raise PreflightError("give --input GLOB (repeatable) or --input_manifest TABLE")
    if options.report or options.iceberg_table or options.skip_known_content:
        raise PreflightError(
            "--inventory writes no captions: --report, --iceberg_table and --skip_known_content do not apply"
        )
    try:
        read_settings(options)
    except ValueError as exc:
        raise PreflightError(str(exc)) from exc
    output = options.output.rstrip("/")
    check_output(output, list(options.input or []), resume=True)  # beside earlier outputs is fine
    existing = FileSystems.match([FileSystems.join(output, "inventory", "*.parquet")])[0].metadata_list
    if existing:
        raise PreflightError(f"{output}/inventory already holds an inventory; choose another --output")
    return output


def run_inventory(options: Any, runner: Any, runner_name: str | None, run_id: str) -> dict[str, Any]:
    """Run the inventory to completion; write and return its summary."""
    inv = options.view_as(CaptionOptions)
    output = check_inventory_options(inv)
    stats_path = FileSystems.join(output, "_runs", run_id, "inventory_stats.json")
    started = time.time()
    p = beam.Pipeline(runner=runner, options=options)
    build_inventory(p, inv, output, run_id, stats_path)
    p.run().wait_until_finish()
    wall = time.time() - started
    with FileSystems.open(stats_path) as f:
        stats = json.loads(f.read())
    summary = {
        "run_id": run_id,
        "mode": "inventory",
        "matched": stats["matched"],
        "readable": stats["readable"],
        "unreadable": sum(stats["unreadable"].values()),
        "unreadable_by_type": stats["unreadable"],
        "distinct_content": stats.get("distinct_content", 0),
        "duplicate_inputs": stats["inputs_with_bytes"] - stats.get("distinct_content", 0),
        "bytes": stats["bytes"],
        "wall_seconds": round(wall, 2),
        "inputs_per_second": round(stats["matched"] / wall, 1) if wall > 0 else None,
        "estimate": estimate(stats["readable"], os.cpu_count() or 1),
        "inputs": list(inv.input or []),
        "input_manifest": inv.input_manifest,
        "output": output,
        "runner": runner_name or "DirectRunner",
    }
    text = json.dumps(summary, indent=2).encode()
    for path in (
        FileSystems.join(output, "inventory_summary.json"),
        FileSystems.join(output, "_runs", run_id, "inventory_summary.json"),
    ):
        with FileSystems.create(path) as f:
            f.write(text)
    return summary
