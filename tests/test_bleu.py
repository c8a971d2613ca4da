"""Corpus BLEU from sufficient statistics must equal nltk's corpus_bleu exactly (pure Python)."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu, sentence_bleu

from model.bleu import (
    BLEU_WEIGHTS,
    SPECIAL_TOKENS,
    BleuStats,
    bleu_tokens,
    corpus_bleu_from_stats,
    corpus_bleu_scores,
    segment_stats,
    sentence_bleu_scores,
)
from model.text import clean_tokens

REPO = Path(__file__).resolve().parents[1]
NAMES = ("bleu1", "bleu2", "bleu3", "bleu4")
# The weight vectors as a caller of nltk would spell them (BLEU-3 has only three weights).
NLTK_WEIGHTS = {
    "bleu1": (1, 0, 0, 0),
    "bleu2": (1 / 2, 1 / 2, 0, 0),
    "bleu3": (1 / 3,) * 3,
    "bleu4": (1 / 4,) * 4,
}


def nltk_scores(hypotheses, references_list) -> dict[str, float]:
    """Reference values: one nltk corpus_bleu call per weight vector, its warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {name: float(corpus_bleu(references_list, hypotheses, weights=w)) for name, w in NLTK_WEIGHTS.items()}


def assert_same(ours: dict[str, float], theirs: dict[str, float]) -> None:
    """Equal to 1e-12 absolutely and relatively (nltk's ~1e-154 'zero' scores must match too)."""
    assert set(ours) >= set(NAMES)
    for name in NAMES:
        a, b = ours[name], theirs[name]
        assert abs(a - b) <= 1e-12 and a == pytest.approx(b, rel=1e-12, abs=0), (name, a, b)


def random_corpus(rng: random.Random, vocab_size: int, n_segments: int, max_len: int = 12):
    """Random tokenised corpus: hypothesis lengths from 0, one to four references each."""
    vocab = [f"w{i}" for i in range(vocab_size)]
    hyps, refs_list = [], []
    for _ in range(n_segments):
        hyps.append(rng.choices(vocab, k=rng.randint(0, max_len)))
        refs_list.append([rng.choices(vocab, k=rng.randint(0, max_len)) for _ in range(rng.randint(1, 4))])
    return hyps, refs_list


def test_weights_match_the_paper_recipe():
    assert BLEU_WEIGHTS == {name: tuple(float(x) for x in w) for name, w in NLTK_WEIGHTS.items()}
    assert set(SPECIAL_TOKENS) == {"<start>", "<end>", "<pad>", "<unk>"}
    from model.vocabulary import SPECIAL_TOKENS as VOCAB_SPECIAL

    assert SPECIAL_TOKENS is VOCAB_SPECIAL  # one definition of the special tokens


@pytest.mark.parametrize("seed", range(12))
def test_random_corpora_equal_nltk(seed):
    rng = random.Random(seed)
    for _ in range(25):
        hyps, refs = random_corpus(rng, vocab_size=rng.randint(1, 8), n_segments=rng.randint(1, 15))
        assert_same(corpus_bleu_scores(hyps, refs), nltk_scores(hyps, refs))


def test_random_corpora_split_and_merged_equal_nltk():
    """Statistics folded per shard, then merged in shuffled order, give the whole-corpus score."""
    rng = random.Random(99)
    for _ in range(40):
        hyps, refs = random_corpus(rng, vocab_size=rng.randint(2, 6), n_segments=rng.randint(2, 30))
        shards: list[BleuStats] = []
        for i in range(0, len(hyps), 4):
            acc = BleuStats.zero()
            for h, r in zip(hyps[i : i + 4], refs[i : i + 4]):
                acc = acc.merge(segment_stats(h, r))
            shards.append(acc)
        rng.shuffle(shards)
        total = BleuStats.zero()
        for shard in shards:
            total = shard.merge(total)
        assert total.count == len(hyps)
        assert_same(corpus_bleu_from_stats(total), nltk_scores(hyps, refs))


CAPTIONS = {
    "dog": [
        "A black dog is running through the grass .",
        "A black dog runs across a grassy field .",
        "The dog is running in the grass .",
        "A dog with a red collar runs on the lawn",
        "Black dog running outside",
    ],
    "kids": [
        "Two children are playing in a fountain .",
        "Two young kids splash in the water fountain .",
        "Children play in the water .",
        "A boy and a girl play in a fountain on a sunny day .",
        "Kids in a fountain",
    ],
    "climber": [
        "A man climbs a rock wall .",
        "A rock climber scales a cliff face .",
        "A man in a red shirt is rock climbing .",
        "Someone is climbing up a large rock .",
        "A climber on a steep rock face",
    ],
}
HYPOTHESES = {
    "dog": "<start> a black dog is running through the grass <end> <pad> <pad>",
    "kids": "<start> two children are playing in the water <end>",
    "climber": "<start> a man in a red shirt is climbing a <unk> <end>",
}


def test_real_looking_captions_equal_nltk():
    hyps = [bleu_tokens(HYPOTHESES[k]) for k in CAPTIONS]
    refs = [[bleu_tokens(c) for c in CAPTIONS[k]] for k in CAPTIONS]
    assert hyps[0] == "a black dog is running through the grass".split()
    assert hyps[2][-1] == "<unk>"
    ours = corpus_bleu_scores(hyps, refs)
    assert_same(ours, nltk_scores(hyps, refs))
    assert 1 >= ours["bleu1"] > ours["bleu2"] > ours["bleu3"] > ours["bleu4"] > 0.3
    # Each caption alone, and worse hypotheses too.
    for k in CAPTIONS:
        for hyp_text in (HYPOTHESES[k], "a dog", "the the the the the", "<unk> <unk>", "grass"):
            h = [bleu_tokens(hyp_text)]
            r = [[bleu_tokens(c) for c in CAPTIONS[k]]]
            assert_same(corpus_bleu_scores(h, r), nltk_scores(h, r))


def test_nltk_docstring_example():
    hyp1 = "It is a guide to action which ensures that the military always obeys the commands of the party".split()
    ref1a = "It is a guide to action that ensures that the military will forever heed Party commands".split()
    ref1b = (
        "It is the guiding principle which guarantees the military forces always being under the command of the Party"
    ).split()
    ref1c = "It is the practical guide for the army always to heed the directions of the party".split()
    hyp2 = "he read the book because he was interested in world history".split()
    ref2a = "he was interested in world history because he read the book".split()
    scores = corpus_bleu_scores([hyp1, hyp2], [[ref1a, ref1b, ref1c], [ref2a]])
    assert scores["bleu4"] == pytest.approx(0.5920, abs=1e-4)
    assert_same(scores, nltk_scores([hyp1, hyp2], [[ref1a, ref1b, ref1c], [ref2a]]))


EDGE_CASES = {
    "all hypotheses empty": ([[], []], [[["a", "b"]], [["c"]]]),
    "one empty hypothesis among good ones": ([[], ["a", "b", "c"]], [[["a"]], [["a", "b", "c"]]]),
    "no unigram match": ([["x", "y"]], [[["a", "b"]]]),
    "unigrams only, no bigram match": ([["b", "a"]], [[["a", "b"]]]),
    "no 3-gram match": ([["a", "b", "x", "c", "d"]], [[["a", "b", "c", "d"]]]),
    "no 4-gram match only": ([["a", "b", "c", "x", "b", "c", "d"]], [[["a", "b", "c", "d"]]]),
    "single-word hypothesis": ([["a"]], [[["a", "b", "c", "d", "e"]]]),
    "hypothesis longer than every reference": ([["a", "b", "c", "d", "e", "f"]], [[["a", "b"], ["a", "b", "c"]]]),
    "exact match": ([["a", "b", "c", "d"]], [[["a", "b", "c", "d"]]]),
    "clipping of repeated words": ([["the"] * 7], [[["the", "cat", "the", "mat"], ["the", "the", "the"]]]),
    "empty reference": ([["a", "b"]], [[[]]]),
    "empty and non-empty references": ([["a", "b", "c"]], [[[], ["a", "b", "c", "d", "e", "f"]]]),
    "closest-length tie goes to shorter": ([["a"] * 12], [[["a"] * 13, ["a"] * 11]]),
    "tie reversed": ([["a"] * 12], [[["a"] * 11, ["a"] * 13]]),
    "mteval example": ([["a"] * 7], [[["a"] * 11, ["a"] * 8]]),
    "hyp shorter than n everywhere": ([["a", "b"], ["c"]], [[["a", "b", "c", "d"]], [["c", "d"]]]),
    "unk matches nothing": ([["<unk>", "dog"]], [[["a", "dog"], ["unk", "dog"]]]),
}


@pytest.mark.parametrize("case", list(EDGE_CASES), ids=list(EDGE_CASES))
def test_edge_cases_equal_nltk(case):
    hyps, refs = EDGE_CASES[case]
    assert_same(corpus_bleu_scores(hyps, refs), nltk_scores(hyps, refs))


def test_edge_case_values_are_nltk_quirks():
    """Pin the behaviours worth knowing about, not just equality."""
    zero = {n: 0.0 for n in NAMES}
    assert corpus_bleu_scores([[]], [[["a"]]]) == zero
    assert corpus_bleu_scores([["x"]], [[["a"]]]) == zero
    # No bigram match: BLEU-1 is unaffected (zero weight), BLEU-2..4 are tiny but not 0,
    # because nltk substitutes sys.float_info.min for a zero precision.
    s = corpus_bleu_scores([["b", "a"]], [[["a", "b"]]])
    assert s["bleu1"] == 1.0
    assert 0 < s["bleu2"] < 1e-150 and 0 < s["bleu4"] < 1e-150
    # Short hypotheses still add 1 to every higher-order denominator.
    st = segment_stats([], [["a", "b"]])
    assert (st.matches, st.totals, st.hyp_len, st.ref_len, st.count) == ([0] * 4, [1] * 4, 0, 2, 1)
    st = segment_stats(["a", "b"], [["a", "b", "c"]])
    assert st.matches == [2, 1, 0, 0] and st.totals == [2, 1, 1, 1]
    # Ties in closest reference length go to the shorter reference.
    assert segment_stats(["a"] * 12, [["a"] * 13, ["a"] * 11]).ref_len == 11


def test_no_reference_is_an_error_like_nltk():
    for hyp in (["a"], []):
        with pytest.raises(ValueError):
            segment_stats(hyp, [])
        with pytest.raises((KeyError, ValueError)):  # nltk: KeyError, or ValueError when empty
            corpus_bleu([[]], [hyp])
    with pytest.raises(ValueError):
        corpus_bleu_scores([["a"]], [])  # lengths differ


def test_empty_corpus_is_an_error_like_nltk():
    with pytest.raises(ZeroDivisionError):
        corpus_bleu([], [])
    with pytest.raises(ValueError):
        corpus_bleu_scores([], [])
    with pytest.raises(ValueError):
        corpus_bleu_from_stats(BleuStats.zero())


def test_string_instead_of_tokens_is_refused():
    with pytest.raises(TypeError):
        segment_stats("a dog", [["a", "dog"]])
    with pytest.raises(TypeError):
        segment_stats(["a"], ["a dog"])


def test_our_corpus_path_emits_no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = corpus_bleu_scores([["b", "a", "c"]], [[["a", "b", "d"]]])
        sentence_bleu_scores(["b", "a", "c"], [["a", "b", "d"]])
    assert s["bleu4"] > 0


def test_stats_merge_is_pure_associative_and_has_identity():
    a = segment_stats(["a", "b", "c"], [["a", "b"]])
    b = segment_stats(["c", "c"], [["c", "d"], ["c", "c", "c"]])
    c = segment_stats([], [["q"]])
    snapshot = (a.to_dict(), b.to_dict())
    assert a.merge(b) == b.merge(a)
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    assert BleuStats.zero().merge(a) == a == a.merge(BleuStats.zero())
    assert (a.to_dict(), b.to_dict()) == snapshot
    with pytest.raises(ValueError):
        a.merge(BleuStats.zero(max_n=2))


def test_stats_json_round_trip():
    st = segment_stats(["a", "b", "c"], [["a", "b"], ["c"]])
    text = json.dumps(st.to_dict())
    assert BleuStats.from_dict(json.loads(text)) == st
    assert BleuStats() == BleuStats.zero()
    with pytest.raises(ValueError):
        BleuStats([1, 2], [1], 0, 0, 0)
    with pytest.raises(ValueError):
        corpus_bleu_from_stats(segment_stats(["a"], [["a"]], max_n=2))


def test_bleu_tokens():
    assert bleu_tokens("<start> A Dog's 2 toys, in the PARK! <end> <pad>") == ["a", "dogs", "toys", "in", "the", "park"]
    assert bleu_tokens(["<START>", "Two", "<unk>", "dogs!", "b", "<End>", "<pad>"]) == ["two", "<unk>", "dogs"]
    assert bleu_tokens("a <unk> dog") == ["a", "<unk>", "dog"]
    assert bleu_tokens("") == [] and bleu_tokens(None) == [] and bleu_tokens([]) == []


def test_bleu_tokens_equals_clean_tokens_on_plain_text():
    rng = random.Random(5)
    alphabet = "abcXYZ  \t\n.,'-!019é"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert bleu_tokens(text) == clean_tokens(text), repr(text)
    for caption in (c for cs in CAPTIONS.values() for c in cs):
        assert bleu_tokens(caption) == clean_tokens(caption)


def test_sentence_bleu_scores_match_nltk_method1():
    rng = random.Random(7)
    smooth = SmoothingFunction().method1
    for _ in range(150):
        (hyp,), (refs,) = random_corpus(rng, vocab_size=rng.randint(1, 6), n_segments=1)
        ours = sentence_bleu_scores(hyp, refs)
        for name, w in NLTK_WEIGHTS.items():
            expected = sentence_bleu(refs, hyp, weights=w, smoothing_function=smooth)
            assert ours[name] == pytest.approx(expected, rel=1e-12, abs=1e-15), name
    assert sentence_bleu_scores(["x"], [["a"]]) == {n: 0.0 for n in NAMES}
    assert sentence_bleu_scores(["a", "b", "c", "d"], [["a", "b", "c", "d"]]) == pytest.approx({n: 1.0 for n in NAMES})


def test_module_imports_neither_tensorflow_nor_beam():
    code = (
        "import sys, model.bleu; "
        "bad = [m for m in ('tensorflow', 'keras', 'apache_beam') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_large_counts_stay_exact():
    """Python ints never overflow: a million copies of a corpus score like the corpus."""
    hyps, refs = random_corpus(random.Random(3), vocab_size=4, n_segments=10)
    base = BleuStats.zero()
    for h, r in zip(hyps, refs):
        base = base.merge(segment_stats(h, r))
    big = BleuStats(
        [m * 10**6 for m in base.matches],
        [t * 10**6 for t in base.totals],
        base.hyp_len * 10**6,
        base.ref_len * 10**6,
        base.count * 10**6,
    )
    for name, value in corpus_bleu_from_stats(big).items():
        assert math.isclose(value, corpus_bleu_from_stats(base)[name], rel_tol=1e-12)
