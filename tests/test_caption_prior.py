"""MMI reranking of beam candidates and the caption priors behind it, on hand-written step
decoders (pure NumPy, no TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest

from model.caption_prior import DecoderPrior, NgramPrior
from model.caption_search import DecodeSettings, beam_candidates, beam_search, decode_batch, mmi_rerank
from tests.test_caption_search import END, START, TableDecoder, random_tables


class FixedPrior:
    """log p(c) looked up in a dict (a hand-made prior)."""

    def __init__(self, table: dict[tuple[int, ...], float]) -> None:
        self.table = table
        self.calls = 0

    def logprob(self, token_ids):
        self.calls += 1
        return np.array([self.table[tuple(t)] for t in token_ids])


def generic_vs_specific() -> TableDecoder:
    """Image kind 0: the generic caption [3, END] (p .5) beats the specific [4, END] (p .4)."""
    v = 6
    t = np.full((1, v, v), 1e-9)
    t[0, START, 3], t[0, START, 4], t[0, START, 5] = 0.5, 0.4, 0.1
    t[0, 3:6, END] = 1.0
    t[0, END, END] = 1.0
    return TableDecoder(t / t.sum(axis=2, keepdims=True))


def test_settings_describe_and_validate_mmi():
    assert DecodeSettings("beam", 3, 0.7, 34).describe() == "beam(k=3,alpha=0.7,max_len=34)"  # off: unchanged
    assert DecodeSettings("beam", 3, 0.7, 34, 0.5).describe() == "beam(k=3,alpha=0.7,mmi=0.5,max_len=34)"
    with pytest.raises(ValueError, match="needs beam"):
        DecodeSettings("greedy", mmi_lambda=0.3)
    with pytest.raises(ValueError, match=">= 0"):
        DecodeSettings("beam", mmi_lambda=-0.1)
    with pytest.raises(ValueError, match="caption prior"):
        decode_batch(generic_vs_specific(), np.zeros((1, 1), int), START, END, DecodeSettings(mmi_lambda=0.5))


def test_mmi_prefers_the_caption_that_is_unlikely_in_general():
    prior = FixedPrior({(3, END): np.log(0.9), (4, END): np.log(0.1), (5, END): np.log(0.5)})
    feats = np.zeros((1, 1), int)
    plain = decode_batch(generic_vs_specific(), feats, START, END, DecodeSettings("beam", 3, 0.0, 5))[0]
    assert plain.token_ids == (3, END)
    # lambda 1: log .5 - log .9 = -0.59 < log .4 - log .1 = 1.39 (and log .1 - log .5 = -1.61)
    mmi = decode_batch(generic_vs_specific(), feats, START, END, DecodeSettings("beam", 3, 0.0, 5, 1.0), prior=prior)[0]
    assert mmi.token_ids == (4, END)
    assert mmi.logprob == pytest.approx(np.log(0.4), abs=1e-6)  # the conditional log-prob is kept
    small = decode_batch(
        generic_vs_specific(), feats, START, END, DecodeSettings("beam", 3, 0.0, 5, 0.05), prior=prior
    )[0]
    assert small.token_ids == (3, END)  # .05 * (log .9 - log .1) = 0.11 < log .5 - log .4 = 0.22


@pytest.mark.parametrize("seed", range(3))
def test_beam_search_is_the_best_candidate_and_lambda_zero_keeps_it(seed: int):
    feats = np.arange(6)[:, None] % 4
    candidates = beam_candidates(TableDecoder(random_tables(seed)), feats, START, END, 10, 4, 0.7)
    chosen = beam_search(TableDecoder(random_tables(seed)), feats, START, END, 10, 4, 0.7)
    assert all(len(c) >= 1 for c in candidates)
    assert [h in c for h, c in zip(chosen, candidates)] == [True] * 6
    prior = DecoderPrior(TableDecoder(random_tables(seed + 10)), np.array([1]), START)
    assert mmi_rerank(candidates, prior, 0.0, 0.7) == chosen


def test_decoder_prior_is_the_teacher_forced_log_probability():
    tables = random_tables(4)
    prior = DecoderPrior(TableDecoder(tables), np.array([2]), START, batch_rows=2)
    sequences = [(5, 6, END), (7, END), (), (3, 3, 4, 8, END)]
    logp = np.log(tables[2])

    def by_hand(seq):
        prev, total = START, 0.0
        for w in seq:
            total += logp[prev, w]
            prev = w
        return total

    assert prior.logprob(sequences) == pytest.approx([by_hand(s) for s in sequences])
    assert prior.logprob(sequences[1:2]) == pytest.approx([by_hand(sequences[1])])


def test_ngram_prior_is_a_distribution_and_prefers_seen_captions():
    vocab = 9
    train = [(4, 5, END)] * 5 + [(4, 6, 7, END), (8, 5, END)]
    lm = NgramPrior(train, vocab, START, order=3)
    for history in [(START, START), (START, 4), (4, 5), (7, 8), (3, 3)]:
        total = sum(lm._prob(history, w) for w in range(vocab))
        assert total == pytest.approx(1.0)
    seen, unseen, rare = lm.logprob([(4, 5, END), (5, 4, END), (8, 5, END)])
    assert seen > rare > unseen
    empty = NgramPrior([], vocab, START, order=2)
    assert empty.logprob([(4, 5, END)])[0] == pytest.approx(3 * -np.log(vocab))  # uniform
    with pytest.raises(ValueError):
        NgramPrior(train, vocab, START, order=0)


class UnigramPrior(FixedPrior):
    """A hand-made context-free prior: log p(word) per id."""

    def __init__(self, word_probs: list[float]) -> None:
        super().__init__({})
        self.word_probs = np.log(word_probs)

    def word_logprobs(self) -> np.ndarray:
        return self.word_probs


def test_step_wise_mmi_penalises_common_words_during_the_search():
    assert DecodeSettings("beam", 5, 0.0, 24, 0.5, "step").describe() == "beam(k=5,alpha=0,mmi_step=0.5,max_len=24)"
    assert (
        DecodeSettings("greedy", max_length=9, mmi_lambda=1, mmi_mode="step").describe()
        == "greedy(mmi_step=1,max_len=9)"
    )
    with pytest.raises(ValueError, match="mmi_mode"):
        DecodeSettings(mmi_mode="other")
    prior = UnigramPrior([0.01, 0.01, 0.01, 0.9, 0.05, 0.02])  # word 3 is common, 4 rare
    feats = np.zeros((1, 1), int)
    for method, width in (("greedy", 1), ("beam", 3)):
        plain = decode_batch(generic_vs_specific(), feats, START, END, DecodeSettings(method, width, 0.0, 5))[0]
        assert plain.token_ids == (3, END)
        # lambda 1: word 3 scores log .5 - log .9 = -0.59, word 4 log .4 - log .05 = 2.08
        step = decode_batch(
            generic_vs_specific(), feats, START, END, DecodeSettings(method, width, 0.0, 5, 1.0, "step"), prior=prior
        )[0]
        assert step.token_ids == (4, END)
        assert step.logprob == pytest.approx(np.log(0.4), abs=1e-6)  # the conditional log-prob again
    with pytest.raises(ValueError, match="context-free"):
        decode_batch(
            generic_vs_specific(),
            feats,
            START,
            END,
            DecodeSettings("beam", 3, 0.0, 5, 1.0, "step"),
            prior=FixedPrior({}),
        )


def test_unigram_word_logprobs_are_a_distribution():
    lm = NgramPrior([(4, 5, END), (4, 6, END)], 9, START, order=1)
    assert np.exp(lm.word_logprobs()).sum() == pytest.approx(1.0)
    assert lm.word_logprobs()[4] > lm.word_logprobs()[6] > lm.word_logprobs()[7]
    assert lm.logprob([(4, 6)])[0] == pytest.approx(lm.word_logprobs()[4] + lm.word_logprobs()[6])
    with pytest.raises(ValueError, match="unigram"):
        NgramPrior([(4, 5, END)], 9, START, order=2).word_logprobs()
