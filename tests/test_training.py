"""Offline training end to end on a generated dataset of drawn shapes (real Keras, real files).

The images are coloured circles, squares and triangles drawn with Pillow on white; their three
captions name the size, colour and kind ("a small red circle", "the red circle is small", "one
small red circle shape"), so a captioner that sees the image beats a caption chosen blindly.

* ``random_run``: MobileNetV3Small with random (seeded) weights at 64 px, 3 epochs: fast, needs no
  file, used for the artifact, feature cache, skip reporting, evaluate CLI and BLEU = nltk checks.
  Its features carry almost no signal (a random MobileNetV3 shrinks them to ~1e-10; random
  ResNet50 features were tried too and did not beat the baseline), so it cannot show learning.
* ``xception_run``: the real ImageNet Xception weights at 96 px, 30 epochs (about 10 s): shows
  that training learns. It skips, with the fixture's reason, when the weights file is absent.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu
from PIL import Image, ImageDraw

from model import flickr8k
from model.artifact import read_artifact
from model.bleu import bleu_tokens, corpus_bleu_scores
from model.caption_search import DecodeSettings
from model.captioner import build_decoder, load_caption_model
from model.image_loading import decode_image
from model.vocabulary import Vocabulary
from training import datasets, embeddings, features
from training import evaluate as training_evaluate
from training import train as training_train

COLOURS = {"red": (220, 30, 30), "green": (30, 160, 40), "blue": (30, 60, 220), "yellow": (240, 210, 20)}
KINDS = ("circle", "square", "triangle")
SIZES = ("small", "large")
SIDE = 96  # stored image size; each encoder resizes to its own input size
N_TRAIN, N_DEV = 120, 40
CORRUPT = "train_corrupt.jpg"  # a JPEG cut in half: listed in the train split, undecodable
MISSING = "train_missing.jpg"  # listed in the train split (with captions), not on disk
NLTK_WEIGHTS = {"bleu1": (1, 0, 0, 0), "bleu2": (0.5, 0.5), "bleu3": (1 / 3,) * 3, "bleu4": (0.25,) * 4}
SMALL_DECODER = ["--embedding-dim", "32", "--units", "64", "--min-count", "1", "--batch-size", "32", "--no-progress"]


def captions_for(colour: str, kind: str, size: str) -> tuple[str, ...]:
    return (f"a {size} {colour} {kind}", f"the {colour} {kind} is {size}", f"one {size} {colour} {kind} shape")


def draw_shape(kind: str, colour: str, size: str, rng: np.random.Generator, side: int = SIDE) -> Image.Image:
    """One filled shape of random position and radius (small: 14-20 %, large: 30-40 % of the side)."""
    img = Image.new("RGB", (side, side), "white")
    draw = ImageDraw.Draw(img)
    lo, hi = (0.14, 0.20) if size == "small" else (0.30, 0.40)
    r = rng.uniform(lo, hi) * side
    cx, cy = rng.uniform(r + 1, side - r - 1, 2)
    fill = COLOURS[colour]
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


@dataclass(frozen=True)
class Shapes:
    root: Path  # Flickr8k layout
    train_table: Path  # CSV, relative image paths, one row per caption
    dev_table: Path  # JSONL, likewise
    captions: dict[str, tuple[str, ...]]  # every listed image, the missing one included
    train: list[str]  # split lists, the corrupt and missing images included
    dev: list[str]


def make_shapes(root: Path, seed: int = 0) -> Shapes:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    classes = [(c, k) for c in COLOURS for k in KINDS]
    captions: dict[str, tuple[str, ...]] = {}
    splits: dict[str, list[str]] = {}
    for split, n in (("train", N_TRAIN), ("dev", N_DEV)):
        names = []
        for i in range(n):
            colour, kind = classes[i % len(classes)]
            size = SIZES[int(rng.integers(2))]
            name = f"{split}_{i:03d}.jpg"
            draw_shape(kind, colour, size, rng).save(root / "images" / name, "JPEG", quality=95)
            captions[name] = captions_for(colour, kind, size)
            names.append(name)
        splits[split] = names
    whole = io.BytesIO()
    draw_shape("circle", "red", "large", rng).save(whole, "JPEG", quality=95)
    (root / "images" / CORRUPT).write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    captions[CORRUPT] = captions_for("red", "circle", "large")
    captions[MISSING] = captions_for("blue", "square", "small")
    splits["train"][5:5] = [CORRUPT, MISSING]
    with open(root / flickr8k.TOKEN_FILE, "w") as f:
        for name, caps in captions.items():
            for j, caption in enumerate(caps):
                f.write(f"{name}#{j}\t{caption}\n")
    for split, names in splits.items():
        (root / flickr8k.SPLIT_FILES[split]).write_text("\n".join(names) + "\n")
    tables = root / "tables"
    tables.mkdir()
    train_table = tables / "train.csv"
    with open(train_table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for name in splits["train"]:
            for caption in captions[name]:
                writer.writerow([f"../images/{name}", caption])
    dev_table = tables / "dev.jsonl"
    with open(dev_table, "w") as f:
        for name in splits["dev"]:
            for caption in captions[name]:
                f.write(json.dumps({"image": f"../images/{name}", "caption": caption}) + "\n")
    return Shapes(root, train_table, dev_table, captions, splits["train"], splits["dev"])


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Shapes:
    return make_shapes(tmp_path_factory.mktemp("shapes") / "data")


@dataclass(frozen=True)
class Run:
    model: Path
    cache: Path
    summary: dict
    seconds: float


def run_training(argv: list[str]) -> float:
    started = time.perf_counter()
    assert training_train.main(argv) == 0
    return time.perf_counter() - started


def config_of(model: Path) -> dict:
    return json.loads((model / "config.json").read_text())


@pytest.fixture(scope="module")
def random_run(shapes: Shapes, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Flickr8k format, random MobileNetV3Small (seeded by train()'s set_random_seed), 3 epochs at a
    high learning rate: a language model of the captions, as the features are nearly constant."""
    out = tmp_path_factory.mktemp("random-run")
    model, cache = out / "model", out / "cache"
    seconds = run_training(
        [
            "--flickr8k",
            str(shapes.root),
            "--encoder",
            "mobilenet_v3_small",
            "--image-size",
            "64",
            "--encoder-weights",
            "none",
            "--artifact-encoder-weights",
            "none",
            "--cache-dir",
            str(cache),
            "--output",
            str(model),
            "--epochs",
            "3",
            "--learning-rate",
            "0.01",
            "--bleu-sample",
            "20",
            *SMALL_DECODER,
        ]
    )
    return Run(model, cache, config_of(model)["training"], seconds)


@pytest.fixture(scope="module")
def xception_run(shapes: Shapes, xception_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Real ImageNet Xception features at 96 px; 30 epochs of the small decoder."""
    out = tmp_path_factory.mktemp("xception-run")
    model, cache = out / "model", out / "cache"
    seconds = run_training(
        [
            "--flickr8k",
            str(shapes.root),
            "--encoder",
            "xception",
            "--image-size",
            "96",
            "--encoder-weights",
            str(xception_weights),
            "--artifact-encoder-weights",
            str(xception_weights),
            "--cache-dir",
            str(cache),
            "--output",
            str(model),
            "--epochs",
            "30",
            "--patience",
            "5",
            "--bleu-sample",
            "20",
            *SMALL_DECODER,
        ]
    )
    return Run(model, cache, config_of(model)["training"], seconds)


def forbid_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make building or calling any image encoder fail the test."""
    from model.encoder import ImageEncoder

    def refuse(*args, **kwargs):
        raise AssertionError("the image encoder was used although every feature is cached")

    monkeypatch.setattr(ImageEncoder, "__init__", refuse)
    monkeypatch.setattr(ImageEncoder, "__call__", refuse)


def dev_features(run: Run, shapes: Shapes, encoder: str, weights: str, size: int):
    """(items, features) of the dev split, read through the feature cache of a run."""
    args = training_train.build_parser().parse_args(
        ["--flickr8k", str(shapes.root), "--cache-dir", str(run.cache), "--output", "unused", "--no-progress"]
    )
    items, feats, _ = training_train.load_split_features(args, "dev", encoder, weights, (size, size))
    return items, feats


# --------------------------------------------------------------------------- training runs


def test_training_writes_a_loadable_artifact_with_curves_and_history(random_run: Run, shapes: Shapes):
    contents = read_artifact(str(random_run.model))
    assert contents.config.encoder.name == "mobilenet_v3_small"
    assert contents.config.encoder.image_size == (64, 64)
    png = (random_run.model / "training_curves.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert Image.open(io.BytesIO(png)).format == "PNG"
    manifest = json.loads((random_run.model / "manifest.json").read_text())
    assert "training_curves.png" in manifest["files"]

    t = random_run.summary
    assert set(t["history"]) >= {"loss", "val_loss", "dev_bleu1", "dev_bleu2", "dev_bleu3", "dev_bleu4"}
    assert t["epochs_run"] == len(t["history"]["loss"]) == 3
    assert t["best_epoch"] == int(np.argmin(t["history"]["val_loss"])) + 1
    assert set(t["dev_bleu"]) == {"greedy(max_len=7)", "beam(k=3,alpha=0.7,max_len=7)"}
    for scores in t["dev_bleu"].values():
        assert set(scores) == {"bleu1", "bleu2", "bleu3", "bleu4"}
        assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert t["data"]["train_images"] == N_TRAIN and t["data"]["train_captions"] == 3 * N_TRAIN
    assert t["data"]["dev_images"] == N_DEV and t["data"]["dev_captions"] == 3 * N_DEV

    model = load_caption_model(str(random_run.model))  # encoder too: weights "none" = random init
    assert model.model_id == contents.model_id
    items, feats = dev_features(random_run, shapes, "mobilenet_v3_small", "none", 64)
    results = model.caption_features(feats[:4])
    assert len(results) == 4 and all(r.score <= 0 for r in results)
    pixels = decode_image((shapes.root / "images" / shapes.dev[0]).read_bytes(), model.image_size).pixels
    _, via_images = model.caption_images(pixels[None])
    assert len(via_images) == 1


def test_corrupt_and_missing_images_are_skipped_and_reported(random_run: Run):
    skipped = random_run.summary["data"]["skipped"]
    train = skipped["train"]
    assert train["encoded"] == N_TRAIN and train["cached"] == 0
    assert train["missing"] == 1 and train["missing_examples"] == [MISSING]
    assert train["undecodable"] == 1
    assert train["undecodable_examples"][CORRUPT].startswith("TruncatedImage")
    assert skipped["dev"]["missing"] == 0 and skipped["dev"]["undecodable"] == 0
    assert skipped["dev"]["encoded"] == N_DEV


def test_second_run_reuses_the_cache_without_the_encoder(
    random_run: Run, shapes: Shapes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Same cache, table format this time (image ids are the file names, so the features match),
    Word2Vec-initialised embedding, 2 epochs; the encoder may not even be built."""
    parts_before = sorted(p.name for p in random_run.cache.rglob("*.npz"))
    forbid_encoder(monkeypatch)
    model = tmp_path / "model"
    run_training(
        [
            "--table",
            str(shapes.train_table),
            "--dev-table",
            str(shapes.dev_table),
            "--encoder",
            "mobilenet_v3_small",
            "--image-size",
            "64",
            "--encoder-weights",
            "none",
            "--cache-dir",
            str(random_run.cache),
            "--output",
            str(model),
            "--epochs",
            "2",
            "--embedding",
            "word2vec",
            "--bleu-sample",
            "20",
            *SMALL_DECODER,
        ]
    )
    t = config_of(model)["training"]
    train, dev = t["data"]["skipped"]["train"], t["data"]["skipped"]["dev"]
    assert (train["cached"], train["encoded"], dev["cached"], dev["encoded"]) == (N_TRAIN, 0, N_DEV, 0)
    # The bad images are tried again (no features are cached for them) and reported again.
    assert (train["missing"], train["undecodable"]) == (1, 1)
    assert t["data"]["source"] == str(shapes.train_table)
    assert t["data"]["train_images"] == N_TRAIN and t["data"]["dev_images"] == N_DEV
    assert t["embedding"]["source"] == "word2vec" and t["embedding"]["coverage"] == 1.0
    assert t["epochs_run"] == 2
    assert sorted(p.name for p in random_run.cache.rglob("*.npz")) == parts_before


@pytest.mark.slow
def test_training_beats_a_shuffled_caption_baseline(xception_run: Run, shapes: Shapes):
    """Dev BLEU of the trained model against each dev image getting a random training caption.

    BLEU-4 is meaningful here: every caption has 4 to 6 words, so hypotheses have 4-grams
    (the recorded scores are checked to be well above nltk's 1e-154 'no match' floor)."""
    greedy = xception_run.summary["dev_bleu"]["greedy(max_len=7)"]
    beam = xception_run.summary["dev_bleu"]["beam(k=3,alpha=0.7,max_len=7)"]
    rng = np.random.default_rng(0)
    train_caps = [shapes.captions[name] for name in shapes.train if name not in (CORRUPT, MISSING)]
    refs = [[bleu_tokens(c) for c in shapes.captions[name]] for name in shapes.dev]
    baselines = []
    for _ in range(10):
        hyps = [bleu_tokens(train_caps[i][rng.integers(3)]) for i in rng.integers(len(train_caps), size=N_DEV)]
        baselines.append(corpus_bleu_scores(hyps, refs))
    best_baseline = {k: max(b[k] for b in baselines) for k in baselines[0]}
    margins = {"bleu1": 0.2, "bleu2": 0.25, "bleu3": 0.3, "bleu4": 0.3}
    for name, margin in margins.items():
        for scores in (greedy, beam):
            assert scores[name] >= best_baseline[name] + margin, (name, scores, best_baseline)
    assert greedy["bleu4"] > 0.4
    assert xception_run.summary["seconds"]["fit"] < 60  # seconds, not minutes (about 5 s unloaded)
    assert xception_run.summary["data"]["skipped"]["train"]["undecodable"] == 1


@pytest.mark.slow
def test_trained_artifact_captions_new_drawings(xception_run: Run, xception_weights: Path):
    """The exported artifact, encoder included, names colour and kind of freshly drawn shapes."""
    model = load_caption_model(str(xception_run.model), encoder_weights=str(xception_weights))
    rng = np.random.default_rng(123)
    labels = [(c, k, s) for c in COLOURS for k in KINDS for s in SIZES]
    images = np.stack(
        [np.asarray(draw_shape(k, c, s, rng).resize(model.image_size, Image.BILINEAR)) for c, k, s in labels]
    )
    _, results = model.caption_images(images)
    # Colour and kind both right: 1 in 12 by chance; about 3 in 4 here (colours are the harder part).
    right = [c in r.tokens and k in r.tokens for (c, k, _), r in zip(labels, results)]
    assert sum(right) >= len(labels) // 2, [(label, r.caption) for label, r in zip(labels, results)]


@pytest.mark.parametrize("which", ["random_run", pytest.param("xception_run", marks=pytest.mark.slow)])
def test_our_bleu_equals_nltk_corpus_bleu_on_generated_captions(
    which: str, shapes: Shapes, request: pytest.FixtureRequest
):
    run: Run = request.getfixturevalue(which)
    contents = read_artifact(str(run.model))
    step = build_decoder(contents).step_model()
    enc = contents.config.encoder
    items, feats = dev_features(run, shapes, enc.name, contents.encoder_weights, enc.image_size[0])
    refs = [[bleu_tokens(c) for c in item.captions] for item in items]
    for settings in (contents.decode_settings(method="greedy"), contents.decode_settings(method="beam")):
        hyps = training_train_generate(step, contents.vocab, feats, settings)
        assert any(hyps), "the model generated only empty captions"
        ours = training_evaluate.bleu_on(step, contents.vocab, items, feats, settings)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nltk warns about zero n-gram matches
            theirs = {k: nltk_corpus_bleu(refs, hyps, weights=w) for k, w in NLTK_WEIGHTS.items()}
        assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-300)
        assert corpus_bleu_scores(hyps, refs) == ours
        # The artifact recorded the same numbers at the end of training.
        assert run.summary["dev_bleu"][settings.describe()] == pytest.approx(ours, rel=1e-9)


def test_evaluation_captions_come_from_the_model_core_caption_path(random_run: Run, shapes: Shapes):
    """training.evaluate captions through the same features -> captions path as CaptionModel."""
    contents = read_artifact(str(random_run.model))
    model = load_caption_model(str(random_run.model), with_encoder=False)
    enc = contents.config.encoder
    items, feats = dev_features(random_run, shapes, enc.name, contents.encoder_weights, enc.image_size[0])
    for settings in (contents.decode_settings(method="greedy"), contents.decode_settings()):
        expected = [list(r.tokens) for r in model.caption_features(feats, settings)]
        assert (
            training_evaluate.generate_captions(model.step_model, contents.vocab, feats, settings, batch_size=3)
            == expected
        )


def training_train_generate(step, vocab: Vocabulary, feats: np.ndarray, settings: DecodeSettings) -> list[list[str]]:
    return [bleu_tokens(h) for h in training_evaluate.generate_captions(step, vocab, feats, settings)]


def test_evaluate_cli_prints_greedy_and_beam_bleu(
    random_run: Run, shapes: Shapes, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    forbid_encoder(monkeypatch)  # dev features are all cached
    out_json = tmp_path / "scores.json"
    assert (
        training_evaluate.main(
            [
                "--model",
                str(random_run.model),
                "--flickr8k",
                str(shapes.root),
                "--split",
                "dev",
                "--cache-dir",
                str(random_run.cache),
                "--no-progress",
                "--output-json",
                str(out_json),
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out_json.read_text())
    assert printed["images"] == N_DEV and printed["split"] == "dev"
    assert printed["model_id"] == read_artifact(str(random_run.model)).model_id
    greedy, beam = printed["greedy(max_len=7)"], printed["beam(k=3,alpha=0.7,max_len=7)"]
    assert set(greedy) == set(beam) == SCORE_KEYS | FINDABILITY_KEYS
    assert {k: greedy[k] for k in SCORE_KEYS} == pytest.approx(
        random_run.summary["dev_metrics"]["greedy(max_len=7)"], rel=1e-9
    )
    assert set(printed["human_anchor"]) == FINDABILITY_KEYS and printed["human_anchor"]["distinct_share"] > 0
    assert 0 <= greedy["r_at_1"] <= greedy["r_at_5"] <= greedy["r_at_10"] <= 1

    assert (
        training_evaluate.main(
            [
                "--model",
                str(random_run.model),
                "--flickr8k",
                str(shapes.root),
                "--split",
                "dev",
                "--cache-dir",
                str(random_run.cache),
                "--no-progress",
                "--decode",
                "beam",
                "--mmi-lambda",
                "0.5",
                "--mmi-prior",
                "ngram",
            ]
        )
        == 0
    )
    mmi = json.loads(capsys.readouterr().out)
    assert set(mmi["beam(k=3,alpha=0.7,mmi=0.5,max_len=7)"]) == SCORE_KEYS | FINDABILITY_KEYS
    # The decoder prior averages cached training features (the encoder is forbidden above; the
    # first 8 training images include the corrupt and the missing one, skipped without it).
    assert (
        training_evaluate.main(
            [
                "--model",
                str(random_run.model),
                "--flickr8k",
                str(shapes.root),
                "--split",
                "dev",
                "--cache-dir",
                str(random_run.cache),
                "--no-progress",
                "--decode",
                "beam",
                "--mmi-lambda",
                "0.3",
                "--mmi-prior",
                "decoder",
                "--prior-images",
                "8",
            ]
        )
        == 0
    )
    assert "beam(k=3,alpha=0.7,mmi=0.3,max_len=7)" in json.loads(capsys.readouterr().out)
    assert (
        training_evaluate.main(
            [
                "--model",
                str(random_run.model),
                "--flickr8k",
                str(shapes.root),
                "--split",
                "dev",
                "--cache-dir",
                str(random_run.cache),
                "--no-progress",
                "--decode",
                "beam",
                "--mmi-lambda",
                "0.3",
                "--mmi-prior",
                "unigram",
                "--mmi-mode",
                "step",
            ]
        )
        == 0
    )
    assert "beam(k=3,alpha=0.7,mmi_step=0.3,max_len=7)" in json.loads(capsys.readouterr().out)

    assert (
        training_evaluate.main(
            [
                "--model",
                str(random_run.model),
                "--table",
                str(shapes.dev_table),
                "--split",
                "dev",
                "--cache-dir",
                str(random_run.cache),
                "--no-progress",
                "--decode",
                "greedy",
                "--limit",
                "10",
            ]
        )
        == 0
    )
    limited = json.loads(capsys.readouterr().out)
    assert limited["images"] == 10 and list(k for k in limited if k.startswith("beam")) == []
    assert set(limited["greedy(max_len=7)"]) == SCORE_KEYS | FINDABILITY_KEYS - {"novel_share"}  # no train split


SCORE_KEYS = {"bleu1", "bleu2", "bleu3", "bleu4", "cider_d", "rouge_l"}
FINDABILITY_KEYS = {
    "distinct_share",
    "distinct_captions",
    "words",
    "novel_share",
    "r_at_1",
    "r_at_5",
    "r_at_10",
    "mrr",
    "median_rank",
    "queries",
}


# --------------------------------------------------------------------------- feature cache


def fake_items(shapes: Shapes) -> list[datasets.CaptionedImage]:
    return datasets.read_flickr8k(str(shapes.root), "train")


class CountingEncoder:
    """Stand-in encoder: mean colour of the image; counts calls and images; can fail on a call."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.calls = 0
        self.images = 0
        self.fail_on_call = fail_on_call

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise KeyboardInterrupt("simulated interruption")
        self.images += len(images)
        return images.reshape(len(images), -1, 3).mean(axis=1).astype(np.float32)


def test_interrupted_extraction_resumes_with_the_remaining_images(shapes: Shapes, tmp_path: Path):
    items = fake_items(shapes)
    key = features.feature_cache_key("fake", (32, 32), "none")
    first = CountingEncoder(fail_on_call=4)
    with pytest.raises(KeyboardInterrupt):
        features.extract_features(
            items,
            first,
            (32, 32),
            features.FeatureCache(str(tmp_path), key),
            batch_size=10,
            chunk_size=10,
            progress=False,
        )
    assert first.images == 30  # three batches encoded and persisted before the fourth failed

    cache = features.FeatureCache(str(tmp_path), key)  # a new process: reads the parts from disk
    assert len(cache) == 30
    second = CountingEncoder()
    report = features.extract_features(items, second, (32, 32), cache, batch_size=10, chunk_size=10, progress=False)
    assert second.images == N_TRAIN - 30 == report.encoded
    assert report.cached == 30
    assert (len(report.missing), len(report.undecodable)) == (1, 1)
    reloaded = features.FeatureCache(str(tmp_path), key)
    valid = [it.image_id for it in items if it.image_id not in (CORRUPT, MISSING)]
    assert len(reloaded) == N_TRAIN and all(i in reloaded for i in valid)
    expected = decode_image((shapes.root / "images" / valid[-1]).read_bytes(), (32, 32)).pixels
    np.testing.assert_allclose(reloaded.get(valid[-1]), expected.reshape(-1, 3).mean(0), rtol=1e-6)

    third = CountingEncoder()
    report = features.extract_features(items, third, (32, 32), reloaded, batch_size=10, progress=False)
    assert third.calls == 0 and report.encoded == 0 and report.cached == N_TRAIN


def test_a_write_cut_short_never_corrupts_the_cache(shapes: Shapes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A process killed while writing a part leaves a partial file; loading must ignore it."""
    items = fake_items(shapes)[:25]
    key = features.feature_cache_key("fake", (32, 32), "none")
    real_savez = np.savez
    writes = []

    def savez_then_die(file, **arrays):
        writes.append(file)
        if len(writes) < 2:
            return real_savez(file, **arrays)
        buffer = io.BytesIO()
        real_savez(buffer, **arrays)
        with open(file, "wb") as f:
            f.write(buffer.getvalue()[:100])
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(features.np, "savez", savez_then_die)
    with pytest.raises(KeyboardInterrupt):
        features.extract_features(
            items,
            CountingEncoder(),
            (32, 32),
            features.FeatureCache(str(tmp_path), key),
            batch_size=10,
            chunk_size=10,
            progress=False,
        )
    monkeypatch.undo()
    cache = features.FeatureCache(str(tmp_path), key)
    assert len(cache) == 10
    encoder = CountingEncoder()
    features.extract_features(items, encoder, (32, 32), cache, batch_size=10, chunk_size=10, progress=False)
    assert encoder.images == 13  # 25 items, 2 of them bad, 10 already cached
    assert len(features.FeatureCache(str(tmp_path), key)) == 23


def test_feature_cache_key_separates_encoders():
    a = features.feature_cache_key("xception", (299, 299), "abc")
    assert a == features.feature_cache_key("xception", (299, 299), "abc")
    assert (
        len(
            {
                a,
                features.feature_cache_key("xception", (96, 96), "abc"),
                features.feature_cache_key("xception", (299, 299), "abd"),
                features.feature_cache_key("resnet50", (299, 299), "abc"),
            }
        )
        == 4
    )


# --------------------------------------------------------------------------- datasets


def test_parse_token_file():
    text = "a.jpg#0\tA dog runs .\n\na.jpg#1\ta dog\twith a tab\nb#c.jpg#0\tsomething\n"
    parsed = flickr8k.parse_token_file(text)
    assert list(parsed) == ["a.jpg", "b#c.jpg"]
    assert parsed["a.jpg"] == ["A dog runs .", "a dog\twith a tab"]
    with pytest.raises(ValueError, match="line 2 has no tab"):
        flickr8k.parse_token_file("a.jpg#0\tok\nb.jpg#0 no tab here\n")
    assert flickr8k.parse_split_file(" a.jpg \n\nb.jpg\n") == ["a.jpg", "b.jpg"]


def test_read_flickr8k_splits(shapes: Shapes, tmp_path: Path):
    train = datasets.read_flickr8k(str(shapes.root), "train")
    assert [it.image_id for it in train] == shapes.train
    assert train[0].uri == str(shapes.root / "images" / shapes.train[0])
    assert train[0].captions == shapes.captions[shapes.train[0]]
    assert len(datasets.read_flickr8k(str(shapes.root), None)) == len(shapes.captions)
    with pytest.raises(ValueError, match="unknown split"):
        datasets.read_flickr8k(str(shapes.root), "validation")

    root = tmp_path / "broken"
    root.mkdir()
    (root / flickr8k.TOKEN_FILE).write_text("a.jpg#0\ta dog\n")
    (root / flickr8k.SPLIT_FILES["train"]).write_text("a.jpg\nb.jpg\n")
    with pytest.raises(ValueError, match="b.jpg is listed in the train split but has no captions"):
        datasets.read_flickr8k(str(root), "train")


def test_caption_tables_group_rows_and_resolve_relative_paths(shapes: Shapes, tmp_path: Path):
    train = datasets.read_caption_table(str(shapes.train_table))
    assert [it.image_id for it in train] == shapes.train
    assert all(len(it.captions) == 3 for it in train)
    assert train[0].captions == shapes.captions[shapes.train[0]]
    assert Path(train[0].uri).resolve() == (shapes.root / "images" / shapes.train[0]).resolve()
    dev = datasets.read_caption_table(str(shapes.dev_table))
    assert [it.image_id for it in dev] == shapes.dev

    folder = tmp_path / "tables"
    folder.mkdir()
    table = folder / "t.csv"
    table.write_text(
        "path,text,key\n"
        "imgs/x.jpg,first caption,k1\n"
        f"{tmp_path}/abs/y.jpg,other image,k2\n"
        "imgs/x.jpg,second caption,k1\n"
        "imgs/x.jpg,,k1\n"
        ",orphan caption,k3\n"
    )
    rows = datasets.read_caption_table(str(table), "path", "text")
    assert [(it.image_id, it.uri, it.captions) for it in rows] == [
        ("x.jpg", f"{folder}/imgs/x.jpg", ("first caption", "second caption")),
        ("y.jpg", f"{tmp_path}/abs/y.jpg", ("other image",)),
    ]
    keyed = datasets.read_caption_table(str(table), "path", "text", id_column="key", base_dir="/data")
    assert [(it.image_id, it.uri) for it in keyed] == [("k1", "/data/imgs/x.jpg"), ("k2", f"{tmp_path}/abs/y.jpg")]
    with pytest.raises(ValueError, match=r"no column\(s\) \['image', 'caption'\]"):
        datasets.read_caption_table(str(table))
    (folder / "t.xlsx").write_bytes(b"PK")
    with pytest.raises(ValueError, match="unsupported table format"):
        datasets.read_caption_table(str(folder / "t.xlsx"))


# --------------------------------------------------------------------------- embeddings


def shape_sentences(shapes: Shapes) -> list[list[str]]:
    from model.text import clean_tokens

    return [clean_tokens(c) for name in shapes.train for c in shapes.captions[name]]


def test_word2vec_gives_vectors_for_frequent_words(shapes: Shapes):
    sentences = shape_sentences(shapes)
    vectors = embeddings.train_word2vec(sentences, dim=16, seed=0, epochs=5)
    for word in ("a", "red", "circle", "small", "shape"):
        assert vectors[word].shape == (16,) and vectors[word].dtype == np.float32
        assert np.all(np.isfinite(vectors[word])) and np.linalg.norm(vectors[word]) > 0
    assert set(vectors) == {w for s in sentences for w in s}
    again = embeddings.train_word2vec(sentences, dim=16, seed=0, epochs=5)
    assert all(np.array_equal(vectors[w], again[w]) for w in vectors)  # one worker: reproducible


def test_text_vectors_file_and_embedding_matrix(tmp_path: Path):
    path = tmp_path / "vectors.txt"
    path.write_text("4 3\ndog 0.1 0.2 0.3\ncat -1 0 1\nruns 0.5 0.5 0.5\nzebra 9 9 9\n")
    everything = embeddings.load_text_vectors(str(path))
    assert set(everything) == {"dog", "cat", "runs", "zebra"}
    np.testing.assert_array_equal(everything["cat"], np.array([-1, 0, 1], np.float32))
    vocab = Vocabulary.build(["a dog runs", "a dog sits", "the bird"], min_count=1)
    kept = embeddings.load_text_vectors(str(path), vocab)
    assert set(kept) == {"dog", "runs"}  # only vocabulary words are kept

    glove = tmp_path / "glove.txt"
    glove.write_text("dog 1 2\nbird 3 4\n")  # no header
    assert set(embeddings.load_text_vectors(str(glove))) == {"dog", "bird"}
    bad = tmp_path / "bad.txt"
    bad.write_text("dog 1 2\nbird 3\n")
    with pytest.raises(ValueError, match="line 2: 1 values, expected 2"):
        embeddings.load_text_vectors(str(bad))
    with pytest.raises(ValueError, match="no usable word vectors"):
        embeddings.load_text_vectors(str(glove), Vocabulary.build(["cat"], min_count=1))

    matrix, coverage = embeddings.embedding_matrix(vocab, kept, 3, seed=0)
    words = [w for w in vocab.tokens if not w.startswith("<")]  # a dog runs sits the bird
    assert coverage == pytest.approx(2 / len(words))
    assert matrix.shape == (len(vocab), 3) and matrix.dtype == np.float32
    assert not matrix[vocab.pad_id].any()
    np.testing.assert_array_equal(matrix[vocab.id_of("dog")], kept["dog"])
    np.testing.assert_array_equal(matrix[vocab.id_of("runs")], kept["runs"])
    assert np.linalg.norm(matrix[vocab.id_of("bird")]) > 0 and np.linalg.norm(matrix[vocab.start_id]) > 0
    with pytest.raises(ValueError, match="embedding_dim is 5"):
        embeddings.embedding_matrix(vocab, kept, 5)


def test_training_with_a_text_vectors_file(
    random_run: Run, shapes: Shapes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """--embedding PATH: a word2vec text file covering some words initialises the embedding."""
    forbid_encoder(monkeypatch)
    vectors = embeddings.train_word2vec(shape_sentences(shapes), dim=32, seed=0, epochs=2)
    path = tmp_path / "vectors.txt"
    covered = ["red", "green", "blue", "yellow", "circle", "square", "triangle"]
    with open(path, "w") as f:
        f.write(f"{len(covered)} 32\n")
        for word in covered:
            f.write(word + " " + " ".join(f"{x:.6f}" for x in vectors[word]) + "\n")
    model = tmp_path / "model"
    run_training(
        [
            "--flickr8k",
            str(shapes.root),
            "--encoder",
            "mobilenet_v3_small",
            "--image-size",
            "64",
            "--encoder-weights",
            "none",
            "--cache-dir",
            str(random_run.cache),
            "--output",
            str(model),
            "--epochs",
            "1",
            "--bleu-sample",
            "0",
            "--embedding",
            str(path),
            *SMALL_DECODER,
        ]
    )
    t = config_of(model)["training"]
    vocab_words = len(read_artifact(str(model)).vocab) - 4
    assert t["embedding"] == {"source": str(path), "coverage": round(len(covered) / vocab_words, 4)}
    assert "dev_bleu1" not in t["history"]  # --bleu-sample 0 turns the per-epoch sample off
    assert not math.isnan(t["best_dev_loss"])


# --------------------------------------------------------------------------- ensembles, tuning, resume


def _small_training_args(shapes: Shapes, tmp_path: Path) -> list[str]:
    """A quick training run on the shapes data set sharing one cache and work folder."""
    return [
        "--flickr8k",
        str(shapes.root),
        "--encoder",
        "mobilenet_v3_small",
        "--image-size",
        "64",
        "--encoder-weights",
        "none",
        "--artifact-encoder-weights",
        "none",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--work-dir",
        str(tmp_path / "work"),
        "--epochs",
        "2",
        "--learning-rate",
        "0.01",
        "--bleu-sample",
        "10",
        *SMALL_DECODER,
    ]


def test_ensemble_training_tunes_decoding_and_reuses_finished_members(
    shapes: Shapes, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    common = _small_training_args(shapes, tmp_path)
    run_training([*common, "--output", str(tmp_path / "one")])
    with caplog.at_level("INFO", logger="training"):
        run_training(
            [
                *common,
                "--ensemble",
                "2",
                "--tune-decoding",
                "--tune-widths",
                "1",
                "2",
                "--tune-alphas",
                "0.0",
                "0.9",
                "--output",
                str(tmp_path / "two"),
            ]
        )
    assert "already trained" in caplog.text  # member 1 came from the first run, only member 2 was fitted
    one, two = config_of(tmp_path / "one"), config_of(tmp_path / "two")
    assert two["ensemble"]["members"] == ["decoder.weights.h5", "decoder-2.weights.h5"]
    assert (tmp_path / "one" / "decoder.weights.h5").read_bytes() == (
        tmp_path / "two" / "decoder.weights.h5"
    ).read_bytes()
    t = two["training"]
    assert [m["seed"] for m in t["members"]] == [0, 1] and t["hyperparameters"]["ensemble"] == 2
    grid = t["decoding_tuning"]["grid"]
    assert [(g["beam_width"], g["length_alpha"]) for g in grid] == [(1, 0.0), (2, 0.0), (2, 0.9)]
    best = max(grid, key=lambda g: g["bleu1"] + g["bleu4"])
    assert two["decoding"] == {"method": "beam", "beam_width": best["beam_width"], "length_alpha": best["length_alpha"]}
    assert t["decoding_tuning"]["chosen"] == best["decode"]
    chosen = t["dev_metrics"][best["decode"]]
    assert {k: chosen[k] for k in ("bleu1", "bleu4", "cider_d", "rouge_l")} == pytest.approx(
        {k: best[k] for k in ("bleu1", "bleu4", "cider_d", "rouge_l")}, rel=1e-9
    )
    assert one["format"] == "image-caption-model/1" and two["format"] == "image-caption-model/2"
    model = load_caption_model(str(tmp_path / "two"))
    assert model.step_model.members == 2


def test_scst_continues_the_cross_entropy_members_and_is_recorded(
    shapes: Shapes, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    common = _small_training_args(shapes, tmp_path)
    run_training([*common, "--output", str(tmp_path / "ce")])
    scst = [
        "--scst-epochs",
        "1",
        "--scst-samples",
        "2",
        "--scst-batch-images",
        "8",
        "--scst-learning-rate",
        "0.01",
        "--scst-beam-width",
        "2",
    ]
    with caplog.at_level("INFO", logger="training"):
        run_training([*common, *scst, "--output", str(tmp_path / "scst")])
    assert "already trained" in caplog.text  # the cross-entropy member was reused, not refitted
    t = config_of(tmp_path / "scst")["training"]
    assert "--scst-epochs 1" in t["command"]
    assert t["scst"]["settings"] == {
        "epochs": 1,
        "learning_rate": 0.01,
        "samples": 2,
        "batch_images": 8,
        "baseline": "mean",
        "select": "bleu4",
        "beam_width": 2,
        "length_alpha": 0.5,
        "seed": 0,
        "discriminability": 0.0,
        "findability_pool": 0,
    }
    (member,) = t["scst"]["members"]
    assert [h["epoch"] for h in member["history"]] == [0, 1] and member["history"][1]["reward"] >= 0
    assert t["seconds"]["scst_members"] == [member["seconds"]]
    assert len(list((tmp_path / "work" / "member-1").glob("scst-*/state.json"))) == 1
    same = (tmp_path / "ce" / "decoder.weights.h5").read_bytes() == (
        tmp_path / "scst" / "decoder.weights.h5"
    ).read_bytes()
    assert same == (member["best_epoch"] == 0)  # the artifact holds the epoch chosen on dev
    assert config_of(tmp_path / "ce")["training"]["scst"] is None
