"""The captioning pipeline, as a short chain of named steps (``beam_pipeline.transforms``):

    MatchInputs -> [AttachReferences] -> SkipDoneAndDuplicates -> ReadImages
    -> [SplitBySameContent] -> CaptionImages (RunInference) -> CommitOutputs ; RunStats

Nothing between captioning and the commit writers is a shuffle, so rows are committed while the
run goes (see ``beam_pipeline.commit_writer``). ``plan_run`` decides everything in the driver
before any image is read; ``build(p, plan)`` composes the steps; ``run(argv)`` is what
``run_pipeline.py`` calls.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions, TestOptions

from beam_pipeline.caption_handler import CaptionModelHandler, ModelSpec
from beam_pipeline.metrics import NAMESPACE
from beam_pipeline.options import CaptionOptions, check_flags, default_model_uri, read_settings
from beam_pipeline.preflight import (
    PreflightError,
    check_output,
    check_resume_model,
    existing_outputs,
    interrupted_outputs,
    remove_stale_temp_dirs,
)
from beam_pipeline.records import with_references
from beam_pipeline.retries import RetryPolicy
from beam_pipeline.run_stats import RunStats
from beam_pipeline.runners import make_runner
from beam_pipeline.same_content import CopyCaptionsToFollowers, SplitBySameContent, known_columns
from beam_pipeline.schemas import ERROR_SCHEMA, caption_schema
from beam_pipeline.transforms import (
    AttachReferences,
    CaptionImages,
    CommitOutputs,
    MatchInputs,
    ReadImages,
    SkipDoneAndDuplicates,
)
from model import storage

log = logging.getLogger(__name__)
header_log = logging.getLogger("beam_pipeline.console")  # the run's header line on the terminal


@dataclass
class Plan:
    """Everything decided in the driver before any image is read."""

    run_id: str
    output: str
    inputs: list[str]
    manifest: str | None
    model_uri: str
    model_id: str
    image_size: tuple[int, int]
    decode: str
    options: CaptionOptions
    done_files: list[str] = field(default_factory=list)
    interrupted_files: list[str] = field(default_factory=list)  # subset of done_files
    known_files: list[str] = field(default_factory=list)  # --skip_known_content: earlier caption files
    # (and the Iceberg table's known captions, exported to OUTPUT/_runs/RUN_ID/known_content.parquet)
    watchlist: Any = None  # --watchlist, parsed (beam_pipeline.moderation.Watchlist)

    @property
    def stats_path(self) -> str:
        return FileSystems.join(self.output, "_runs", self.run_id, "stats.json")


def caption_handler(plan: Plan) -> CaptionModelHandler:
    """The ModelHandler for this run's model, decode overrides, precision and batch limits."""
    o = plan.options
    spec = ModelSpec(
        plan.model_uri,
        o.encoder_weights,
        plan.model_id,
        o.decode,
        o.beam_width,
        o.length_alpha,
        o.precision,
        o.encoder_runtime,
        o.model_cache_dir,
    )
    return CaptionModelHandler(
        spec,
        max_batch_size=o.batch_size,
        min_batch_size=o.min_batch_size,
        emit_embeddings=o.emit_embeddings,
        share_across_processes=bool(o.share_model_across_processes),
    )


def build(p: beam.Pipeline, plan: Plan) -> None:
    """Compose the pipeline on ``p`` (see module docstring)."""
    o = plan.options
    with_refs = bool(o.references or o.manifest_references_column)  # references ride with the ImageRef
    refs, match_errors = p | "MatchInputs" >> MatchInputs(
        plan.inputs, plan.manifest, o.manifest_uri_column, o.manifest_id_column, o.manifest_references_column
    )
    to_dedupe = refs
    if o.references:
        to_dedupe = refs | "AttachReferences" >> AttachReferences(
            o.references, o.references_id_column, o.references_caption_column
        )
    todo, duplicates, skipped, changed = to_dedupe | "SkipDoneAndDuplicates" >> SkipDoneAndDuplicates(
        plan.done_files, plan.interrupted_files
    )
    records, read_errors = todo | "ReadImages" >> ReadImages(
        plan.image_size, o.max_image_bytes, o.max_image_pixels, read_settings(o)
    )
    if o.skip_known_content:
        records, followers, copied = records | "SplitBySameContent" >> SplitBySameContent(
            plan.model_id, plan.known_files, known_columns(o.emit_embeddings)
        )
    rows, caption_errors, workers = records | "CaptionImages" >> CaptionImages(
        caption_handler(plan), f"caption-model-{plan.model_id}-{plan.run_id}", o.progress_seconds, with_refs
    )

    captions = {"captions": rows}
    errors = {"match": match_errors, "dedupe": duplicates, "read": read_errors, "infer": caption_errors}
    if o.skip_known_content:  # copies of earlier captions, and of this run's captions to its copies
        follower_rows, errors["same-content"] = {
            "rows": rows,
            "followers": followers,
        } | "CopyCaptionsToFollowers" >> CopyCaptionsToFollowers()
        for label, pcoll in (("known", copied), ("followers", follower_rows)):
            if with_refs:
                pcoll = pcoll | f"SentenceBleu-{label}" >> beam.Map(with_references, None)
            captions[f"captions-{label}"] = pcoll
    policy = RetryPolicy(tries=o.commit_attempts)
    if plan.watchlist is not None or o.review_below is not None:
        captions = moderate(captions, plan, policy)
    captions | "CommitCaptions" >> CommitOutputs(
        FileSystems.join(plan.output, "captions"),
        plan.run_id,
        caption_schema(o.emit_embeddings, plan.watchlist is not None),
        o.commit_every,
        o.commit_seconds,
        policy,
    )
    errors | "CommitErrors" >> CommitOutputs(
        FileSystems.join(plan.output, "errors"),
        plan.run_id,
        ERROR_SCHEMA,
        o.commit_every,
        o.commit_seconds,
        policy,
        label_prefix="errors-",
    )
    {
        "inputs": [refs, match_errors] | "Inputs" >> beam.Flatten(),
        "captions": list(captions.values()) | "AllCaptions" >> beam.Flatten(),
        "errors": list(errors.values()) | "AllErrors" >> beam.Flatten(),
        "skipped": skipped,
        "workers": workers,
        "changed": changed,
    } | "RunStats" >> RunStats(plan.stats_path)


def moderate(captions: dict[str, Any], plan: Plan, policy: RetryPolicy) -> dict[str, Any]:
    """--watchlist / --review_below: flag each source's caption rows, and commit the ones that need
    review to OUTPUT/review as well (beam_pipeline.moderation). Returns the flagged sources."""
    from beam_pipeline.moderation import REVIEW_SCHEMA, add_flags, review_rows

    o, flagged, review = plan.options, {}, {}
    for label, rows in captions.items():
        if plan.watchlist is not None:
            rows = rows | f"Flag-{label}" >> beam.Map(add_flags, plan.watchlist)
        flagged[label] = rows
        review[label] = rows | f"Review-{label}" >> beam.FlatMap(review_rows, o.review_below)
    review | "CommitReview" >> CommitOutputs(
        FileSystems.join(plan.output, "review"),
        plan.run_id,
        REVIEW_SCHEMA,
        o.commit_every,
        o.commit_seconds,
        policy,
        label_prefix="review-",
    )
    return flagged


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def plan_run(options: CaptionOptions) -> Plan:
    """Validate flags, output directory and model before anything is read (refuse early)."""
    from model.artifact import read_artifact
    from model.captioner import check_decoders, check_encoder_ready

    if not options.output:
        raise PreflightError("--output is required")
    if not options.input and not options.input_manifest:
        raise PreflightError("give --input GLOB (repeatable) or --input_manifest TABLE")
    if options.batch_size < 1:
        raise PreflightError("--batch_size must be >= 1")
    if options.commit_every < 1 or options.commit_seconds < 0 or options.commit_attempts < 1:
        raise PreflightError("--commit_every and --commit_attempts must be >= 1, --commit_seconds >= 0")
    try:
        read_settings(options)
    except ValueError as exc:
        raise PreflightError(str(exc)) from exc
    inputs = list(options.input or [])
    output = options.output.rstrip("/")
    check_output(output, inputs, options.resume)  # a manifest may list images anywhere
    model_uri = options.model or default_model_uri()
    contents = read_artifact(
        model_uri, expected_model_id=options.expected_model_id, encoder_weights=options.encoder_weights
    )
    check_decoders(contents, options.model_cache_dir, options.precision)  # decoder weights fit the config
    check_encoder_ready(contents, options.precision, options.encoder_runtime)
    done_files: list[str] = []
    interrupted: list[str] = []
    if options.resume:
        remove_stale_temp_dirs(output)
        done_files = existing_outputs(output)
        check_resume_model(done_files, contents.model_id)
        interrupted = interrupted_outputs(output, done_files)
    # Read by the workers (no footer is read here); rows of files lacking a column are dropped there.
    known_files = [f for f in done_files if "/captions/" in f] if options.skip_known_content else []
    watchlist = None
    if options.watchlist:
        from beam_pipeline.moderation import load_watchlist

        watchlist = load_watchlist(options.watchlist)
    size = contents.config.encoder.image_size
    settings = contents.decode_settings(
        method=options.decode, beam_width=options.beam_width, length_alpha=options.length_alpha
    )
    return Plan(
        new_run_id(),
        output,
        inputs,
        options.input_manifest,
        model_uri,
        contents.model_id,
        (int(size[0]), int(size[1])),
        settings.describe(),
        options,
        done_files,
        interrupted,
        known_files,
        watchlist=watchlist,
    )


def _metric(result: Any, name: str) -> int | None:
    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE).with_name(name))["counters"]
    except Exception:  # noqa: BLE001 - some runners do not report metrics
        return None
    if not counters:
        return 0
    return int(sum((c.committed if c.committed is not None else c.attempted) or 0 for c in counters))


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the pipeline to completion and return (and write) the run summary. Unknown flags are
    refused first (``UsageError``), before anything is read. With Beam's ``--dry_run True``
    (Dataflow: build the job, send nothing) it returns ``{"dry_run": True, ...}`` and writes nothing."""
    check_flags(argv or [])
    options = PipelineOptions(argv)
    caption_options = options.view_as(CaptionOptions)
    runner_name = options.view_as(StandardOptions).runner
    runner = make_runner(runner_name, options)  # refuses an untested Beam for the Dask runner first
    if caption_options.inventory:  # no model, no captions (beam_pipeline.inventory)
        from beam_pipeline.inventory import run_inventory

        return run_inventory(options, runner, runner_name, new_run_id())
    plan = plan_run(caption_options)
    if caption_options.iceberg_table:
        from beam_pipeline import lake_table  # the 'iceberg' extra: imported only when asked for

        plan.known_files += lake_table.prepare_table(  # the table's known captions, exported for the workers
            caption_options.iceberg_catalog,
            caption_options.iceberg_table,
            plan.model_id,
            known_columns(caption_options.emit_embeddings) if caption_options.skip_known_content else None,
            FileSystems.join(plan.output, "_runs", plan.run_id),
        )
    if caption_options.search_index:
        from beam_pipeline import search_index  # the 'search' extra: imported only when asked for

        search_index.in_child(
            search_index.prepare_index, caption_options.search_index, plan.model_id, caption_options.emit_embeddings
        )
    inputs = ", ".join(plan.inputs + ([plan.manifest] if plan.manifest else []))
    header_log.info(
        "Captioning %s with model %s (%s) into %s [run %s, %s]",
        inputs,
        plan.model_id,
        plan.decode,
        plan.output,
        plan.run_id,
        runner_name or "DirectRunner",
    )
    started = time.time()
    p = beam.Pipeline(runner=runner, options=options)
    build(p, plan)
    result = p.run()
    result.wait_until_finish()
    wall = time.time() - started
    if options.view_as(TestOptions).dry_run:  # Dataflow built the job and sent nothing: no data, no summary
        return {
            "run_id": plan.run_id,
            "dry_run": True,
            "runner": runner_name,
            "model_id": plan.model_id,
            "output": plan.output,
        }
    with FileSystems.open(plan.stats_path) as f:
        stats = json.loads(f.read())
    # Counts (matched ... model_loads) come from the data; "counters" are the runner's metrics,
    # null where a runner reports none (e.g. Dask).
    summary = {
        "run_id": plan.run_id,
        **stats,
        "counters": {
            name: _metric(result, name)
            for name in (
                "images_read",
                "images_captioned",
                "images_failed",
                "batches",
                "bytes_read",
                "model_loads",
                "rows_committed",
                "commits",
                "commit_retries",
                "images_same_content",
            )
        },
        "images_per_second": round(stats["captioned"] / wall, 3) if wall > 0 else None,
        "wall_seconds": round(wall, 2),
        "model_id": plan.model_id,
        "model": plan.model_uri,
        "decode": plan.decode,
        "encoder_precision": caption_options.precision,
        "encoder_runtime": caption_options.encoder_runtime,
        "batch_size": caption_options.batch_size,
        "inputs": plan.inputs,
        "input_manifest": plan.manifest,
        "references": caption_options.references,
        "output": plan.output,
        "resumed_from_files": len(plan.done_files),
        "resumed_from_interrupted_files": len(plan.interrupted_files),
        "commit_every": caption_options.commit_every,
        "commit_seconds": caption_options.commit_seconds,
        "runner": runner_name or "DirectRunner",
        "direct_running_mode": options.view_as(DirectOptions).direct_running_mode,
        "skip_known_content": caption_options.skip_known_content,
    }
    committed = summary["counters"]["rows_committed"]
    if committed is not None and committed < stats["captioned"] + stats["failed"]:
        raise RuntimeError(
            f"run {plan.run_id}: {stats['captioned'] + stats['failed']} rows were made but only "
            f"{committed} committed; not reporting success (rerun with --resume)"
        )
    if caption_options.iceberg_table:  # after the Parquet files are committed: make the table agree
        from beam_pipeline import lake_table  # the 'iceberg' extra: imported only when asked for

        summary["iceberg"] = lake_table.sync_output_to_table(
            caption_options.iceberg_catalog,
            caption_options.iceberg_table,
            plan.output,
            caption_options.emit_embeddings,
            bool(caption_options.watchlist),
        )
    if caption_options.search_index:  # the same: after the commits, from the committed files
        from beam_pipeline import search_index  # the 'search' extra: imported only when asked for

        summary["search_index"] = search_index.in_child(
            search_index.sync_output_to_index, caption_options.search_index, plan.output
        )
    text = json.dumps(summary, indent=2).encode()
    for path in (
        storage.join(plan.output, "summary.json"),
        storage.join(plan.output, f"_runs/{plan.run_id}/summary.json"),
    ):
        storage.write_atomically(path, text)
    return summary
