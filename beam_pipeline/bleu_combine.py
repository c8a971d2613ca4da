"""Corpus BLEU as a Beam CombineFn: workers add segments to small count accumulators.

The accumulator is a :class:`model.bleu.BleuStats` (eight ints plus lengths and a segment
count), so combiner lifting ships only counts between workers, and the merged result equals
nltk's ``corpus_bleu`` over the whole corpus whatever the bundling or merge order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import apache_beam as beam

from model.bleu import BleuStats, corpus_bleu_from_stats, segment_stats

BleuSegment = tuple[Sequence[str], Sequence[Sequence[str]]]


class CorpusBleuFn(beam.CombineFn):
    """Combine ``(hypothesis_tokens, references_tokens)`` pairs into corpus BLEU-1..4.

    Output: ``{"bleu1": .., "bleu2": .., "bleu3": .., "bleu4": .., "segments": n}``, or
    ``None`` when no segment was added (so an empty corpus is not reported as BLEU 0).
    Tokens should already be BLEU-tokenised (see :func:`model.bleu.bleu_tokens`).
    """

    def create_accumulator(self) -> BleuStats:
        return BleuStats.zero()

    def add_input(self, accumulator: BleuStats, element: BleuSegment) -> BleuStats:
        hypothesis, references = element
        return accumulator.merge(segment_stats(hypothesis, references))

    def merge_accumulators(self, accumulators: Iterable[BleuStats]) -> BleuStats:
        merged = BleuStats.zero()
        for acc in accumulators:
            merged = merged.merge(acc)
        return merged

    def extract_output(self, accumulator: BleuStats) -> dict[str, float | int] | None:
        if accumulator.count == 0:
            return None
        scores: dict[str, float | int] = dict(corpus_bleu_from_stats(accumulator))
        scores["segments"] = accumulator.count
        return scores
