"""Decoder ensembles (one graph, members' log-probabilities combined per step), the ensemble
artifact format, and resumable member fits. Real Keras layers and files, small sizes."""

from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from model.artifact import ARTIFACT_FORMAT, MANIFEST, ArtifactError, read_artifact
from model.artifact_config import ENSEMBLE_FORMAT, DecoderConfig, EncoderConfig
from model.artifact_writer import save_artifact
from model.caption_search import DecodeSettings, decode_batch
from model.captioner import build_decoders, load_caption_model
from model.lstm_decoder import MergeDecoder, make_step_model
from model.vocabulary import Vocabulary

CFG = DecoderConfig(
    vocab_size=30, max_length=8, feature_dim=12, embedding_dim=8, units=16, image_dense=(16,), dropout=0.0
)


def members(n: int, seed: int = 0) -> list[MergeDecoder]:
    out = []
    for i in range(n):
        keras.utils.set_random_seed(seed + i)
        out.append(MergeDecoder(CFG))
    return out


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("combine", ["mean_logprob", "mean_prob"])
def test_ensemble_step_combines_its_members(combine: str):
    ds = members(3)
    feats = np.random.default_rng(0).normal(size=(5, CFG.feature_dim)).astype(np.float32)
    words = np.array([1, 3, 4, 5, 6], np.int32)
    ensemble = make_step_model(ds, combine=combine)
    singles = [d.step_model() for d in ds]
    state = ensemble.initial_state(feats)
    assert state[0].shape == (5, 3 * CFG.units)  # members' states side by side, rows first
    single_states = [s.initial_state(feats) for s in singles]
    for _ in range(3):
        logp, state = ensemble.step(words, state)
        outs = [s.step(words, st) for s, st in zip(singles, single_states)]
        single_states = [o[1] for o in outs]
        stacked = np.stack([o[0] for o in outs])
        if combine == "mean_logprob":
            expected = log_softmax(stacked.mean(axis=0))
        else:
            expected = np.log(np.exp(stacked).mean(axis=0))
        np.testing.assert_allclose(logp, expected, atol=1e-5)
        np.testing.assert_allclose(np.exp(logp).sum(axis=1), 1.0, atol=1e-5)
        words = logp.argmax(axis=1).astype(np.int32)
    # One member is exactly that decoder.
    one = make_step_model(ds[:1])
    s1, s2 = one.initial_state(feats), singles[0].initial_state(feats)
    np.testing.assert_allclose(one.step(words, s1)[0], singles[0].step(words, s2)[0], atol=1e-6)


def test_ensemble_on_openvino_matches_tensorflow(tmp_path):
    ds = members(2, seed=5)
    feats = np.random.default_rng(1).normal(size=(4, CFG.feature_dim)).astype(np.float32)
    tf_dec = make_step_model(ds, "tensorflow")
    ov_dec = make_step_model(ds, "openvino", "test-ensemble", str(tmp_path))
    settings = DecodeSettings("beam", 3, 0.7, CFG.max_length)
    tf_hyps = decode_batch(tf_dec, feats, 1, 2, settings)
    ov_hyps = decode_batch(ov_dec, feats, 1, 2, settings)
    assert [h.token_ids for h in tf_hyps] == [h.token_ids for h in ov_hyps]
    np.testing.assert_allclose([h.logprob for h in tf_hyps], [h.logprob for h in ov_hyps], rtol=1e-4)


def save(uri: str, ds: list[MergeDecoder], combine: str = "mean_logprob") -> str:
    words = ["word" + "".join(chr(97 + int(d)) for d in str(i)) for i in range(CFG.vocab_size - 4)]
    cfg_vocab = Vocabulary.build([" ".join(words)], min_count=1)
    assert len(cfg_vocab) == CFG.vocab_size
    return save_artifact(
        uri,
        decoder=ds if len(ds) > 1 else ds[0],
        vocab=cfg_vocab,
        encoder=EncoderConfig("mobilenet_v3_small", (32, 32), "none"),
        decoding=DecodeSettings("beam", 2, 0.5, CFG.max_length),
        combine=combine,
    )


def test_ensemble_artifact_round_trip(tmp_path):
    ds = members(3, seed=7)
    save(str(tmp_path / "ens"), ds, "mean_prob")
    save(str(tmp_path / "one"), ds[:1])
    config = json.loads((tmp_path / "ens" / "config.json").read_text())
    assert config["format"] == ENSEMBLE_FORMAT
    assert config["ensemble"] == {
        "members": ["decoder.weights.h5", "decoder-2.weights.h5", "decoder-3.weights.h5"],
        "combine": "mean_prob",
    }
    # A single decoder is still written in the first format, which every earlier reader loads.
    assert json.loads((tmp_path / "one" / "config.json").read_text())["format"] == ARTIFACT_FORMAT
    contents = read_artifact(str(tmp_path / "ens"))
    loaded = build_decoders(contents)
    assert len(loaded) == 3
    for original, back in zip(ds, loaded):
        for a, b in zip(original.training_model.get_weights(), back.training_model.get_weights()):
            np.testing.assert_array_equal(a, b)
    model = load_caption_model(str(tmp_path / "ens"), with_encoder=False)
    assert model.step_model.members == 3 and model.step_model.combine == "mean_prob"
    feats = np.random.default_rng(2).normal(size=(3, CFG.feature_dim)).astype(np.float32)
    expected = decode_batch(
        make_step_model(ds, combine="mean_prob"),
        feats,
        contents.vocab.start_id,
        contents.vocab.end_id,
        model.default_settings,
        contents.vocab.never_generated,
    )
    got = model.caption_features(feats)
    assert [r.caption for r in got] == [
        " ".join(contents.vocab.decode([t for t in h.token_ids if t != contents.vocab.end_id])) for h in expected
    ]


def test_broken_ensemble_artifacts_are_refused(tmp_path):
    good = tmp_path / "good"
    save(str(good), members(2, seed=3))

    def damaged(name: str, change) -> str:
        path = tmp_path / name
        shutil.copytree(good, path)
        change(path)
        return str(path)

    def drop_member(path):
        manifest = json.loads((path / MANIFEST).read_text())
        del manifest["files"]["decoder-2.weights.h5"]
        (path / MANIFEST).write_text(json.dumps(manifest))
        os.remove(path / "decoder-2.weights.h5")

    with pytest.raises(ArtifactError, match="model_id|ensemble member"):
        read_artifact(damaged("no-member", drop_member))

    def newer_format(path):
        manifest = json.loads((path / MANIFEST).read_text())
        manifest["format"] = "image-caption-model/9"
        (path / MANIFEST).write_text(json.dumps(manifest))

    with pytest.raises(ArtifactError, match="newer version"):
        read_artifact(damaged("newer", newer_format))

    def tamper_member(path):
        data = bytearray((path / "decoder-2.weights.h5").read_bytes())
        data[-100] ^= 0xFF
        (path / "decoder-2.weights.h5").write_bytes(bytes(data))

    with pytest.raises(ArtifactError, match="decoder-2.weights.h5.*SHA-256"):
        read_artifact(damaged("tampered", tamper_member))


def test_interrupted_fit_resumes_from_its_last_epoch(tmp_path, caplog):
    from training.fit import FitSettings, fit_member, make_dataset

    rng = np.random.default_rng(0)
    feats = rng.normal(size=(40, CFG.feature_dim)).astype(np.float32)
    caps = rng.integers(3, CFG.vocab_size, size=(120, CFG.max_length)).astype(np.int32)
    caps[:, 0] = 1
    caps[:, 6:] = 0
    index = rng.integers(0, 40, size=120).astype(np.int32)
    train_ds = make_dataset(feats, index, caps, 16, True, 0)
    dev_ds = make_dataset(feats, index[:30], caps[:30], 16, False, 0)
    settings = FitSettings(epochs=4, patience=10, batch_size=16, learning_rate=1e-2, seed=0)
    work = str(tmp_path / "member-1")

    class Crash(Exception):
        pass

    def crash_in_epoch_3(epoch, logs):
        if epoch == 2:
            raise Crash("killed")

    with pytest.raises(Crash):
        fit_member(members(1)[0], train_ds, dev_ds, settings, work, on_epoch=crash_in_epoch_3)
    state = json.loads(open(os.path.join(work, "state.json")).read())
    assert state["epoch"] == 2 and not state["done"] and len(state["history"]["loss"]) == 2
    last = members(1, seed=99)[0]
    last.load_weights(os.path.join(work, "last.weights.h5"))

    resumed = members(1, seed=42)[0]  # other initial weights: the checkpoint must replace them
    with caplog.at_level(logging.INFO, logger="training"):
        record = fit_member(resumed, train_ds, dev_ds, settings, work)
    assert "resuming member" in caplog.text and "optimizer state restored" in caplog.text
    assert record["done"] and record["epoch"] == 4 and len(record["history"]["loss"]) == 4
    assert record["history"]["loss"][:2] == state["history"]["loss"]
    # The resumed epochs started from the checkpoint, not from scratch: epoch 3's loss is close
    # to epoch 2's, far below a fresh model's first-epoch loss.
    assert record["history"]["loss"][2] < state["history"]["loss"][0]
    # A finished member is reused, never trained again.
    again = members(1, seed=7)[0]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="training"):
        fit_member(again, train_ds, dev_ds, settings, work)
    assert "already trained" in caplog.text
    best = members(1, seed=8)[0]
    best.load_weights(os.path.join(work, "best.weights.h5"))
    for a, b in zip(again.training_model.get_weights(), best.training_model.get_weights()):
        np.testing.assert_array_equal(a, b)
    # Other settings in the same folder are refused rather than mixed.
    with pytest.raises(ValueError, match="other settings"):
        fit_member(members(1)[0], train_ds, dev_ds, FitSettings(epochs=5, seed=0), work)
