"""CorpusBleuFn inside real Beam pipelines must give nltk's corpus_bleu, whatever the merge order."""

from __future__ import annotations

import itertools
import pickle
import random

import apache_beam as beam
import pytest
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to

from beam_pipeline.bleu_combine import CorpusBleuFn
from model.bleu import BleuStats
from tests.test_bleu import NAMES
from tests.test_bleu import nltk_scores as nltk_corpus_scores


def nltk_scores(segments) -> dict[str, float]:
    """nltk corpus_bleu per weight vector on (hypothesis, references) pairs."""
    return nltk_corpus_scores([h for h, _ in segments], [r for _, r in segments])


def random_segments(seed: int, n: int) -> list[tuple[list[str], list[list[str]]]]:
    """Random segments over a small vocabulary so that 2- to 4-grams do match."""
    rng = random.Random(seed)
    vocab = ["a", "dog", "runs", "in", "the", "grass", "black", "park"]
    return [
        (
            rng.choices(vocab, k=rng.randint(0, 10)),
            [rng.choices(vocab, k=rng.randint(1, 12)) for _ in range(rng.randint(1, 4))],
        )
        for _ in range(n)
    ]


def close_to(expected: dict[str, float], segments: int):
    """assert_that matcher: exactly one output whose scores equal ``expected`` to 1e-12."""

    def _check(actual):
        actual = list(actual)
        if len(actual) != 1:
            raise BeamAssertException(f"expected one result, got {actual}")
        (out,) = actual
        if out["segments"] != segments or any(abs(out[n] - expected[n]) > 1e-12 for n in NAMES):
            raise BeamAssertException(f"got {out}, expected {expected} over {segments} segments")

    return _check


# The in-process engines the DirectRunner runs batch pipelines on (it only tries Prism first,
# which needs a downloaded binary, so the tests name the engines directly).
RUNNERS = {"bundle-direct": BundleBasedDirectRunner, "fnapi-direct": FnApiRunner}


@pytest.mark.parametrize("runner", list(RUNNERS), ids=list(RUNNERS))
def test_pipeline_equals_nltk(runner):
    segments = random_segments(seed=1, n=300)
    expected = nltk_scores(segments)
    assert expected["bleu4"] > 0.01  # a meaningful, non-degenerate corpus
    by_key = {k: [s for i, s in enumerate(segments) if i % 3 == k] for k in range(3)}

    with beam.Pipeline(runner=RUNNERS[runner]()) as p:
        segs = p | "Create" >> beam.Create(segments)
        overall = segs | "Global" >> beam.CombineGlobally(CorpusBleuFn())
        assert_that(overall, close_to(expected, 300), label="CheckGlobal")

        fanned = segs | "Fanout" >> beam.CombineGlobally(CorpusBleuFn()).with_fanout(7)
        assert_that(fanned, close_to(expected, 300), label="CheckFanout")

        per_key = (
            p
            | "CreateKeyed" >> beam.Create([(i % 3, s) for i, s in enumerate(segments)])
            | "PerKey" >> beam.CombinePerKey(CorpusBleuFn())
            | "Round" >> beam.MapTuple(lambda k, out: (k, out["segments"], round(out["bleu4"], 9)))
        )
        assert_that(
            per_key,
            equal_to([(k, len(v), round(nltk_scores(v)["bleu4"], 9)) for k, v in by_key.items()]),
            label="CheckPerKey",
        )

        empty = (
            p
            | "CreateEmpty" >> beam.Create([]).with_output_types(tuple[list[str], list[list[str]]])
            | "EmptyGlobal" >> beam.CombineGlobally(CorpusBleuFn())
        )
        assert_that(empty, equal_to([None]), label="CheckEmpty")


def test_merge_order_does_not_matter():
    segments = random_segments(seed=2, n=200)
    expected = nltk_scores(segments)
    fn = CorpusBleuFn()
    rng = random.Random(0)
    cuts = sorted(rng.sample(range(1, len(segments)), 4))
    chunks = [segments[i:j] for i, j in zip([0, *cuts], [*cuts, len(segments)])]
    accs = []
    for chunk in chunks:
        acc = fn.create_accumulator()
        for seg in chunk:
            acc = fn.add_input(acc, seg)
        accs.append(acc)

    results = set()
    for order in itertools.permutations(accs):
        flat = fn.merge_accumulators(order)
        nested = fn.merge_accumulators(
            [
                fn.merge_accumulators(order[:2]),
                fn.merge_accumulators([order[2]]),
                fn.merge_accumulators(order[3:]),
                fn.create_accumulator(),
            ]
        )
        assert flat == nested
        results.add(tuple(sorted(fn.extract_output(flat).items())))
    assert len(results) == 1
    out = dict(results.pop())
    assert out["segments"] == 200
    for n in NAMES:
        assert abs(out[n] - expected[n]) <= 1e-12
    # fn.apply folds everything in one accumulator: same answer.
    assert fn.apply(segments) == out


def test_accumulator_is_small_and_empty_output_is_none():
    fn = CorpusBleuFn()
    assert fn.extract_output(fn.create_accumulator()) is None
    acc = fn.create_accumulator()
    for seg in random_segments(seed=3, n=500):
        acc = fn.add_input(acc, seg)
    assert isinstance(acc, BleuStats) and acc.count == 500
    assert len(pickle.dumps(acc)) < 400  # counts only, independent of the corpus size
    assert fn.extract_output(fn.merge_accumulators([])) is None
