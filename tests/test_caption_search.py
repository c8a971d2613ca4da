"""Greedy and beam search on hand-built step decoders: pure NumPy, no TensorFlow."""

import numpy as np
import pytest

from model.caption_search import (
    BannedWords,
    DecodeSettings,
    Hypothesis,
    beam_search,
    decode_batch,
    greedy_decode,
    strip_end,
)

START, END = 1, 2


class TableDecoder:
    """A deterministic step decoder: next-word log-probs depend only on the previous word and
    the image (feature[0] picks one of several transition tables)."""

    def __init__(self, tables: np.ndarray) -> None:
        self.tables = np.log(tables)  # (images_kinds, vocab, vocab): row = previous word
        self.calls = 0

    def initial_state(self, features):
        return (np.asarray(features[:, 0], dtype=np.int64),)

    def step(self, word_ids, state):
        self.calls += 1
        (kind,) = state
        return self.tables[kind, word_ids], state


def trap_tables() -> np.ndarray:
    """Greedy's first word (3, p=.6) leads to a flat distribution, the runner-up (4, p=.4) to a
    certain ending: the best whole caption is [4, END] (log .4) vs greedy's [3, x, ...]."""
    v = 8
    t = np.full((1, v, v), 1e-9)
    t[0, START, 3], t[0, START, 4] = 0.6, 0.4
    t[0, 3, 5:8] = 1 / 3  # after 3: three equally likely words
    t[0, 4, END] = 1.0
    for w in (5, 6, 7):
        t[0, w, END] = 1.0
    t[0, END, END] = 1.0
    t /= t.sum(axis=2, keepdims=True)
    return t


def test_beam_beats_greedy_where_it_must():
    dec = TableDecoder(trap_tables())
    feats = np.zeros((1, 1))
    greedy = greedy_decode(dec, feats, START, END, max_length=6)[0]
    beam = beam_search(dec, feats, START, END, max_length=6, beam_width=2, length_alpha=0.0)[0]
    assert greedy.token_ids[0] == 3
    assert beam.token_ids == (4, END)
    assert beam.logprob > greedy.logprob
    assert beam.logprob == pytest.approx(np.log(0.4), abs=1e-6)


def random_tables(seed: int, kinds: int = 4, v: int = 12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = rng.random((kinds, v, v)) ** 3
    t[:, :, 0] = 1e-12  # never produce padding
    t[:, :, START] = 1e-12
    return t / t.sum(axis=2, keepdims=True)


@pytest.mark.parametrize("seed", range(5))
def test_greedy_equals_beam_width_one(seed):
    dec = TableDecoder(random_tables(seed))
    feats = np.arange(8)[:, None] % 4
    g = greedy_decode(dec, feats, START, END, max_length=10)
    b = beam_search(dec, feats, START, END, max_length=10, beam_width=1)
    assert [h.token_ids for h in g] == [h.token_ids for h in b]
    np.testing.assert_allclose([h.logprob for h in g], [h.logprob for h in b])


def test_batch_results_do_not_depend_on_batch_company():
    dec = TableDecoder(random_tables(3))
    feats = np.array([[0], [1], [2], [3]])
    together = beam_search(dec, feats, START, END, 9, beam_width=3)
    alone = [beam_search(dec, feats[i : i + 1], START, END, 9, beam_width=3)[0] for i in range(4)]
    assert together == alone


def test_max_length_caps_output_and_score_is_mean_logprob():
    v = 6
    t = np.full((1, v, v), 1e-9)
    t[0, :, 4] = 1.0  # never ends
    t /= t.sum(axis=2, keepdims=True)
    dec = TableDecoder(t)
    for settings in (DecodeSettings("greedy", max_length=5), DecodeSettings("beam", 3, 0.7, 5)):
        (h,) = decode_batch(dec, np.zeros((1, 1), int), START, END, settings)
        assert len(h.token_ids) == 4  # max_length counts <start> and <end>
        assert h.score == pytest.approx(h.logprob / 4)


def test_empty_batch_and_settings_validation():
    dec = TableDecoder(random_tables(0))
    assert decode_batch(dec, np.zeros((0, 1)), START, END, DecodeSettings()) == []
    with pytest.raises(ValueError):
        DecodeSettings("sampling")
    with pytest.raises(ValueError):
        DecodeSettings("beam", beam_width=0)
    assert DecodeSettings("beam", 3, 0.7, 34).describe() == "beam(k=3,alpha=0.7,max_len=34)"
    assert DecodeSettings("greedy", max_length=20).describe() == "greedy(max_len=20)"


def test_finished_images_leave_the_batch():
    dec = TableDecoder(trap_tables())
    beam_search(dec, np.zeros((3, 1), int), START, END, max_length=30, beam_width=2, length_alpha=0.0)
    assert dec.calls < 6  # everything ends within 3 words; no work until max_length


def test_strip_end_and_hypothesis_score():
    assert strip_end([5, 6, END, 7], END) == [5, 6]
    assert Hypothesis((5, END), -2.0).score == -1.0


def test_banned_words_are_never_generated_and_scores_renormalised():
    v = 6
    t = np.full((1, v, v), 0.01)
    t[0, :, 3] = 0.9  # word 3 (say <unk>) is always the most likely
    t[0, 4, END] = 0.5
    t /= t.sum(axis=2, keepdims=True)
    dec = TableDecoder(t)
    for settings in (DecodeSettings("greedy", max_length=6), DecodeSettings("beam", 3, 0.7, 6)):
        (free,) = decode_batch(dec, np.zeros((1, 1), int), START, END, settings)
        assert 3 in free.token_ids
        (h,) = decode_batch(dec, np.zeros((1, 1), int), START, END, settings, banned_ids=(0, START, 3))
        assert not {0, START, 3} & set(h.token_ids)
        assert h.logprob <= 0 and np.isfinite(h.logprob)
    wrapped = BannedWords(dec, [3])
    logp, _ = wrapped.step(np.array([START]), wrapped.initial_state(np.zeros((1, 1), int)))
    assert np.exp(logp).sum() == pytest.approx(1.0) and logp[0, 3] == -np.inf


def test_row_selection_leaves_per_image_state_whole():
    from model.caption_search import PerImage, _select

    shared = PerImage((np.arange(6).reshape(2, 3),))
    rows, index, kept = _select((np.array([10, 11, 12]), np.array([0, 0, 1]), shared), np.array([2, 2, 0]))
    assert list(rows) == [12, 12, 10] and list(index) == [1, 1, 0]
    assert kept is shared  # one per image, not copied per row
