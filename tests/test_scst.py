"""Self-critical sequence training (training.scst) on the tiny real Keras decoder: sampling,
CIDEr-D rewards, advantages, the sign of the policy-gradient update and resuming."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
import tensorflow as tf

from model.bleu import bleu_tokens
from model.caption_metrics import CiderD, cider_d_segments
from model.caption_search import DecodeSettings, greedy_decode
from tests.factories import TINY_CAPTIONS, make_tiny_decoder
from training.datasets import CaptionedImage
from training.evaluate import bleu_on
from training.scst import (
    Sampler,
    ScstSettings,
    make_train_step,
    scst_epoch,
    scst_member,
    sequence_logprob,
)
from training.scst_rewards import CiderReward, advantages

FEATURES = 24


def items_of(captions: list[list[str]]) -> list[CaptionedImage]:
    return [CaptionedImage(f"img{i}.jpg", f"img{i}.jpg", tuple(c)) for i, c in enumerate(captions)]


def features(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, FEATURES)).astype(np.float32)


def token_rows(vocab, captions: list[str], length: int = 12) -> np.ndarray:
    tokens = np.zeros((len(captions), length), np.int32)
    for i, caption in enumerate(captions):
        ids = vocab.encode(caption, length)
        tokens[i, : len(ids)] = ids
    return tokens


def test_cider_reward_scores_token_ids_against_known_references():
    _, vocab = make_tiny_decoder(feature_dim=FEATURES)
    refs = [["a dog runs on the grass"] * 3, ["two children play in the water", "a man rides a bike"]]
    hyps = ["a dog runs on the grass", "a man rides a bike", "two children play in the water"]
    reward = CiderReward(vocab, refs)  # document frequencies from these references
    got = reward([0, 1, 0], token_rows(vocab, hyps))
    # every reference equal to the caption: cosine 1 at each n-gram order, no length penalty, x10
    assert got[0] == pytest.approx(10.0, rel=1e-12)
    assert got[2] == 0.0  # no n-gram in common with image 0's references
    assert 0 < got[1] < 10.0
    # with the scored corpus as its own frequency corpus it is the COCO CIDEr-D (= pycocoevalcap)
    coco = cider_d_segments([bleu_tokens(h) for h in hyps], [[bleu_tokens(c) for c in refs[j]] for j in (0, 1, 0)])
    same = CiderReward(vocab, [refs[0], refs[1], refs[0]])
    assert same([0, 1, 2], token_rows(vocab, hyps)) == pytest.approx(coco, rel=1e-12)
    assert got[1] == pytest.approx(5.0, rel=1e-12)  # equal to one of two references, disjoint from the other
    # frequencies from another (training) corpus in which every image says "a man rides a bike":
    # its n-grams carry no information (idf 0), so the same caption now earns nothing
    corpus = [refs[1], ["a man rides a bike"], ["a man rides a bike on the grass"]]
    trained = CiderReward(vocab, refs, corpus=corpus)
    assert CiderD([[bleu_tokens(c) for c in r] for r in corpus]).doc_freq[
        ("man", "rides")
    ] == 3 and trained.scorer.log_corpus == pytest.approx(np.log(3))
    assert trained([1, 0], token_rows(vocab, hyps[1:2] + hyps[:1])) == pytest.approx([0.0, 10.0])


def test_advantages_use_the_other_samples_or_the_greedy_baseline():
    rewards = np.array([1.0, 2.0, 3.0, 0.0, 0.0, 6.0])
    assert advantages(rewards, 3) == pytest.approx([1 - 2.5, 2 - 2.0, 3 - 1.5, 0 - 3.0, 0 - 3.0, 6 - 0.0])
    assert advantages(rewards, 3, np.array([2.0, 1.0])) == pytest.approx([-1, 0, 1, -1, -1, 5])
    assert advantages(np.array([0.5, 0.5]), 2) == pytest.approx([0, 0])


def test_sampler_draws_valid_captions_and_its_greedy_matches_the_search():
    decoder, vocab = make_tiny_decoder(feature_dim=FEATURES)
    sampler = Sampler(decoder, vocab)
    feats = np.repeat(features(4), 8, axis=0)
    tokens = sampler(feats, (1, 2))
    assert tokens.shape == (32, 12) and (tokens[:, 0] == vocab.start_id).all()
    body = tokens[:, 1:]
    assert not np.isin(body, [vocab.start_id, vocab.unk_id]).any()
    for row in body:
        ends = np.flatnonzero(row == vocab.end_id)
        if len(ends):
            assert (row[ends[0] + 1 :] == 0).all()  # padding after <end>
            assert (row[: ends[0]] > 0).all()
    assert len({tuple(r) for r in tokens}) > 4  # random weights: samples differ
    assert (sampler(feats, (1, 2)) == tokens).all()  # seeded
    greedy = sampler(features(4), greedy=True)
    hyps = greedy_decode(sampler.step, features(4), vocab.start_id, vocab.end_id, 12)
    for row, hyp in zip(greedy, hyps):
        assert list(row[1 : 1 + len(hyp.token_ids)]) == list(hyp.token_ids)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_one_update_moves_a_sample_log_prob_with_the_sign_of_its_advantage(sign: float):
    decoder, vocab = make_tiny_decoder(feature_dim=FEATURES)
    sampler = Sampler(decoder, vocab)
    feats = features(2, seed=3)
    tokens = sampler(feats, (5, 6))
    before = sequence_logprob(decoder, feats, tokens)
    step = make_train_step(decoder, keras.optimizers.Adam(1e-2))
    adv = np.array([sign, 0.0], np.float32)  # only the first sample is rewarded or punished
    loss, logp = step(tf.constant(feats), tf.constant(tokens), tf.constant(adv))
    assert logp.numpy() == pytest.approx(before, rel=1e-5)
    assert float(loss) == pytest.approx(-sign * before[0] / 2, rel=1e-5)
    after = sequence_logprob(decoder, feats, tokens)
    assert np.sign(after[0] - before[0]) == sign and abs(after[0] - before[0]) > 0.05


def test_scst_member_raises_the_reward_keeps_the_best_epoch_and_resumes(tmp_path: Path):
    """Two images whose references are two fixed captions: SCST (high lr) must learn to say them."""
    caps = [["a dog runs on the grass"] * 5, ["a man rides a bike"] * 5]
    decoder, vocab = make_tiny_decoder(feature_dim=FEATURES, captions=[c[0] for c in caps], max_length=8)
    train_items, dev_items = items_of(caps * 40), items_of(caps)
    train_feats = np.tile(features(2, seed=7), (40, 1))
    dev_feats = train_feats[:2]
    settings = ScstSettings(
        epochs=3, learning_rate=1e-2, samples=4, batch_images=4, select="cider_d", beam_width=2, length_alpha=0.5
    )
    state = scst_member(decoder, vocab, train_items, train_feats, dev_items, dev_feats, settings, str(tmp_path))
    assert [h["epoch"] for h in state["history"]] == [0, 1, 2, 3] and state["done"]
    rewards = [h["reward"] for h in state["history"][1:]]
    assert rewards[0] < rewards[1] < rewards[2] and rewards[2] > 1.3 * rewards[0]  # the policy improves
    best = max(state["history"], key=lambda h: h["dev"]["cider_d"])  # the first of equals, as kept
    assert state["best_epoch"] == best["epoch"]
    search = DecodeSettings("beam", 2, 0.5, 8)  # the decoder left behind holds the chosen epoch's weights
    assert bleu_on(decoder.step_model(), vocab, dev_items, dev_feats, search, extended=True) == pytest.approx(
        best["dev"], rel=1e-9
    )
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["settings"] == settings.identity() and saved["epoch"] == 3

    again, _ = make_tiny_decoder(
        feature_dim=FEATURES, captions=[c[0] for c in caps], max_length=8, seed=9
    )  # other weights: the folder's must be loaded
    reused = scst_member(again, vocab, train_items, train_feats, dev_items, dev_feats, settings, str(tmp_path))
    assert reused["history"] == state["history"]
    for a, b in zip(again.training_model.get_weights(), decoder.training_model.get_weights()):
        np.testing.assert_array_equal(a, b)
    more = scst_member(
        again,
        vocab,
        train_items,
        train_feats,
        dev_items,
        dev_feats,
        ScstSettings(**{**settings.__dict__, "epochs": 4}),
        str(tmp_path),
    )
    assert [h["epoch"] for h in more["history"]] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="other settings"):
        scst_member(
            again,
            vocab,
            train_items,
            train_feats,
            dev_items,
            dev_feats,
            ScstSettings(**{**settings.__dict__, "learning_rate": 1e-3}),
            str(tmp_path),
        )


def test_an_epoch_with_the_greedy_baseline_rewards_samples_against_the_greedy_caption():
    caps = [["a dog runs on the grass"] * 5, ["a man rides a bike"] * 5]
    decoder, vocab = make_tiny_decoder(feature_dim=FEATURES, captions=[c[0] for c in caps], max_length=8)
    feats = np.tile(features(2, seed=7), (4, 1))
    reward = CiderReward(vocab, caps * 4)
    sampler = Sampler(decoder, vocab)
    greedy = reward(range(8), sampler(feats, greedy=True)).mean()
    settings = ScstSettings(samples=3, batch_images=4, baseline="greedy")
    stats = scst_epoch(
        decoder, sampler, make_train_step(decoder, keras.optimizers.Adam(1e-3)), reward, feats, settings, 1
    )
    assert stats["baseline"] == pytest.approx(greedy, rel=1e-6)  # lr 1e-3: the two updates barely move it
    assert stats["reward"] != pytest.approx(stats["baseline"])


def test_settings_are_checked():
    with pytest.raises(ValueError, match="baseline"):
        ScstSettings(baseline="best")
    with pytest.raises(ValueError, match="2 samples"):
        ScstSettings(samples=1)
    assert "epochs" not in ScstSettings().identity()
    assert TINY_CAPTIONS  # the factory's captions are the tiny vocabulary
