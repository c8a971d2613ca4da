"""The captioning pipeline: match -> attach references -> dedupe/resume -> read+decode -> batch
-> encode+decode captions -> BLEU -> incremental Parquet commits (captions, errors), run statistics.

Nothing between captioning and the commit writers is a shuffle, so rows are committed while the
run goes (see ``beam_pipeline.commit_writer``).

``run(argv)`` is what ``run_pipeline.py`` calls; ``build(p, plan)`` composes the transforms.
Each DoFn has one output; error rows and other side results ride in it (``outcomes``) and are
split off here with single-output transforms, which every runner executes correctly.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import ReadAllFromParquet
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.runners.runner import create_runner

from beam_pipeline.bleu_combine import CorpusBleuFn
from beam_pipeline.commit_writer import CommitRows
from beam_pipeline.commits import RetryPolicy
from beam_pipeline.inference import CaptionBatches
from beam_pipeline.options import CaptionOptions, default_model_uri, read_settings
from beam_pipeline.outcomes import Failed, ModelLoaded, Skipped, failed, is_main, load_summary
from beam_pipeline.preflight import (PreflightError, check_output, check_resume_model, existing_outputs,
                                    interrupted_outputs, remove_stale_temp_dirs)
from beam_pipeline.records import STAGE_MATCH, ImageRef, bleu_pair, error_row, with_reference_captions, \
    with_references
from beam_pipeline.same_content import copy_to_followers, files_with_columns, known_columns, split_by_content
from beam_pipeline.schemas import ERROR_SCHEMA, caption_schema
from beam_pipeline.sources import NAMESPACE, MatchGlob, ReadAndDecode, ReadManifest, read_references

log = logging.getLogger(__name__)
# Runner names -> the class to use: the short name Beam does not resolve, and Beam's own Dask
# runner replaced by ours, which works around its bugs (see beam_pipeline/dask_runner.py).
RUNNER_ALIASES = {"DaskRunner": "beam_pipeline.dask_runner.DaskRunner",
                  "apache_beam.runners.dask.dask_runner.DaskRunner": "beam_pipeline.dask_runner.DaskRunner"}
DONE, DONE_BY_INTERRUPTED = "done", "done-by-interrupted-run"


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
    known_rows: list[dict[str, Any]] = field(default_factory=list)  # ... and the Iceberg table's captions

    @property
    def stats_path(self) -> str:
        return FileSystems.join(self.output, "_runs", self.run_id, "stats.json")


class DedupeAndResume(beam.DoFn):
    """Per image URI: skip it if an earlier run already has a row for it (``--resume``; however
    many files hold it, it counts once); else keep the first input and turn repeats of the same
    URI into ``DuplicateInput`` error rows. A skipped input is tagged True when only interrupted
    runs hold it (rows committed before a crash)."""

    def process(self, element: tuple[str, dict[str, list]]) -> Iterator[Any]:
        uri, groups = element
        refs: list[ImageRef] = list(groups["refs"])
        if not refs:
            return
        marks = set(groups.get("done", []))
        if marks:
            for _ in refs:
                yield Skipped(uri, marks == {DONE_BY_INTERRUPTED})
            return
        yield refs[0]
        for dup in refs[1:]:
            yield failed(error_row(
                uri, dup.image_id, STAGE_MATCH, "DuplicateInput",
                "the same image URI was given more than once; it is captioned once"))


def _error_rows(element: Any) -> Iterator[dict[str, Any]]:
    if isinstance(element, Failed):
        yield element.row


def _skipped(element: Any) -> Iterator[bool]:
    """One item per skipped input: whether only interrupted runs held it."""
    if isinstance(element, Skipped):
        yield element.interrupted


def _loads(element: Any) -> Iterator[tuple[str, float, int, str]]:
    if isinstance(element, ModelLoaded):
        yield element.load_id, element.seconds, element.pid, element.host


def split(outcomes: Any, label: str) -> tuple[Any, Any]:
    """(main elements, error rows) of a DoFn's single output, by two single-output steps."""
    return (outcomes | f"{label}.ok" >> beam.Filter(is_main),
            outcomes | f"{label}.errors" >> beam.FlatMap(_error_rows))


def _attach_references(element: tuple[str, dict[str, list]]) -> Iterator[ImageRef]:
    _, groups = element
    captions = [c for captions in groups["captions"] for c in captions]
    for ref in groups["refs"]:
        yield with_reference_captions(ref, captions)


def _write_stats(_: Any, path: str, matched: int, captioned: int, failed: int, skipped: int,
                 skipped_interrupted: int, bleu: dict | None, loads: list[tuple[str, float, int, str]]) -> None:
    stats = {"matched": matched, "captioned": captioned, "failed": failed, "skipped_resume": skipped,
             "skipped_from_interrupted": skipped_interrupted,
             "bleu": None if bleu is None else {k: bleu[k] for k in ("bleu1", "bleu2", "bleu3", "bleu4")},
             "bleu_segments": None if bleu is None else bleu.get("segments"), **load_summary(loads)}
    with FileSystems.create(path) as f:
        f.write(json.dumps(stats).encode())


def build(p: beam.Pipeline, plan: Plan) -> None:
    """Compose the pipeline on ``p`` (see module docstring)."""
    o = plan.options
    ref_lists, error_lists = [], []
    if plan.inputs:
        matched, match_failed = split(p | "Globs" >> beam.Create(plan.inputs)
                                      | "Match" >> beam.ParDo(MatchGlob()), "Match")
        ref_lists.append(matched)
        error_lists.append(match_failed)
    if plan.manifest:
        listed, listed_failed = split(p | "Manifest" >> beam.Create([plan.manifest])
                                      | "ReadManifest" >> beam.ParDo(ReadManifest(
                                          o.manifest_uri_column, o.manifest_id_column, o.manifest_references_column)),
                                      "ReadManifest")
        ref_lists.append(listed)
        error_lists.append(listed_failed)
    refs = ref_lists | "AllRefs" >> beam.Flatten()
    match_errors = error_lists | "MatchErrors" >> beam.Flatten()

    with_refs = refs
    if o.references:  # joined before reading, so no shuffle separates captioning from the commits
        reference_table = (p | "ReferencesFile" >> beam.Create([o.references])
                           | "ReadReferences" >> beam.FlatMap(read_references, o.references_id_column,
                                                              o.references_caption_column))
        with_refs = ({"refs": refs | "KeyById" >> beam.Map(lambda r: (r.image_id, r)), "captions": reference_table}
                     | "JoinReferences" >> beam.CoGroupByKey()
                     | "AttachReferences" >> beam.FlatMap(_attach_references))
    keyed = with_refs | "KeyByUri" >> beam.Map(lambda r: (r.uri, r))
    groups: dict[str, Any] = {"refs": keyed}
    interrupted = set(plan.interrupted_files)
    done_sets = [(DONE, [f for f in plan.done_files if f not in interrupted]),
                 (DONE_BY_INTERRUPTED, plan.interrupted_files)]
    done_marks = [p | f"DoneFiles{mark}" >> beam.Create(files)
                  | f"ReadDone{mark}" >> ReadAllFromParquet(columns=["image_uri"])
                  | f"KeyDone{mark}" >> beam.Map(lambda row, m=mark: (row["image_uri"], m))
                  for mark, files in done_sets if files]
    if done_marks:
        groups["done"] = done_marks | "AllDone" >> beam.Flatten()
    # The grouping also spreads work over workers after matching (it is a shuffle).
    deduped = groups | "GroupByUri" >> beam.CoGroupByKey() | "Dedupe" >> beam.ParDo(DedupeAndResume())
    todo, duplicates = split(deduped, "Dedupe")
    skipped = deduped | "Skipped" >> beam.FlatMap(_skipped)

    records, read_failed = split(todo | "ReadDecode" >> beam.ParDo(
        ReadAndDecode(plan.image_size, o.max_image_bytes, o.max_image_pixels, read_settings(o))), "ReadDecode")
    if o.skip_known_content:
        content = split_by_content(p, records, plan.model_id, plan.known_files, plan.known_rows,
                                   known_columns(o.emit_embeddings))
        records = content.leaders
    batches = records | "Batch" >> beam.BatchElements(
        min_batch_size=o.min_batch_size or o.batch_size, max_batch_size=o.batch_size)
    share_tag = f"caption-model-{plan.model_id}-{plan.run_id}" if o.share_model_across_processes else None
    captioned = batches | "Caption" >> beam.ParDo(CaptionBatches(
        plan.model_uri, o.encoder_weights, plan.model_id,
        {"method": o.decode, "beam_width": o.beam_width, "length_alpha": o.length_alpha},
        emit_embeddings=o.emit_embeddings, precision=o.precision,
        runtime=o.encoder_runtime, model_cache_dir=o.model_cache_dir,
        progress_seconds=o.progress_seconds, share_tag=share_tag))
    rows, caption_failed = split(captioned, "Caption")
    loads = (captioned | "ModelLoads" >> beam.FlatMap(_loads) | "DistinctLoads" >> beam.Distinct()
             | "AllLoads" >> beam.combiners.ToList())
    if o.references or o.manifest_references_column:  # references came with the ImageRef
        rows = rows | "SentenceBleu" >> beam.Map(with_references, None)

    # One writer per source of rows, each fused with the step that makes its rows (a Flatten in
    # front of a writer could put it in a stage that only runs once every source has finished).
    policy = RetryPolicy(attempts=o.commit_attempts)

    def commit(pcoll: Any, sub: str, label: str, schema: Any) -> None:
        pcoll | f"Commit-{label}" >> beam.ParDo(CommitRows(
            FileSystems.join(plan.output, sub), plan.run_id, label, schema, o.commit_every, o.commit_seconds, policy))

    caption_sources = [("captions", rows)]
    error_sources = [("match", match_errors), ("dedupe", duplicates), ("read", read_failed), ("infer", caption_failed)]
    if o.skip_known_content:  # copies of earlier captions, and of this run's captions to its copies
        follower_rows, follower_errors = copy_to_followers(rows, content)
        with_refs = o.references or o.manifest_references_column
        for label, pcoll in (("known", content.copied), ("followers", follower_rows)):
            if with_refs:
                pcoll = pcoll | f"SentenceBleu-{label}" >> beam.Map(with_references, None)
            caption_sources.append((f"captions-{label}", pcoll))
        error_sources.append(("same-content", follower_errors))
    for label, pcoll in caption_sources:
        commit(pcoll, "captions", label, caption_schema(o.emit_embeddings))
    for label, pcoll in error_sources:
        commit(pcoll, "errors", f"errors-{label}", ERROR_SCHEMA)
    if len(caption_sources) > 1:
        rows = [pcoll for _, pcoll in caption_sources] | "AllCaptions" >> beam.Flatten()
    errors = [pcoll for _, pcoll in error_sources] | "AllErrors" >> beam.Flatten()

    def count(pcoll: Any, name: str) -> Any:
        return beam.pvalue.AsSingleton(pcoll | f"Count{name}" >> beam.combiners.Count.Globally())

    inputs = [refs, match_errors] | "Inputs" >> beam.Flatten()
    bleu = (rows | "WithReferences" >> beam.Filter(lambda r: bool(r.get("references")))
            | "BleuPairs" >> beam.Map(bleu_pair)
            | "CorpusBleu" >> beam.CombineGlobally(CorpusBleuFn()))
    (p | "Stats" >> beam.Create([None])
     | "WriteStats" >> beam.Map(_write_stats, plan.stats_path, count(inputs, "Matched"), count(rows, "Captioned"),
                                count(errors, "Failed"), count(skipped, "Skipped"),
                                count(skipped | "FromInterrupted" >> beam.Filter(bool), "SkippedInterrupted"),
                                beam.pvalue.AsSingleton(bleu), beam.pvalue.AsSingleton(loads)))


def local_runner(options: PipelineOptions) -> Any:
    """Beam's FnApiRunner, which the DirectRunner picks for batch pipelines; chosen directly so
    the DirectRunner never tries to download the Prism binary. Honours --direct_running_mode
    (in_memory / multi_threading / multi_processing) and --direct_num_workers."""
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return fn_runner.FnApiRunner(provision_info=info)


def make_runner(name: str | None, options: PipelineOptions) -> Any:
    """The runner object for ``--runner``: our local FnApiRunner for the DirectRunner, the class
    path for short names Beam does not resolve (``DaskRunner``), else None (Beam resolves it)."""
    if name in (None, "DirectRunner", "direct"):
        return local_runner(options)
    if name in RUNNER_ALIASES:
        try:
            return create_runner(RUNNER_ALIASES[name])
        except ImportError as exc:
            raise PreflightError(f"--runner {name} needs extra packages: pip install -e '.[dask]' ({exc})") from exc
    return None


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def plan_run(options: CaptionOptions) -> Plan:
    """Validate flags, output directory and model before anything is read (refuse early)."""
    from model.artifact import read_artifact
    from model.captioner import build_decoders, check_encoder_ready

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
    contents = read_artifact(model_uri, expected_model_id=options.expected_model_id,
                             encoder_weights=options.encoder_weights)
    build_decoders(contents)  # every decoder weights file must fit the config
    check_encoder_ready(contents, options.precision, options.encoder_runtime)
    done_files: list[str] = []
    interrupted: list[str] = []
    if options.resume:
        remove_stale_temp_dirs(output)
        done_files = existing_outputs(output)
        check_resume_model(done_files, contents.model_id)
        interrupted = interrupted_outputs(output, done_files)
    known_files = files_with_columns([f for f in done_files if "/captions/" in f], known_columns(
        options.emit_embeddings)) if options.skip_known_content else []
    size = contents.config.encoder.image_size
    settings = contents.decode_settings(method=options.decode, beam_width=options.beam_width,
                                        length_alpha=options.length_alpha)
    return Plan(new_run_id(), output, inputs, options.input_manifest, model_uri, contents.model_id,
                (int(size[0]), int(size[1])), settings.describe(), options, done_files, interrupted, known_files)


def _metric(result: Any, name: str) -> int | None:
    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE).with_name(name))["counters"]
    except Exception:  # noqa: BLE001 - some runners do not report metrics
        return None
    if not counters:
        return 0
    return int(sum((c.committed if c.committed is not None else c.attempted) or 0 for c in counters))


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the pipeline to completion and return (and write) the run summary."""
    options = PipelineOptions(argv)
    caption_options = options.view_as(CaptionOptions)
    plan = plan_run(caption_options)
    if caption_options.iceberg_table:
        from beam_pipeline import lake_table

        plan.known_rows = lake_table.prepare_table(
            caption_options.iceberg_catalog, caption_options.iceberg_table, plan.model_id,
            known_columns(caption_options.emit_embeddings) if caption_options.skip_known_content else None)
    log.info("run %s: model %s, output %s", plan.run_id, plan.model_id, plan.output)
    runner_name = options.view_as(StandardOptions).runner
    runner = make_runner(runner_name, options)
    started = time.time()
    p = beam.Pipeline(runner=runner, options=options)
    build(p, plan)
    result = p.run()
    result.wait_until_finish()
    wall = time.time() - started
    with FileSystems.open(plan.stats_path) as f:
        stats = json.loads(f.read())
    # Counts (matched ... model_loads) come from the data; "counters" are the runner's metrics,
    # null where a runner reports none (e.g. Dask).
    summary = {
        "run_id": plan.run_id, **stats,
        "counters": {name: _metric(result, name) for name in
                     ("images_read", "images_captioned", "images_failed", "batches", "bytes_read", "model_loads",
                      "rows_committed", "commits", "commit_retries", "images_same_content")},
        "images_per_second": round(stats["captioned"] / wall, 3) if wall > 0 else None,
        "wall_seconds": round(wall, 2), "model_id": plan.model_id, "model": plan.model_uri,
        "decode": plan.decode, "encoder_precision": caption_options.precision,
        "encoder_runtime": caption_options.encoder_runtime, "batch_size": caption_options.batch_size,
        "inputs": plan.inputs, "input_manifest": plan.manifest, "references": caption_options.references,
        "output": plan.output, "resumed_from_files": len(plan.done_files),
        "resumed_from_interrupted_files": len(plan.interrupted_files),
        "commit_every": caption_options.commit_every, "commit_seconds": caption_options.commit_seconds,
        "runner": runner_name or "DirectRunner",
        "direct_running_mode": options.view_as(DirectOptions).direct_running_mode,
        "skip_known_content": caption_options.skip_known_content,
    }
    committed = summary["counters"]["rows_committed"]
    if committed is not None and committed < stats["captioned"] + stats["failed"]:
        raise RuntimeError(f"run {plan.run_id}: {stats['captioned'] + stats['failed']} rows were made but only "
                           f"{committed} committed; not reporting success (rerun with --resume)")
    if caption_options.iceberg_table:  # after the Parquet files are committed: make the table agree
        summary["iceberg"] = lake_table.sync_output_to_table(
            caption_options.iceberg_catalog, caption_options.iceberg_table, plan.output,
            caption_options.emit_embeddings)
    text = json.dumps(summary, indent=2).encode()
    for path in (FileSystems.join(plan.output, "summary.json"), FileSystems.join(plan.output, "_runs", plan.run_id, "summary.json")):
        with FileSystems.create(path) as f:
            f.write(text)
    if caption_options.report:
        from beam_pipeline.report import write_report

        summary["report"] = write_report(plan.output, sample=caption_options.report_sample)
    return summary

