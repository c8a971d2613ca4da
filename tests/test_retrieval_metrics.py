"""Findability metrics on small hand-made corpora whose BM25 scores and ranks are worked out by
hand, plus the properties the issue asks for (ties broken in expectation, order independence)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from model.retrieval_metrics import (
    BM25Index,
    FindabilityReport,
    expected_rank,
    expected_reciprocal_rank,
    findability,
    findability_of_ranks,
    tokenize,
)


def bm25_by_hand(documents: list[str], query: str, k1: float = 1.2, b: float = 0.75) -> list[float]:
    """The textbook formula, one loop per document (independent of the index's postings)."""
    docs = [tokenize(d) for d in documents]
    avgdl = sum(len(d) for d in docs) / len(docs)
    out = []
    for d in docs:
        total = 0.0
        for q in tokenize(query):
            n = sum(1 for other in docs if q in other)
            idf = math.log(1 + (len(docs) - n + 0.5) / (n + 0.5))
            f = d.count(q)
            total += idf * f * (k1 + 1) / (f + k1 * (1 - b + b * len(d) / avgdl))
        out.append(total)
    return out


def test_tokenize_uses_the_caption_cleaning():
    assert tokenize("A dog's T-shirt, 2 kids!") == ["a", "dogs", "tshirt", "kids"]
    assert tokenize("") == []


def test_two_document_score_is_ln2():
    # N=2, "dog" in one document: idf = ln(1 + 1.5/1.5) = ln 2; |D| = avgdl so tf part = 1.
    scores = BM25Index(["dog", "cat"]).scores("dog")
    assert scores == pytest.approx([math.log(2), 0.0], abs=1e-12)


def test_scores_equal_the_formula_on_a_small_corpus():
    docs = [
        "a black dog runs on the grass",
        "a dog",
        "two dogs play in the snow",
        "a man rides a bike on a dirt road",
        "",
        "dog dog dog",
    ]
    index = BM25Index(docs)
    for query in ["a black dog", "dog on grass", "man on a bike", "snow dogs", "cat", "dog dog"]:
        assert index.scores(query) == pytest.approx(bm25_by_hand(docs, query), rel=1e-12, abs=1e-12)
    other = BM25Index(docs, k1=2.0, b=0.3)
    assert other.scores("a black dog") == pytest.approx(bm25_by_hand(docs, "a black dog", 2.0, 0.3))


def test_length_normalisation_and_saturation():
    short, long_, double = BM25Index(["dog", "dog runs on the grass", "dog dog", "cat"]).scores("dog")[:3]
    assert short > long_  # same tf, longer document scores less
    assert double > short  # more occurrences score more ...
    flat = BM25Index(["dog", "dog runs on the grass", "cat"], b=0.0).scores("dog")
    assert flat[0] == pytest.approx(flat[1])  # ... and b=0 switches length normalisation off
    one, two = BM25Index(["dog", "dog dog", "cat"], b=0.0).scores("dog")[:2]
    assert one < two < 2 * one  # term frequency saturates (k1)


def test_no_match_and_empty_index_score_zero():
    assert BM25Index(["a dog", "a cat"]).scores("zebra").tolist() == [0.0, 0.0]
    assert BM25Index(["", ""]).scores("dog").tolist() == [0.0, 0.0]
    assert BM25Index([]).scores("dog").shape == (0,)


def test_expected_rank_breaks_ties_in_expectation():
    scores = np.array([3.0, 1.0, 3.0, 3.0, 0.0])
    assert expected_rank(scores, 0) == 2.0  # three tied at the top: positions 1..3
    assert expected_rank(scores, 2) == 2.0
    assert expected_rank(scores, 1) == 4.0
    assert expected_rank(scores, 4) == 5.0
    assert expected_rank(np.array([0.5]), 0) == 1.0
    with pytest.raises(ValueError):
        expected_rank(scores, 5)


def test_known_ranks_on_a_hand_made_corpus():
    docs = ["red car", "blue car", "red bike", "dog on grass"]
    queries = [
        (0, "red car"),  # doc 0 matches both words: rank 1
        (3, "dog"),  # only doc 3: rank 1
        (1, "car"),  # docs 0 and 1 tie: positions 1..2
        (2, "cat"),
    ]  # nothing matches: all four tie, positions 1..4
    report = findability(docs, queries)
    assert report == FindabilityReport(
        r_at_1=pytest.approx((1 + 1 + 0.5 + 0.25) / 4),
        r_at_5=1.0,
        r_at_10=1.0,
        mrr=pytest.approx((1 + 1 + 0.75 + (1 + 1 / 2 + 1 / 3 + 1 / 4) / 4) / 4),
        median_rank=1.25,
        queries=4,
    )


def test_tie_group_straddling_k():
    # 3 "red dog" documents outrank the 4 "dog" ones for "red dog"; the target is one of the 4.
    docs = ["red dog"] * 3 + ["dog"] * 4 + ["cat"] * 5
    report = findability(docs, [(4, "red dog")])
    assert report.r_at_1 == 0.0
    assert report.r_at_5 == pytest.approx(0.5)  # positions 4..7, two of four within 5
    assert report.r_at_10 == 1.0
    assert report.median_rank == 5.5
    assert report.mrr == pytest.approx(np.mean([1 / 4, 1 / 5, 1 / 6, 1 / 7]))


def test_identical_captions_do_not_win_by_their_order():
    docs = ["a dog runs"] * 4
    report = findability(docs, [(i, "a dog runs on grass") for i in range(4)])
    assert report.r_at_1 == pytest.approx(0.25)
    assert report.median_rank == 2.5
    assert report.mrr == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_report_does_not_depend_on_document_order(seed: int):
    rng = random.Random(seed)
    words = "a dog cat man woman runs jumps grass snow water red blue ball".split()
    captions = [" ".join(rng.choices(words, k=rng.randint(2, 6))) for _ in range(8)]
    docs = [rng.choice(captions) for _ in range(40)]  # many duplicates
    queries = [(rng.randrange(40), " ".join(rng.choices(words, k=4))) for _ in range(60)]
    order = list(range(40))
    rng.shuffle(order)
    where = {old: new for new, old in enumerate(order)}
    shuffled = findability([docs[i] for i in order], [(where[t], q) for t, q in queries])
    assert shuffled == pytest.approx(findability(docs, queries))


def test_untied_findability_equals_report_of_its_ranks():
    docs = ["red car", "blue bike", "dog on grass", "girl in pink"]
    queries = [(0, "red car"), (1, "bike"), (2, "grass"), (3, "a girl in pink dress"), (0, "a red car")]
    index = BM25Index(docs)
    ranks = [expected_rank(index.scores(q), t) for t, q in queries]
    assert all(r == int(r) for r in ranks)
    assert findability(docs, queries) == findability_of_ranks(ranks)


def test_findability_of_ranks():
    report = findability_of_ranks([1, 2, 6, 11])
    assert (report.r_at_1, report.r_at_5, report.r_at_10) == (0.25, 0.5, 0.75)
    assert report.mrr == pytest.approx((1 + 1 / 2 + 1 / 6 + 1 / 11) / 4)
    assert report.median_rank == 4.0 and report.queries == 4


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match="at least one query"):
        findability(["a dog"], [])
    with pytest.raises(ValueError, match="not a document index"):
        findability(["a dog"], [(1, "dog")])
    with pytest.raises(ValueError, match="at least one query"):
        findability_of_ranks([])
    with pytest.raises(ValueError, match="1-based"):
        findability_of_ranks([0, 1])
    with pytest.raises(ValueError, match="k1"):
        BM25Index(["a dog"], k1=-1.0)


def test_a_document_outside_the_index_scores_as_it_would_inside():
    docs = ["a red dog runs", "a blue cat sits on a mat", "two dogs play in the snow", "a man rides a bike", ""]
    index = BM25Index(docs)
    for query in ["red dog", "a dog in the snow", "a man on a bike", "cat cat", "zebra"]:
        # the same statistics (each document is counted in them): the same scores
        np.testing.assert_allclose([index.score_outside(query, d) for d in docs], index.scores(query), atol=1e-12)
    # outside: only "red" matches (in 1 of 5 documents); avgdl (4 + 7 + 6 + 5 + 0) / 5 = 4.4; |D| = 3
    by_hand = math.log(1 + 4.5 / 1.5) * 2.2 / (1 + 1.2 * (0.25 + 0.75 * 3 / 4.4))
    assert index.score_outside("red dog", "a red zebra") == pytest.approx(by_hand)
    assert index.score_outside("zebra", "a zebra") > index.score_outside("dog", "a dog")  # unseen: the largest idf
    assert index.score_outside("red dog", "") == 0.0


def test_expected_reciprocal_rank_averages_the_tie_groups_positions():
    assert expected_reciprocal_rank(0, 1) == 1.0
    assert expected_reciprocal_rank(1, 2) == pytest.approx((1 / 2 + 1 / 3) / 2)
    with pytest.raises(ValueError):
        expected_reciprocal_rank(0, 0)
