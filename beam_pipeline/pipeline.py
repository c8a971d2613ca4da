"""The captioning pipeline: match -> dedupe/resume -> read+decode -> batch -> encode+decode
captions -> references/BLEU -> Parquet captions, Parquet errors, run statistics.

``run(argv)`` is what ``run_pipeline.py`` calls; ``build(p, plan)`` composes the transforms.
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
from apache_beam.io.parquetio import ReadAllFromParquet, WriteToParquet
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from beam_pipeline.bleu_combine import CorpusBleuFn
from beam_pipeline.inference import CaptionBatches
from beam_pipeline.options import CaptionOptions, default_model_uri, read_settings
from beam_pipeline.preflight import (PreflightError, check_output, check_resume_model, existing_outputs,
                                    remove_stale_temp_dirs)
from beam_pipeline.records import STAGE_MATCH, ImageRef, bleu_pair, error_row, with_references
from beam_pipeline.schemas import ERROR_SCHEMA, caption_schema
from beam_pipeline.sources import ERRORS, NAMESPACE, MatchGlob, ReadAndDecode, ReadManifest, read_references

log = logging.getLogger(__name__)
SKIPPED = "skipped"


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

    @property
    def stats_path(self) -> str:
        return FileSystems.join(self.output, "_runs", self.run_id, "stats.json")


class DedupeAndResume(beam.DoFn):
    """Per image URI: skip it if an earlier run already has a row for it (``--resume``); else
    keep the first input and turn repeats of the same URI into ``DuplicateInput`` error rows."""

    def process(self, element: tuple[str, dict[str, list]]) -> Iterator[Any]:
        uri, groups = element
        refs: list[ImageRef] = list(groups["refs"])
        if not refs:
            return
        if list(groups.get("done", [])):
            for _ in refs:
                yield beam.pvalue.TaggedOutput(SKIPPED, 1)
            return
        yield refs[0]
        for dup in refs[1:]:
            yield beam.pvalue.TaggedOutput(ERRORS, error_row(
                uri, dup.image_id, STAGE_MATCH, "DuplicateInput",
                "the same image URI was given more than once; it is captioned once"))


def _attach_references(element: tuple[str, dict[str, list]]) -> Iterator[dict[str, Any]]:
    _, groups = element
    refs = [r for refs in groups["refs"] for r in refs]
    for row in groups["rows"]:
        yield with_references(row, refs or None)


def _write_stats(_: Any, path: str, matched: int, captioned: int, failed: int, skipped: int,
                 bleu: dict | None) -> None:
    stats = {"matched": matched, "captioned": captioned, "failed": failed, "skipped_resume": skipped,
             "bleu": None if bleu is None else {k: bleu[k] for k in ("bleu1", "bleu2", "bleu3", "bleu4")},
             "bleu_segments": None if bleu is None else bleu.get("segments")}
    with FileSystems.create(path) as f:
        f.write(json.dumps(stats).encode())


def build(p: beam.Pipeline, plan: Plan) -> None:
    """Compose the pipeline on ``p`` (see module docstring)."""
    o = plan.options
    ref_lists, error_lists = [], []
    if plan.inputs:
        matched = (p | "Globs" >> beam.Create(plan.inputs)
                   | "Match" >> beam.ParDo(MatchGlob()).with_outputs(ERRORS, main="refs"))
        ref_lists.append(matched.refs)
        error_lists.append(matched[ERRORS])
    if plan.manifest:
        listed = (p | "Manifest" >> beam.Create([plan.manifest])
                  | "ReadManifest" >> beam.ParDo(ReadManifest(o.manifest_uri_column, o.manifest_id_column,
                                                              o.manifest_references_column)).with_outputs(ERRORS, main="refs"))
        ref_lists.append(listed.refs)
        error_lists.append(listed[ERRORS])
    refs = ref_lists | "AllRefs" >> beam.Flatten()
    match_errors = error_lists | "MatchErrors" >> beam.Flatten()

    keyed = refs | "KeyByUri" >> beam.Map(lambda r: (r.uri, r))
    groups: dict[str, Any] = {"refs": keyed}
    if plan.done_files:
        groups["done"] = (p | "DoneFiles" >> beam.Create(plan.done_files)
                          | "ReadDone" >> ReadAllFromParquet(columns=["image_uri"])
                          | "KeyDone" >> beam.Map(lambda row: (row["image_uri"], True)))
    # The grouping also spreads work over workers after matching (it is a shuffle).
    unique = (groups | "GroupByUri" >> beam.CoGroupByKey()
              | "Dedupe" >> beam.ParDo(DedupeAndResume()).with_outputs(ERRORS, SKIPPED, main="todo"))

    decoded = unique.todo | "ReadDecode" >> beam.ParDo(
        ReadAndDecode(plan.image_size, o.max_image_bytes, o.max_image_pixels, read_settings(o))).with_outputs(ERRORS, main="records")
    batches = decoded.records | "Batch" >> beam.BatchElements(
        min_batch_size=o.min_batch_size or o.batch_size, max_batch_size=o.batch_size)
    captioned = batches | "Caption" >> beam.ParDo(CaptionBatches(
        plan.model_uri, o.encoder_weights, plan.model_id,
        {"method": o.decode, "beam_width": o.beam_width, "length_alpha": o.length_alpha},
        emit_embeddings=o.emit_embeddings, precision=o.precision,
        runtime=o.encoder_runtime, model_cache_dir=o.model_cache_dir,
        progress_seconds=o.progress_seconds)).with_outputs(ERRORS, main="rows")

    rows = captioned.rows
    if o.references:
        reference_table = (p | "ReferencesFile" >> beam.Create([o.references])
                           | "ReadReferences" >> beam.FlatMap(read_references, o.references_id_column,
                                                              o.references_caption_column))
        rows = ({"rows": rows | "KeyById" >> beam.Map(lambda r: (r["image_id"], r)), "refs": reference_table}
                | "JoinReferences" >> beam.CoGroupByKey()
                | "AttachReferences" >> beam.FlatMap(_attach_references))
    elif o.manifest_references_column:
        rows = rows | "ManifestReferences" >> beam.Map(with_references, None)

    errors = [match_errors, unique[ERRORS], decoded[ERRORS], captioned[ERRORS]] | "AllErrors" >> beam.Flatten()
    rows | "WriteCaptions" >> WriteToParquet(
        FileSystems.join(plan.output, "captions", f"part-{plan.run_id}"), caption_schema(o.emit_embeddings),
        file_name_suffix=".parquet")
    errors | "WriteErrors" >> WriteToParquet(
        FileSystems.join(plan.output, "errors", f"part-{plan.run_id}"), ERROR_SCHEMA, file_name_suffix=".parquet")

    def count(pcoll: Any, name: str) -> Any:
        return beam.pvalue.AsSingleton(pcoll | f"Count{name}" >> beam.combiners.Count.Globally())

    inputs = [refs, match_errors] | "Inputs" >> beam.Flatten()
    bleu = (rows | "WithReferences" >> beam.Filter(lambda r: bool(r.get("references")))
            | "BleuPairs" >> beam.Map(bleu_pair)
            | "CorpusBleu" >> beam.CombineGlobally(CorpusBleuFn()))
    (p | "Stats" >> beam.Create([None])
     | "WriteStats" >> beam.Map(_write_stats, plan.stats_path, count(inputs, "Matched"), count(rows, "Captioned"),
                                count(errors, "Failed"), count(unique[SKIPPED], "Skipped"),
                                beam.pvalue.AsSingleton(bleu)))


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


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def plan_run(options: CaptionOptions) -> Plan:
    """Validate flags, output directory and model before anything is read (refuse early)."""
    from model.artifact import read_artifact
    from model.captioner import build_decoder
    from model.encoder import check_weights_available

    if not options.output:
        raise PreflightError("--output is required")
    if not options.input and not options.input_manifest:
        raise PreflightError("give --input GLOB (repeatable) or --input_manifest TABLE")
    if options.batch_size < 1:
        raise PreflightError("--batch_size must be >= 1")
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
    build_decoder(contents)  # the decoder weights must fit the config
    check_weights_available(contents.config["encoder"]["name"], contents.encoder_weights)
    done_files: list[str] = []
    if options.resume:
        remove_stale_temp_dirs(output)
        done_files = existing_outputs(output)
        check_resume_model(done_files, contents.model_id)
    size = contents.config["encoder"]["image_size"]
    settings = contents.decode_settings(method=options.decode, beam_width=options.beam_width,
                                        length_alpha=options.length_alpha)
    return Plan(new_run_id(), output, inputs, options.input_manifest, model_uri, contents.model_id,
                (int(size[0]), int(size[1])), settings.describe(), options, done_files)


def _metric(result: Any, name: str) -> int | None:
    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE).with_name(name))["counters"]
    except Exception:  # noqa: BLE001 - some runners do not report metrics
        return None
    if not counters:
        return 0
    return int(sum((c.committed if c.committed is not None else c.attempted) or 0 for c in counters))


def _load_seconds(result: Any) -> float | None:
    """Total time worker processes spent loading the model (from the model_load_ms metric)."""
    try:
        dists = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE).with_name("model_load_ms"))["distributions"]
    except Exception:  # noqa: BLE001 - some runners do not report metrics
        return None
    results = [d.committed or d.attempted for d in dists]
    return round(sum(r.sum for r in results if r) / 1000, 2)


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the pipeline to completion and return (and write) the run summary."""
    options = PipelineOptions(argv)
    caption_options = options.view_as(CaptionOptions)
    plan = plan_run(caption_options)
    log.info("run %s: model %s, output %s", plan.run_id, plan.model_id, plan.output)
    runner_name = options.view_as(StandardOptions).runner
    runner = local_runner(options) if runner_name in (None, "DirectRunner", "direct") else None
    started = time.time()
    p = beam.Pipeline(runner=runner, options=options)
    build(p, plan)
    result = p.run()
    result.wait_until_finish()
    wall = time.time() - started
    with FileSystems.open(plan.stats_path) as f:
        stats = json.loads(f.read())
    summary = {
        "run_id": plan.run_id, **stats,
        "model_loads": _metric(result, "model_loads"),
        "model_load_seconds": _load_seconds(result),
        "counters": {name: _metric(result, name) for name in
                     ("images_read", "images_captioned", "images_failed", "batches", "bytes_read", "model_loads")},
        "images_per_second": round(stats["captioned"] / wall, 3) if wall > 0 else None,
        "wall_seconds": round(wall, 2), "model_id": plan.model_id, "model": plan.model_uri,
        "decode": plan.decode, "encoder_precision": caption_options.precision,
        "encoder_runtime": caption_options.encoder_runtime, "batch_size": caption_options.batch_size,
        "inputs": plan.inputs, "input_manifest": plan.manifest, "references": caption_options.references,
        "output": plan.output, "resumed_from_files": len(plan.done_files),
        "runner": runner_name or "DirectRunner",
        "direct_running_mode": options.view_as(DirectOptions).direct_running_mode,
    }
    text = json.dumps(summary, indent=2).encode()
    for path in (FileSystems.join(plan.output, "summary.json"), FileSystems.join(plan.output, "_runs", plan.run_id, "summary.json")):
        with FileSystems.create(path) as f:
            f.write(text)
    if caption_options.report:
        from beam_pipeline.report import write_report

        summary["report"] = write_report(plan.output, sample=caption_options.report_sample)
    return summary

