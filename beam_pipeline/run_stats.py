"""The run's statistics: counts of inputs, captions, errors and resume skips, corpus BLEU and
model loads, computed from the data (exact on runners without metrics) and written once to
``OUT/_runs/RUN_ID/stats.json`` for the driver's summary."""
from __future__ import annotations

import json
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_pipeline.bleu_combine import CorpusBleuFn
from beam_pipeline.outcomes import load_summary
from beam_pipeline.records import bleu_pair


def write_stats(_: Any, path: str, matched: int, captioned: int, failed: int, skipped: int,
                skipped_interrupted: int, bleu: dict | None, loads: list[tuple[str, float, int, str]]) -> None:
    """Write stats.json (the counts the summary reports)."""
    stats = {"matched": matched, "captioned": captioned, "failed": failed, "skipped_resume": skipped,
             "skipped_from_interrupted": skipped_interrupted,
             "bleu": None if bleu is None else {k: bleu[k] for k in ("bleu1", "bleu2", "bleu3", "bleu4")},
             "bleu_segments": None if bleu is None else bleu.get("segments"), **load_summary(loads)}
    with FileSystems.create(path) as f:
        f.write(json.dumps(stats).encode())


class RunStats(beam.PTransform):
    """``{"inputs", "captions", "errors", "skipped", "loads"}`` -> stats.json at ``path``.

    ``inputs``: one element per matched input (or match error); ``skipped``: one bool per input
    skipped by ``--resume`` (True: only interrupted runs held it); ``loads``: a singleton list of
    ``(load_id, seconds, pid, host)``. Corpus BLEU is computed over caption rows with references."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def expand(self, pcolls: dict[str, Any]) -> Any:
        def count(pcoll: Any, name: str) -> Any:
            return beam.pvalue.AsSingleton(pcoll | f"Count{name}" >> beam.combiners.Count.Globally())

        bleu = (pcolls["captions"] | "WithReferences" >> beam.Filter(lambda r: bool(r.get("references")))
                | "BleuPairs" >> beam.Map(bleu_pair)
                | "CorpusBleu" >> beam.CombineGlobally(CorpusBleuFn()))
        skipped = pcolls["skipped"]
        return (pcolls["inputs"].pipeline | "Stats" >> beam.Create([None])
                | "WriteStats" >> beam.Map(
                    write_stats, self.path, count(pcolls["inputs"], "Matched"),
                    count(pcolls["captions"], "Captioned"), count(pcolls["errors"], "Failed"),
                    count(skipped, "Skipped"),
                    count(skipped | "FromInterrupted" >> beam.Filter(bool), "SkippedInterrupted"),
                    beam.pvalue.AsSingleton(bleu), beam.pvalue.AsSingleton(pcolls["loads"])))
