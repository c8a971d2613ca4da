"""Attention decoders over a spatial map (model.attention_decoder) and their resumable training
(training.train_attention): tiny shapes, random data, real Keras, CPU seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")
from model.artifact_config import AttentionConfig  # noqa: E402
from model.attention_decoder import AttentionDecoder, AttentionStepModel  # noqa: E402
from model.caption_search import DecodeSettings, decode_batch  # noqa: E402
from model.vocabulary import Vocabulary  # noqa: E402
from training import attention_data, train_attention
from training.datasets import CaptionedImage  # noqa: E402
from training.fit import FitSettings, fit_member  # noqa: E402


def tiny(kind: str, **sizes) -> AttentionConfig:
    values = dict(
        vocab_size=11,
        max_length=6,
        feature_dim=8,
        regions=4,
        embedding_dim=6,
        units=5,
        attention_dim=3,
        dropout=0.0,
        kind=kind,
    )
    return AttentionConfig(**{**values, **sizes})


def random_inputs(seed: int = 0, images: int = 2, captions: int = 3, steps: int = 5, vocab: int = 11):
    rng = np.random.default_rng(seed)
    maps = rng.normal(size=(images, 2, 2, 8)).astype(np.float32)
    words = rng.integers(1, vocab, size=(images, captions, steps)).astype(np.int32)
    return maps, words


@pytest.mark.parametrize("kind", ["soft", "adaptive"])
def test_step_model_reproduces_the_teacher_forced_graph(kind: str):
    keras.utils.set_random_seed(1)
    decoder = AttentionDecoder(tiny(kind))
    maps, words = random_inputs()
    probs = decoder.training_model((maps.reshape(2, 4, 8), words)).numpy().reshape(6, 5, 11)
    step = decoder.step_model()
    state = step.initial_state(np.repeat(maps, 3, axis=0))  # (n, h, w, d) maps are accepted as they are
    h, m, image_index, projected = state
    assert [h.shape, m.shape] == [(6, 5), (6, 5)] and list(image_index) == list(range(6))
    assert [p.shape for p in projected] == [(6, 4, 5), (6, 4, 3), (6, 6)]  # the map once per image
    flat = words.reshape(6, 5)
    for t in range(5):
        logp, state = step.step(flat[:, t], state)
        np.testing.assert_allclose(logp, np.log(probs[:, t]), atol=2e-5)


def test_the_sentinel_changes_the_network():
    keras.utils.set_random_seed(2)
    soft, adaptive = AttentionDecoder(tiny("soft")), AttentionDecoder(tiny("adaptive"))

    def names(d: AttentionDecoder) -> set[str]:
        return {layer.name for layer in d.training_model.layers if layer.weights}

    assert names(adaptive) - names(soft) == {"sentinel_input", "sentinel_hidden", "sentinel_key"}
    assert adaptive.count_params() > soft.count_params()


def test_ensemble_combines_the_members_in_one_graph():
    keras.utils.set_random_seed(3)
    members = [AttentionDecoder(tiny("adaptive")), AttentionDecoder(tiny("soft", dropout=0.5))]  # a diverse pair
    maps, words = random_inputs(seed=4, captions=1)
    singles = [m.step_model() for m in members]
    both = AttentionStepModel(members)
    states = [s.initial_state(maps) for s in singles]
    state = both.initial_state(maps)
    assert state[0].shape == (2, 10) and state[3][0].shape == (2, 4, 10)
    for t in range(3):
        outs = [s.step(words[:, 0, t], st) for s, st in zip(singles, states)]
        states = [o[1] for o in outs]
        logp, state = both.step(words[:, 0, t], state)
        mean = (outs[0][0] + outs[1][0]) / 2
        expected = mean - np.log(np.exp(mean).sum(axis=1, keepdims=True))
        np.testing.assert_allclose(logp, expected, atol=2e-5)
    prob = AttentionStepModel(members, combine="mean_prob")
    logp, _ = prob.step(words[:, 0, 0], prob.initial_state(maps))
    first = [s.step(words[:, 0, 0], s.initial_state(maps))[0] for s in singles]
    np.testing.assert_allclose(np.exp(logp), (np.exp(first[0]) + np.exp(first[1])) / 2, atol=2e-6)
    with pytest.raises(ValueError, match="same decoder sizes"):
        AttentionStepModel([members[0], AttentionDecoder(tiny("soft", units=6))])


def test_step_model_refuses_maps_of_another_shape():
    step = AttentionDecoder(tiny("soft")).step_model()
    with pytest.raises(ValueError, match="4 cells x 8"):
        step.initial_state(np.zeros((2, 3, 3, 8), np.float32))
    with pytest.raises(ValueError, match="4 cells x 8"):
        step.initial_state(np.zeros((2, 8), np.float32))


def test_weights_round_trip_and_load_strictly(tmp_path: Path):
    keras.utils.set_random_seed(5)
    decoder = AttentionDecoder(tiny("adaptive"))
    path = str(tmp_path / "a.weights.h5")
    decoder.save_weights(path)
    twin = AttentionDecoder(tiny("adaptive"))
    twin.load_weights(path)
    maps, words = random_inputs(seed=6)
    np.testing.assert_allclose(
        twin.training_model((maps.reshape(2, 4, 8), words)),
        decoder.training_model((maps.reshape(2, 4, 8), words)),
        atol=1e-6,
    )
    soft_path = str(tmp_path / "s.weights.h5")
    AttentionDecoder(tiny("soft")).save_weights(soft_path)
    with pytest.raises(ValueError):
        AttentionDecoder(tiny("adaptive")).load_weights(soft_path)


def test_config_is_checked_and_round_trips():
    config = tiny("adaptive")
    assert AttentionConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="kind"):
        tiny("hard")
    with pytest.raises(ValueError, match="unknown"):
        AttentionConfig.from_dict({**config.to_dict(), "heads": 2})


def test_caption_table_and_batches_weigh_only_real_tokens():
    vocab = Vocabulary.build(["a red dog", "a dog", "the cat runs"], min_count=1)
    items = [CaptionedImage("x", "x.jpg", ("a red dog", "a dog")), CaptionedImage("y", "y.jpg", ("the cat runs", "?!"))]
    table = attention_data.caption_table(items, vocab, max_length=7)
    assert table.shape == (2, 2, 7)
    assert not table[1, 1].any()  # "?!" has no words: an all-padding row
    assert list(table[0, 1, :4]) == vocab.encode("a dog", 7)
    maps = np.arange(2 * 4 * 3, dtype=np.float16).reshape(2, 2, 2, 3)
    batches = list(attention_data.image_batches(maps, table, batch_images=2, shuffle=False, seed=0))
    (x, inputs), target, weight = batches[0]
    assert x.shape == (2, 4, 3) and x.dtype == np.float16
    longest = max(len(vocab.encode(c, 7)) for it in items for c in it.captions)
    assert inputs.shape == target.shape == weight.shape == (2, 2, longest - 1)  # cut to the longest caption
    np.testing.assert_array_equal(weight > 0, target > 0)
    assert weight.mean() == pytest.approx(1.0)
    shuffled = list(attention_data.image_batches(maps, table, batch_images=1, shuffle=True, seed=3))
    assert sorted(float(b[0][0][0, 0, 0]) for b in shuffled) == [0.0, 12.0]


def test_dev_quality_counts_distinct_and_findable_captions():
    items = [
        CaptionedImage(f"{i}", f"{i}.jpg", (f"r{i}", f"a {w} dog", f"the {w} dog runs"))
        for i, w in enumerate(["red", "blue", "green"])
    ]
    apart = attention_data.dev_quality([["a", w, "dog"] for w in ("red", "blue", "green")], items)
    assert apart["distinct"] == 1.0 and apart["r_at_1"] == 1.0 and apart["median_rank"] == 1.0
    same = attention_data.dev_quality([["a", "dog"]] * 3, items)
    assert same["distinct"] == pytest.approx(1 / 3)
    assert same["r_at_1"] == pytest.approx(1 / 3)  # three tied documents: found first one time in three
    assert same["bleu1"] < apart["bleu1"]


def colour_task(n: int, seed: int):
    """Maps whose one 'hot' cell (random position) says the colour word of the caption."""
    rng = np.random.default_rng(seed)
    colour = rng.integers(0, 3, n)
    maps = rng.normal(0, 0.1, (n, 4, 8)).astype(np.float32)
    maps[np.arange(n), rng.integers(0, 4, n), colour] = 3.0
    # ids: 0 pad, 1 <start>, 2 <end>, 3 "a", 4..6 colours, 7 "dog"
    words = np.stack([[1, 3, 4 + c, 7, 2] for c in colour]).astype(np.int32)[:, None, :]
    return maps, words, colour


class Interrupted(Exception):
    pass


def test_fit_learns_the_hot_cell_and_an_interrupted_fit_resumes(tmp_path: Path):
    keras.utils.set_random_seed(7)
    config = tiny("adaptive", vocab_size=8, units=16, attention_dim=8, embedding_dim=8)
    maps, words, _ = colour_task(96, seed=8)
    dev_maps, dev_words, dev_colour = colour_task(30, seed=9)
    table = np.concatenate([words, np.zeros_like(words)], axis=1)  # a padding row per image weighs nothing
    settings = FitSettings(epochs=8, patience=8, learning_rate=0.02)
    work = str(tmp_path / "member")

    def fit(on_epoch=None):
        return fit_member(
            AttentionDecoder(config),
            attention_data.make_image_dataset(maps, table, 16, True, 0),
            attention_data.make_image_dataset(dev_maps, dev_words, 30, False, 0),
            settings,
            work,
            on_epoch=on_epoch,
        )

    def stop_at_third(epoch: int, logs: dict) -> None:
        if epoch == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        fit(stop_at_third)
    assert json.loads((tmp_path / "member" / "state.json").read_text())["epoch"] == 2
    seen: list[int] = []
    record = fit(lambda epoch, logs: seen.append(epoch))
    assert seen[0] == 2 and record["epoch"] == 8 and len(record["history"]["loss"]) == 8
    assert record["history"]["val_loss"][-1] < 0.5 * record["history"]["val_loss"][0]
    decoder = AttentionDecoder(config)
    decoder.load_weights(str(tmp_path / "member" / "best.weights.h5"))
    hyps = decode_batch(decoder.step_model(), dev_maps, 1, 2, DecodeSettings("beam", 2, 0.0, 6), banned_ids=(0, 1))
    said = np.array([h.token_ids[1] - 4 if len(h.token_ids) > 1 else -1 for h in hyps])
    assert (said == dev_colour).mean() >= 0.9


@pytest.mark.parametrize("runtime", ["tensorflow", "openvino"])
def test_spatial_encoder_returns_the_map_whose_mean_is_the_pooled_vector(runtime: str):
    from model.encoder import ImageEncoder

    keras.utils.set_random_seed(10)
    images = np.random.default_rng(11).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    spatial = ImageEncoder("mobilenet_v3_small", None, (64, 64), runtime=runtime, cache="none", spatial=True)
    maps = spatial(images)
    assert maps.shape == (2, 2, 2, 576)
    pooled = ImageEncoder("mobilenet_v3_small", None, (64, 64), runtime=runtime, cache="none")
    pooled._model = keras.Model(spatial.model.input, keras.layers.GlobalAveragePooling2D()(spatial.model.output))
    if runtime == "tensorflow":  # same weights: the pooled encoder is the map's average
        pooled._forward = pooled._tensorflow_forward()
        np.testing.assert_allclose(pooled(images), maps.mean(axis=(1, 2)), rtol=1e-4, atol=1e-6)


def test_spatial_features_are_cached_in_float16_under_their_own_key(tmp_path: Path):
    from training.features import FeatureCache, feature_cache_key

    key = feature_cache_key("xception", (299, 299), "abc", spatial=True)
    assert key != feature_cache_key("xception", (299, 299), "abc") and "spatial" in key
    cache = FeatureCache(str(tmp_path), key, dtype=np.float16)
    maps = np.random.default_rng(12).normal(size=(3, 2, 2, 4)).astype(np.float32)
    cache.add(["a", "b", "c"], maps)
    reread = FeatureCache(str(tmp_path), key, dtype=np.float16)
    stacked = reread.stacked(["c", "a"])
    assert stacked.dtype == np.float16 and stacked.shape == (2, 2, 2, 4)
    np.testing.assert_allclose(stacked, maps[[2, 0]], rtol=1e-3, atol=1e-3)
    assert [p.name.startswith("part-") for p in tmp_path.joinpath(key).iterdir()] == [True]


def test_train_attention_cli_trains_resumes_and_evaluates(tmp_path: Path, capsys: pytest.CaptureFixture):
    from tests.test_training import make_shapes

    shapes = make_shapes(tmp_path / "data")
    work = tmp_path / "work"
    args = [
        "--flickr8k",
        str(shapes.root),
        "--encoder",
        "mobilenet_v3_small",
        "--encoder-weights",
        "none",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--work-dir",
        str(work),
        "--no-progress",
        "--units",
        "16",
        "--embedding-dim",
        "8",
        "--attention-dim",
        "8",
        "--min-count",
        "1",
        "--batch-images",
        "32",
        "--dev-eval",
        "10",
    ]
    with pytest.raises(SystemExit, match="no trained decoder"):
        train_attention.main([*args, "--evaluate-only"])
    assert not work.exists()
    keras.utils.set_random_seed(13)
    assert train_attention.main([*args, "--epochs", "2", "--image-size", "64"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["epochs"] == 2 and first["config"]["regions"] == 4 and first["config"]["feature_dim"] == 576
    state = json.loads((work / "member-1" / "state.json").read_text())
    assert {"dev_bleu4", "dev_cider_d", "dev_distinct", "dev_r_at_5"} <= set(state["history"])
    selected = json.loads((work / "member-1" / "selected.json").read_text())
    scores = [c + r for c, r in zip(state["history"]["dev_cider_d"], state["history"]["dev_r_at_5"])]
    assert selected["metric"] == "cider_d+r_at_5" and selected["epoch"] == 1 + int(np.argmax(scores))
    assert train_attention.main([*args, "--epochs", "2", "--image-size", "64"]) == 0  # finished: reused
    assert json.loads(capsys.readouterr().out)["epochs"] == 2
    assert (
        train_attention.main(
            [*args, "--epochs", "2", "--image-size", "64", "--evaluate-only", "--decode", "beam:2:0.5"]
        )
        == 0
    )
    scores = json.loads(capsys.readouterr().out)
    assert scores["decode"].startswith("beam(k=2") and 0 <= scores["r_at_5"] <= 1 and 0 < scores["distinct"] <= 1
    with pytest.raises(SystemExit, match="holds a decoder of config"):
        train_attention.main([*args, "--epochs", "2", "--image-size", "64", "--units", "24"])
    other = ["--work-dir" if a == str(work) else a for a in args]
    other[other.index("--work-dir") + 1] = str(tmp_path / "soft")
    assert train_attention.main([*other, "--epochs", "1", "--image-size", "64", "--kind", "soft"]) == 0
    capsys.readouterr()
    assert (
        train_attention.main(
            [*args, "--epochs", "2", "--image-size", "64", "--evaluate-only", "--ensemble-with", str(tmp_path / "soft")]
        )
        == 0
    )
    assert len(json.loads(capsys.readouterr().out)["members"]) == 2
    assert (
        train_attention.main(
            [*args, "--epochs", "2", "--image-size", "64", "--evaluate-only", "--checkpoint", "selected"]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["epoch"] == selected["epoch"]
    recorded = [json.loads(line) for line in (work / "evaluations.jsonl").read_text().splitlines()]
    assert [len(r["members"]) for r in recorded] == [1, 2, 1] and recorded[0]["epoch"] == 2
    assert (
        train_attention.main(
            [
                *args,
                "--epochs",
                "2",
                "--image-size",
                "64",
                "--scst-epochs",
                "1",
                "--scst-discriminability",
                "0.5",
                "--scst-beam-width",
                "1",
            ]
        )
        == 0
    )
    scst = json.loads(capsys.readouterr().out)["scst"]
    assert scst["settings"]["discriminability"] == 0.5 and [h["epoch"] for h in scst["history"]] == [0, 1]
    assert 0 < scst["history"][1]["findability"] <= 1 and "r_at_5" in scst["history"][1]["dev"]

    # A released artifact seeds a new work folder (its vocabulary and decoder as a finished fit),
    # and SCST with the pooled findability reward continues from its weights.
    from model.artifact import read_artifact
    from training import export_attention

    released = tmp_path / "released"
    export = ["--work-dir", str(work), "--out", str(released), "--decode", "greedy", "--encoder", "mobilenet_v3_small"]
    assert export_attention.main([*export, "--image-size", "64", "--record-encoder-weights", "none"]) == 0
    capsys.readouterr()
    seeded = tmp_path / "seeded"
    pooled = [a if a != str(work) else str(seeded) for a in args]
    scst_flags = ["--scst-epochs", "1", "--scst-discriminability", "1", "--scst-findability-pool", "5"]
    with pytest.raises(SystemExit, match="--kind adaptive"):  # the flags must ask for the released decoder
        train_attention.main([*pooled, "--image-size", "64", "--kind", "soft", "--init-from-model", str(released)])
    init = [*pooled, "--image-size", "64", "--init-from-model", str(released), "--scst-beam-width", "1"]
    assert train_attention.main([*init, *scst_flags]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["epochs"] == 0 and result["scst"]["settings"]["findability_pool"] == 5
    start = result["scst"]["history"][0]["dev"]
    assert 0 <= result["scst"]["history"][1]["findability"] <= 1
    member = json.loads((seeded / "member-1" / "state.json").read_text())
    assert member["done"] and member["initialised_from"] == read_artifact(str(released)).model_id
    assert (
        json.loads((seeded / "vocabulary.json").read_text())["vocabulary"]
        == json.loads((work / "vocabulary.json").read_text())["vocabulary"]
    )
    # SCST's epoch 0 is the released decoder: the same dev scores as the work folder it came from
    assert train_attention.main([*args, "--image-size", "64", "--evaluate-only", "--decode", "greedy"]) == 0
    original = json.loads(capsys.readouterr().out)
    assert {k: start[k] for k in ("bleu4", "r_at_5")} == {k: original[k] for k in ("bleu4", "r_at_5")}

    # An SCST run joins an ensemble by its folder (its chosen epoch), when scored and when exported.
    run = next((work / "member-1").glob("scst-*"))
    pair = ["--evaluate-only", "--decode", "greedy", "--ensemble-with", str(run)]
    assert train_attention.main([*args, "--image-size", "64", *pair]) == 0
    paired = json.loads(capsys.readouterr().out)
    assert paired["member_epochs"] == [original["epoch"], json.loads((run / "state.json").read_text())["best_epoch"]]
    both = tmp_path / "both"
    export[3] = str(both)
    flags = ["--image-size", "64", "--record-encoder-weights", "none", "--ensemble-with", str(run)]
    assert export_attention.main([*export, *flags]) == 0
    members = json.loads((both / "config.json").read_text())["training"]["members"]
    assert [(m["checkpoint"], m["scst_run"]) for m in members] == [("best", None), ("scst", run.name)]


@pytest.mark.parametrize("kinds", [("soft", "soft"), ("adaptive", "adaptive"), ("soft", "adaptive")])
def test_openvino_step_graphs_give_tensorflows_captions(kinds: tuple[str, str]):
    """OpenVINO runs the folded graphs (the LSTM's input gates split per word and per image),
    TensorFlow the plain step: same log-probabilities and captions."""
    from model.attention_decoder import make_attention_step_model

    keras.utils.set_random_seed(14)
    members = [AttentionDecoder(tiny(kind)) for kind in kinds]
    maps, words = random_inputs(seed=15, images=3, captions=1)
    tf_step = make_attention_step_model(members)
    ov_step = make_attention_step_model(members, "openvino", cache="none")
    tf_state, ov_state = tf_step.initial_state(maps), ov_step.initial_state(maps)
    for t in range(4):
        tf_logp, tf_state = tf_step.step(words[:, 0, t], tf_state)
        ov_logp, ov_state = ov_step.step(words[:, 0, t], ov_state)
        np.testing.assert_allclose(ov_logp, tf_logp, atol=1e-4)
    settings = DecodeSettings("beam", 3, 0.5, 6)
    assert [h.token_ids for h in decode_batch(ov_step, maps, 1, 2, settings)] == [
        h.token_ids for h in decode_batch(tf_step, maps, 1, 2, settings)
    ]
    with pytest.raises(ValueError, match="runtime"):
        make_attention_step_model(members, "cuda")


def test_findability_reward_prefers_captions_that_tell_the_batch_apart():
    from training.scst import ScstSettings
    from training.scst_rewards import FindabilityReward

    vocab = Vocabulary.build(["a red dog", "a blue cat"], min_count=1)
    reward = FindabilityReward(vocab, [("a red dog", "red dog"), ("a blue cat", "blue cat"), ("x",)])

    def row(text: str) -> list[int]:
        ids = vocab.encode(text, 6)
        return ids + [0] * (6 - len(ids))

    # images 0 and 1, two samples each (image-major): slot 0 tells them apart, slot 1 does not
    tokens = np.array([row("a red dog"), row("a dog"), row("a blue cat"), row("a dog")])
    np.testing.assert_allclose(reward([0, 0, 1, 1], tokens, 2), [1.0, 0.75, 1.0, 0.75])
    assert ScstSettings().identity() == {k: v for k, v in ScstSettings(discriminability=0.0).identity().items()}
    assert "discriminability" not in ScstSettings().identity()
    assert ScstSettings(discriminability=0.5).identity()["discriminability"] == 0.5
    with pytest.raises(ValueError, match="discriminability"):
        ScstSettings(discriminability=-1)


def test_pooled_findability_reward_ranks_each_sample_among_other_images_captions():
    from training.scst import ScstSettings
    from training.scst_rewards import FindabilityReward

    captions = ["a red dog", "a dog", "a blue cat", "a red ball", "a cat"]
    vocab = Vocabulary.build(captions, min_count=1)
    refs = [("a red dog", "red dog"), ("a blue cat",), ("a red ball",)]
    reward = FindabilityReward(vocab, refs, pool_size=3)

    def row(text: str) -> list[int]:
        ids = vocab.encode(text, 6)
        return ids + [0] * (6 - len(ids))

    with pytest.raises(RuntimeError, match="set_pool"):
        reward([0], np.array([row("a red dog")]), 1)
    # the pool: every image's caption; image 0's own ("a dog") never competes with its samples
    reward.set_pool([0, 1, 2], np.array([row("a dog"), row("a blue cat"), row("a red ball")]))
    got = reward([0, 0, 0], np.array([row("a red dog"), row("a red ball"), row("a cat")]), 3)
    # "a red dog" beats both distractors for both queries; "a red ball" ties with image 2's caption
    # (positions 1 or 2: E[1/rank] 0.75); "a cat": query "red dog" finds it tied with "a blue cat"
    # behind "a red ball" (positions 2 or 3), query "a red dog" ranks it second (the shorter "a" match)
    np.testing.assert_allclose(got, [1.0, 0.75, ((1 / 2 + 1 / 3) / 2 + 1 / 2) / 2])
    assert ScstSettings(discriminability=0.5).identity() == ScstSettings(discriminability=0.5).identity()
    assert "findability_pool" not in ScstSettings(discriminability=0.5).identity()
    assert (
        ScstSettings(discriminability=0.5, findability_pool=1000).run_folder()
        != ScstSettings(discriminability=0.5).run_folder()
    )
    with pytest.raises(ValueError, match="pool"):
        ScstSettings(findability_pool=-1)


class _MapCopiedPerRow:
    """The former state layout: the projected map copied into every beam row."""

    def __init__(self, step: AttentionStepModel) -> None:
        self.inner = step

    def initial_state(self, maps):
        h, m, _, (values, keys, image) = self.inner.initial_state(maps)
        return h, m, values, keys, image

    def step(self, words, state):
        h, m, values, keys, image = state
        logp, h2, m2 = self.inner.step_tensors(tf.constant(words, tf.int32), h, m, values, keys, image)
        return logp.numpy(), (h2.numpy(), m2.numpy(), values, keys, image)


@pytest.mark.parametrize("runtime", ["tensorflow", "openvino"])
def test_beam_search_with_the_map_per_image_finds_what_per_row_copies_find(runtime: str):
    from model.attention_decoder import make_attention_step_model

    members = []
    for i, kind in enumerate(("soft", "adaptive")):
        keras.utils.set_random_seed(20 + i)
        members.append(AttentionDecoder(tiny(kind)))
    maps = np.random.default_rng(4).normal(size=(5, 2, 2, 8)).astype(np.float32)
    settings = DecodeSettings("beam", 3, 0.5, 6)
    expected = decode_batch(_MapCopiedPerRow(AttentionStepModel(members)), maps, 1, 2, settings)
    got = decode_batch(make_attention_step_model(members, runtime, cache="none"), maps, 1, 2, settings)
    assert [h.token_ids for h in got] == [h.token_ids for h in expected]
    np.testing.assert_allclose([h.logprob for h in got], [h.logprob for h in expected], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kinds", [("soft",), ("soft", "adaptive")])
def test_openvino_grouped_step_reads_each_images_map_once_and_agrees_with_the_row_step(kinds: tuple[str, ...]):
    """Rows grouped by image, as many each, run the step on those images' entries once each (no
    per-row copy of the map); any other layout gives each row its image's entries. Both give the
    TensorFlow step's numbers."""
    from model import attention_runtime
    from model.attention_decoder import make_attention_step_model

    keras.utils.set_random_seed(31)
    members = [AttentionDecoder(tiny(kind)) for kind in kinds]
    maps = np.random.default_rng(8).normal(size=(4, 2, 2, 8)).astype(np.float32)
    tf_step = make_attention_step_model(members)
    ov_step = make_attention_step_model(members, "openvino", cache="none")
    rng = np.random.default_rng(9)
    groups = []
    real_run = ov_step._run.run
    ov_step._run.run = lambda index, inputs: (index == 1 and groups.append(len(inputs[3]))) or real_run(index, inputs)
    for rows in ([0, 1, 2, 3], [0, 0, 2, 2, 3, 3], [1, 1, 1, 3, 3, 3], [0, 2, 2], [3, 1]):
        image_index = np.array(rows, np.int32)
        h, m = (rng.normal(size=(len(rows), len(kinds) * 5)).astype(np.float32) for _ in range(2))
        words = rng.integers(1, 11, size=len(rows)).astype(np.int32)
        tf_logp, (tf_h, tf_m, *_) = tf_step.step(words, (h, m, image_index, tf_step.initial_state(maps)[3]))
        ov_logp, (ov_h, ov_m, *_) = ov_step.step(words, (h, m, image_index, ov_step.initial_state(maps)[3]))
        for got, want in ((ov_logp, tf_logp), (ov_h, tf_h), (ov_m, tf_m)):
            np.testing.assert_allclose(got, want, atol=1e-4)
        images = attention_runtime.grouped_images(image_index)
        assert groups[-1] == (len(rows) if images is None else len(images))
    assert groups == [4, 3, 2, 3, 2]  # the maps the step read: of the images, or of each row


@pytest.mark.slow
def test_openvino_step_graphs_outlive_the_tensorflow_model_they_came_from():
    """A converted graph must own its weights: a step model keeps only its compiled graphs, and
    once the TensorFlow weights they were converted from were freed and their memory reused, the
    captions were garbage (OpenVINO's convert_model shares the variables' memory by default).
    Several step models of the shipped decoder, then allocations, then a TensorFlow reference."""
    import gc

    from model.artifact import read_artifact
    from model.caption_search import caption_features
    from model.captioner import build_step_model

    contents = read_artifact(str(Path(__file__).parent.parent / "models" / "flickr8k-xception"), encoder_weights="none")
    steps = [build_step_model(contents, "openvino", cache="none") for _ in range(4)]
    gc.collect()
    junk = [np.full((4096, 4096), 3.0, np.float32) for _ in range(8)]
    reference = build_step_model(contents, "tensorflow")
    maps = np.abs(np.random.default_rng(0).normal(0, 1, (8, 100, 2048))).astype(np.float32)
    want = [r.caption for r in caption_features(reference, contents.vocab, maps, contents.decode_settings())]
    for step in steps:
        assert [r.caption for r in caption_features(step, contents.vocab, maps, contents.decode_settings())] == want
    assert len(junk) == 8
