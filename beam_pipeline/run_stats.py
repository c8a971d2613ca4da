"""The run's statistics: counts of inputs, captions, errors and resume skips, corpus BLEU and
model loads, computed from the data (exact on runners without metrics) and written once to
``OUT/_runs/RUN_ID/stats.json`` for the driver's summary.

Everything is one ``CombineGlobally`` over tagged elements (``RunStatsFn``): one shuffle and two
small stages at the end of a run, where a combine per count took a dozen stages (and their
construction and tear-down) per run."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_pipeline.bleu_combine import CorpusBleuFn
from beam_pipeline.outcomes import PCollections, load_summary
from beam_pipeline.records import bleu_pair

COUNTS = ("matched", "captioned", "failed", "skipped_resume", "skipped_from_interrupted", "recaptioned_changed")


class RunStatsFn(beam.CombineFn):
    """``(tag, value)`` -> the stats dict. Tags: ``matched`` (one per input), ``captioned`` (value:
    a BLEU segment or None), ``failed``, ``skipped`` (value: True when only interrupted runs held
    the input), ``load`` (value: a ``(load_id, seconds, pid, host)``; repeats count once),
    ``captioned_by`` (value: ``("host:pid", n)``, summed per process into ``captioned_per_process``)."""

    def __init__(self) -> None:
        self._bleu = CorpusBleuFn()

    def create_accumulator(self) -> dict[str, Any]:
        return {
            "counts": dict.fromkeys(COUNTS, 0),
            "bleu": self._bleu.create_accumulator(),
            "loads": set(),
            "per_process": {},
        }

    def add_input(self, acc: dict[str, Any], element: tuple[str, Any]) -> dict[str, Any]:
        tag, value = element
        counts = acc["counts"]
        if tag == "captioned":
            counts["captioned"] += 1
            if value is not None:
                acc["bleu"] = self._bleu.add_input(acc["bleu"], value)
        elif tag == "skipped":
            counts["skipped_resume"] += 1
            counts["skipped_from_interrupted"] += bool(value)
        elif tag == "changed":
            counts["recaptioned_changed"] += 1
        elif tag == "load":
            acc["loads"].add(tuple(value))
        elif tag == "captioned_by":
            process, n = value
            acc["per_process"][process] = acc["per_process"].get(process, 0) + n
        else:
            counts[tag] += 1
        return acc

    def merge_accumulators(self, accumulators: Iterable[dict[str, Any]]) -> dict[str, Any]:
        merged = self.create_accumulator()
        for acc in accumulators:
            for name, n in acc["counts"].items():
                merged["counts"][name] += n
            merged["bleu"] = self._bleu.merge_accumulators([merged["bleu"], acc["bleu"]])
            merged["loads"] |= acc["loads"]
            for process, n in acc["per_process"].items():
                merged["per_process"][process] = merged["per_process"].get(process, 0) + n
        return merged

    def extract_output(self, acc: dict[str, Any]) -> dict[str, Any]:
        bleu = self._bleu.extract_output(acc["bleu"])
        return {
            **acc["counts"],
            "bleu": None if bleu is None else {k: bleu[k] for k in ("bleu1", "bleu2", "bleu3", "bleu4")},
            "bleu_segments": None if bleu is None else bleu["segments"],
            **load_summary(sorted(acc["loads"])),
            "captioned_per_process": dict(sorted(acc["per_process"].items())),
        }


def write_stats(stats: dict[str, Any], path: str) -> None:
    """Write stats.json (the counts the summary reports)."""
    with FileSystems.create(path) as f:
        f.write(json.dumps(stats).encode())


def _caption_segment(row: dict[str, Any]) -> tuple[str, Any]:
    return "captioned", bleu_pair(row) if row.get("references") else None


class RunStats(beam.PTransform):
    """``{"inputs", "captions", "errors", "skipped", "workers"}`` -> stats.json at ``path``.

    ``inputs``: one element per matched input (or match error); ``skipped``: one bool per input
    skipped by ``--resume`` (True: only interrupted runs held it); ``workers``: the captioning
    processes' tagged reports (``outcomes.worker_reports``: model loads, images per process);
    ``changed`` (optional): one URI per input captioned again because it changed. Corpus BLEU is
    computed over caption rows with references."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def expand(self, pcolls: PCollections) -> beam.PCollection:
        tagged = [
            pcolls["inputs"] | "TagMatched" >> beam.Map(lambda _: ("matched", None)),
            pcolls["captions"] | "TagCaptioned" >> beam.Map(_caption_segment),
            pcolls["errors"] | "TagFailed" >> beam.Map(lambda _: ("failed", None)),
            pcolls["skipped"] | "TagSkipped" >> beam.Map(lambda flag: ("skipped", flag)),
            pcolls["workers"],
        ]
        if "changed" in pcolls:
            tagged.append(pcolls["changed"] | "TagChanged" >> beam.Map(lambda _: ("changed", None)))
        return (
            tagged
            | "Tagged" >> beam.Flatten()
            | "Combine" >> beam.CombineGlobally(RunStatsFn())
            | "WriteStats" >> beam.Map(write_stats, self.path)
        )
