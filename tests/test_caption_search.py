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
    from model.step_model import PerImage
    from model.step_model import select_rows as _select

    shared = PerImage((np.arange(6).reshape(2, 3),))
    rows, index, kept = _select((np.array([10, 11, 12]), np.array([0, 0, 1]), shared), np.array([2, 2, 0]))
    assert list(rows) == [12, 12, 10] and list(index) == [1, 1, 0]
    assert kept is shared  # one per image, not copied per row


def reference_beam_candidates(decoder, features, start_id, end_id, max_length, k, length_alpha):
    """The search written plainly, one image at a time (the rule ``beam_candidates`` implements
    with array operations over all images): top 2k extensions of an image's live rows, an
    ending counts only among the top k, k live beams kept, HF-style stop."""
    n = len(features)
    state = decoder.initial_state(features)
    live = [[((), 0.0, i)] for i in range(n)]  # per image: (tokens, logprob, state row)
    finished = [[] for _ in range(n)]
    words = np.full(n, start_id, dtype=np.int32)
    for step in range(max_length - 1):
        logp, state = decoder.step(words, state)
        rows, next_words, next_live = [], [], [[] for _ in range(n)]
        for image in range(n):
            cands = [
                (lp + float(logp[row, w]), b * logp.shape[1] + w, b, w)
                for b, (tokens, lp, row) in enumerate(live[image])
                for w in range(logp.shape[1])
            ]
            cands.sort(key=lambda c: (-c[0], c[1]))
            kept = 0
            for rank, (total, _, b, w) in enumerate(cands[: 2 * k]):
                if kept == k:
                    break
                tokens = live[image][b][0] + (w,)
                if w == end_id or step == max_length - 2:
                    if rank < k:
                        finished[image].append(Hypothesis(tokens, total))
                    continue
                next_live[image].append((tokens, total, live[image][b][2]))
                kept += 1
            if finished[image] and next_live[image]:
                best = max(h.logprob / max(1, len(h.token_ids)) ** length_alpha for h in finished[image])
                if best >= max(lp for _, lp, _ in next_live[image]) / (step + 1) ** length_alpha:
                    next_live[image] = []
        live = [[] for _ in range(n)]
        for image in range(n):
            for tokens, lp, row in next_live[image]:
                live[image].append((tokens, lp, len(rows)))
                rows.append(row)
                next_words.append(tokens[-1])
        if not rows:
            break
        state = tuple(s[np.asarray(rows)] for s in state)
        words = np.asarray(next_words, dtype=np.int32)
    return finished


class RandomDecoder:
    """Next-word log-probs from a random table row picked by a hash of the row's whole history
    (so different captions practically never tie); ``banned`` words are -inf."""

    def __init__(self, rng: np.random.Generator, vocab: int, banned: tuple[int, ...] = ()) -> None:
        logits = rng.normal(0, 2.0, (997, vocab))
        self.table = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        self.table[:, list(banned)] = -np.inf

    def initial_state(self, features):
        return (np.arange(len(features), dtype=np.int64) * 7919,)

    def step(self, word_ids, state):
        (history,) = state
        history = (history * 31 + np.asarray(word_ids, np.int64) + 1) % 997
        return self.table[history].astype(np.float32), (history,)


@pytest.mark.parametrize("seed", range(40))
def test_beam_candidates_match_the_plain_search(seed):
    from model.caption_search import beam_candidates

    rng = np.random.default_rng(seed)
    vocab = int(rng.choice([4, 5, 9, 40]))  # tiny vocabularies: fewer extensions than 2k
    k = int(rng.integers(1, 5))
    images = int(rng.integers(1, 7))
    banned = (0,) if seed % 3 == 0 else ()
    decoder = RandomDecoder(rng, vocab, banned)
    features = np.zeros((images, 1), np.float32)
    alpha = float(rng.choice([0.0, 0.5, 0.7]))
    got = beam_candidates(decoder, features, START, END, 7, k, alpha)
    want = reference_beam_candidates(decoder, features, START, END, 7, k, alpha)
    assert [[h.token_ids for h in f] for f in got] == [[h.token_ids for h in f] for f in want]
    for f, g in zip(got, want):
        assert [h.logprob for h in f] == pytest.approx([h.logprob for h in g], rel=1e-12, abs=1e-12)


def test_repeat_bans_name_the_last_word_and_trigram_completions():
    from model.step_filters import repeat_bans

    history = np.array([[1, 5, 6, 5], [1, 7, 8, 9], [1, 3, 4, 3]])
    rows, words = repeat_bans(history)
    bans = {(int(r), int(w)) for r, w in zip(rows, words)}
    # row 0: "5 6 5" -> 6 would repeat "5 6" only as a bigram (allowed), 5 again is banned
    # row 2: "3 4 3" -> (4, 3) seen? no; last word 3 banned
    assert bans == {(0, 5), (1, 9), (2, 3)}
    rows, words = repeat_bans(np.array([[1, 5, 6, 5, 6]]))  # "5 6 5 6": next 5 repeats "6 5 6"? no: "5 6 5"
    assert {(int(r), int(w)) for r, w in zip(rows, words)} == {(0, 6), (0, 5)}


class LoopDecoder:
    """Always prefers repeating the previous word (word 5 after <start>), then <end>."""

    def __init__(self, vocab: int = 8) -> None:
        self.vocab = vocab

    def initial_state(self, features):
        return (np.zeros(len(features)),)

    def step(self, word_ids, state):
        logp = np.full((len(word_ids), self.vocab), np.log(0.02))
        for row, w in enumerate(word_ids):
            logp[row, 5 if w == START else w] = np.log(0.6)
            logp[row, END] = np.log(0.1)
            logp[row, 3 + (row + int(w)) % 2] = np.log(0.15)
        logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
        return logp, state


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_no_repeat_stops_word_loops_and_keeps_scores_normalised(method):
    features = np.zeros((2, 1), np.float32)
    plain = DecodeSettings(method, 3, 0.5, 10)
    looping = decode_batch(LoopDecoder(), features, START, END, plain)
    assert any(h.token_ids[:3] == (5, 5, 5) for h in looping)  # the loop the filter is for
    settings = DecodeSettings(method, 3, 0.5, 10, no_repeat=True)
    for h in decode_batch(LoopDecoder(), features, START, END, settings):
        words = list(h.token_ids)
        assert all(a != b for a, b in zip(words, words[1:]))
        trigrams = list(zip(words, words[1:], words[2:]))
        assert len(trigrams) == len(set(trigrams))
        assert h.logprob <= 0
    assert settings.describe().endswith("no_repeat,max_len=10)")
    spec = "beam:3:0.5:no_repeat" if method == "beam" else "greedy:no_repeat"
    assert DecodeSettings.parse(spec, 10).describe() == settings.describe()
    with pytest.raises(ValueError, match="no_repeat"):
        DecodeSettings.parse("beam:3", 10)


def test_ban_renormalises_like_a_full_log_sum_exp():
    from model.step_filters import ban

    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, (5, 12))
    logits[4, 2] = 40.0  # row 4: the banned word holds nearly all the mass (full renormalisation)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    rows, words = np.array([0, 0, 0, 2, 4, 4]), np.array([1, 7, 1, 11, 2, 3])  # a repeated pair
    got = ban(logp.copy(), rows, words)
    want = logp.copy()
    want[rows, words] = -np.inf
    want -= np.log(np.exp(want).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    assert np.isneginf(got[rows, words]).all() and np.allclose(np.exp(got).sum(axis=1), 1.0)


def test_grouped_images_names_each_images_rows_only_when_every_image_has_as_many():
    from model.attention_runtime import grouped_images

    np.testing.assert_array_equal(grouped_images(np.array([0, 0, 2, 2, 3, 3])), [0, 2, 3])
    np.testing.assert_array_equal(grouped_images(np.array([0, 1, 2])), [0, 1, 2])
    np.testing.assert_array_equal(grouped_images(np.array([4])), [4])
    np.testing.assert_array_equal(grouped_images(np.array([1, 1, 1, 0, 0, 0])), [1, 0])
    assert grouped_images(np.array([0, 0, 1])) is None  # image 1 has one row, image 0 two
    assert grouped_images(np.array([0, 1, 1])) is None
    assert grouped_images(np.array([0, 0, 1, 1, 1, 2])) is None
    assert grouped_images(np.array([], np.int32)) is None


def test_largest_first_never_repeats_a_pick_when_a_row_has_fewer_finite_values_than_asked():
    from model.caption_search import largest_first

    # The argmax rounds once took index 0 twice here (its value is finite, so the check passed).
    picks, picked = largest_first(np.array([[3.0, -np.inf, 1.0, -np.inf]]), 3)
    assert picks.tolist() == [[0, 2, 1]]
    assert picked.tolist() == [[3.0, 1.0, -np.inf]]


@pytest.mark.parametrize("seed", range(30))
def test_largest_first_ranks_like_a_plain_sort_ties_and_minus_infinity_included(seed):
    from model.caption_search import largest_first

    rng = np.random.default_rng(seed)
    # seeds 20-29: wide rows and takes past 64 (the whole-row sort), or up to 64 (argmax rounds)
    width = int(rng.integers(1, 30)) if seed < 20 else int(rng.integers(65, 200))
    values = rng.integers(0, 4, (5, width)).astype(np.float64)  # many ties
    values[rng.random(values.shape) < 0.3] = -np.inf
    if seed < 20:
        take = int(rng.integers(1, values.shape[1] + 1)) if seed % 2 else min(3, values.shape[1])
    else:
        take = int(rng.integers(65, width + 1)) if seed % 2 else int(rng.integers(17, 65))
    picks, picked = largest_first(values, take)
    for row, got, got_values in zip(values, picks, picked):
        want = sorted(range(len(row)), key=lambda i: (-row[i], i))[:take]
        assert got.tolist() == want
        assert got_values.tolist() == row[want].tolist()
