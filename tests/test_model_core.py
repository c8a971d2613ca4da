"""Decoder formulations, encoder, and the verified model artifact (real Keras, small sizes)."""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from model import storage
from model.artifact import CONFIG, DECODER_WEIGHTS, MANIFEST, VOCAB, ArtifactError, compute_model_id, read_artifact
from model.artifact_config import DecoderConfig
from model.caption_search import DecodeSettings, beam_search, greedy_decode
from model.captioner import load_caption_model
from model.encoder import EncoderError, ImageEncoder, choose_runtime
from model.lstm_decoder import MergeDecoder, build_prefix_model, copy_weights

CFG = DecoderConfig(
    vocab_size=40, max_length=9, feature_dim=24, embedding_dim=12, units=16, image_dense=(32, 16), dropout=0.5
)


def test_decoder_shapes_and_parameter_count():
    dec = MergeDecoder(CFG)
    out = dec.training_model([np.zeros((3, 24), np.float32), np.ones((3, 7), np.int32)])
    assert tuple(out.shape) == (3, 7, 40)
    c = CFG
    expected = (24 * 32 + 32) + (32 * 16 + 16)  # image dense layers
    expected += c.vocab_size * c.embedding_dim  # embedding
    expected += 4 * c.units * (c.embedding_dim + c.units + 1)  # LSTM
    expected += c.units * c.units + c.units + c.units * c.vocab_size + c.vocab_size
    assert dec.count_params() == expected
    # Default (seed) sizes: Xception features -> 256-d, 256-unit LSTM.
    default = MergeDecoder(DecoderConfig(vocab_size=2000, max_length=34))
    assert default.count_params() == (2048 * 256 + 256) + 2000 * 256 + 4 * 256 * 513 + 256 * 257 + 256 * 2000 + 2000


def test_config_validation():
    with pytest.raises(ValueError, match="image_dense"):
        DecoderConfig(vocab_size=40, max_length=9, units=16, image_dense=(32,))
    with pytest.raises(ValueError, match="unknown"):
        DecoderConfig.from_dict({**CFG.to_dict(), "extra": 1})
    assert DecoderConfig.from_dict(CFG.to_dict()) == CFG


def test_per_prefix_and_whole_caption_formulations_agree():
    keras.utils.set_random_seed(1)
    dec = MergeDecoder(CFG)
    prefix_model = build_prefix_model(CFG)
    copy_weights(dec.training_model, prefix_model)
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(4, 24)).astype(np.float32)
    captions = rng.integers(4, 40, size=(4, 8)).astype(np.int32)
    captions[:, 0] = 1
    captions[2, 5:] = 0  # a shorter caption, padded
    whole = dec.training_model([feats, captions], training=False).numpy()
    step = dec.step_model()
    state = step.initial_state(feats)
    for t in range(5):
        prefix = np.zeros((4, CFG.max_length), np.int32)  # pre-padded, as the tutorials do
        prefix[:, CFG.max_length - t - 1 :] = captions[:, : t + 1]
        per_prefix = prefix_model([feats, prefix], training=False).numpy()
        np.testing.assert_allclose(per_prefix, whole[:, t], atol=1e-5)
        logp, state = step.step(captions[:, t], state)
        np.testing.assert_allclose(np.exp(logp), whole[:, t], atol=1e-5)


def test_greedy_equals_beam_one_on_real_decoder():
    keras.utils.set_random_seed(2)
    step = MergeDecoder(CFG).step_model()
    feats = np.random.default_rng(1).normal(size=(6, 24)).astype(np.float32) * 3
    g = greedy_decode(step, feats, 1, 2, CFG.max_length)
    b = beam_search(step, feats, 1, 2, CFG.max_length, beam_width=1)
    assert [h.token_ids for h in g] == [h.token_ids for h in b]
    np.testing.assert_allclose([h.logprob for h in g], [h.logprob for h in b], rtol=1e-5)


def test_xception_encoder_with_real_imagenet_weights(xception_weights):
    enc = ImageEncoder("xception", str(xception_weights))
    assert enc.image_size == (299, 299) and enc.feature_dim == 2048
    assert enc.model.count_params() == 20_861_480
    images = np.random.default_rng(0).integers(0, 255, (2, 299, 299, 3), dtype=np.uint8)
    feats = enc(images)
    assert feats.shape == (2, 2048) and feats.dtype == np.float32
    assert (feats >= 0).all() and feats.std() > 0  # pooled ReLU activations
    np.testing.assert_allclose(enc(images[:1]), feats[:1], rtol=1e-4, atol=1e-5)


def test_openvino_and_tensorflow_runtimes_give_the_same_features():
    images = np.random.default_rng(1).integers(0, 255, (3, 96, 96, 3), dtype=np.uint8)
    feats = {
        rt: ImageEncoder("mobilenet_v3_small", None, (96, 96), runtime=rt)(images) for rt in ("openvino", "tensorflow")
    }
    assert feats["openvino"].shape == (3, 576) and feats["openvino"].dtype == np.float32
    np.testing.assert_allclose(feats["openvino"], feats["tensorflow"], rtol=1e-3, atol=1e-4)


def test_auto_runtime_is_openvino_on_cpus():
    import tensorflow as tf

    expected = "tensorflow" if tf.config.list_physical_devices("GPU") else "openvino"
    assert choose_runtime("auto") == expected
    assert choose_runtime("tensorflow") == "tensorflow"
    with pytest.raises(EncoderError, match="runtime must be one of"):
        choose_runtime("onnx")


def test_encoder_refusals(tmp_path):
    with pytest.raises(EncoderError, match="unknown encoder"):
        ImageEncoder("vgg99", None)
    with pytest.raises(EncoderError, match="not found"):
        ImageEncoder("xception", str(tmp_path / "nope.h5"))
    fake = tmp_path / "weights.h5"
    fake.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(EncoderError, match="not HDF5"):
        ImageEncoder("xception", str(fake))
    with pytest.raises(EncoderError, match="at least"):
        ImageEncoder("xception", None, (32, 32))
    with pytest.raises(EncoderError, match="precision must be"):
        ImageEncoder("mobilenet_v3_small", None, (64, 64), precision="float16")


def _images(n: int, size: int = 64) -> np.ndarray:
    return np.random.default_rng(5).integers(0, 255, (n, size, size, 3), dtype=np.uint8)


def test_artifact_round_trip_gives_identical_captions(tiny_artifact, tmp_path):
    model = load_caption_model(tiny_artifact)
    assert model.image_size == (64, 64)
    images = _images(5)
    feats, results = model.caption_images(images)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_artifact, copy)
    again = load_caption_model(str(copy))
    assert again.model_id == model.model_id
    _, results2 = again.caption_images(images)
    assert results == results2
    for r in results:
        assert r.score <= 0 and r.caption == " ".join(r.tokens)
    greedy = model.caption_features(feats, DecodeSettings("greedy", max_length=12))
    assert len(greedy) == 5


def test_model_id_is_the_content_hash(tiny_artifact):
    manifest = json.loads(Path(tiny_artifact, MANIFEST).read_text())
    hashes = {n: storage.sha256_hex(Path(tiny_artifact, n).read_bytes()) for n in manifest["files"]}
    assert compute_model_id(hashes) == manifest["model_id"] == read_artifact(tiny_artifact).model_id


@pytest.fixture()
def damaged(tiny_artifact, tmp_path) -> Path:
    path = tmp_path / "damaged"
    shutil.copytree(tiny_artifact, path)
    return path


def _resign(path: Path) -> None:
    """Rewrite the manifest to match the (tampered) files, as an attacker could."""
    manifest = json.loads((path / MANIFEST).read_text())
    for name in manifest["files"]:
        data = (path / name).read_bytes()
        manifest["files"][name] = {"sha256": storage.sha256_hex(data), "bytes": len(data)}
    manifest["model_id"] = compute_model_id({n: m["sha256"] for n, m in manifest["files"].items()})
    (path / MANIFEST).write_text(json.dumps(manifest))


def test_missing_vocab_is_named(damaged):
    (damaged / VOCAB).unlink()
    with pytest.raises(ArtifactError, match="vocab.json is missing"):
        read_artifact(str(damaged))


def test_missing_manifest_is_named(damaged):
    (damaged / MANIFEST).unlink()
    with pytest.raises(ArtifactError, match="manifest.json is missing"):
        read_artifact(str(damaged))


def test_truncated_weights_are_named(damaged):
    data = (damaged / DECODER_WEIGHTS).read_bytes()
    (damaged / DECODER_WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="decoder.weights.h5 .*truncated"):
        read_artifact(str(damaged))


def test_tampered_file_fails_hash(damaged):
    data = bytearray((damaged / DECODER_WEIGHTS).read_bytes())
    data[-100] ^= 0xFF
    (damaged / DECODER_WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="SHA-256"):
        read_artifact(str(damaged))


def test_expected_model_id_mismatch(tiny_artifact):
    with pytest.raises(ArtifactError, match="expected 0000"):
        read_artifact(tiny_artifact, expected_model_id="0000000000000000")


def test_config_of_another_vocabulary_size(damaged):
    config = json.loads((damaged / CONFIG).read_text())
    config["decoder"]["vocab_size"] += 7
    (damaged / CONFIG).write_text(json.dumps(config))
    _resign(damaged)
    with pytest.raises(ArtifactError, match="vocab_size=.* but vocab.json has"):
        read_artifact(str(damaged))


def test_corrupt_json_is_named(damaged):
    (damaged / CONFIG).write_text("{ not json")
    _resign(damaged)
    with pytest.raises(ArtifactError, match="config.json .* not valid JSON"):
        read_artifact(str(damaged))


def test_cached_openvino_step_graphs_need_no_keras_decoders(tiny_artifact, tmp_path, monkeypatch):
    import model.captioner as captioner

    built = []
    real_build = captioner.build_decoders
    monkeypatch.setattr(captioner, "build_decoders", lambda contents: built.append(1) or real_build(contents))
    cache = str(tmp_path / "ov-cache")
    images = _images(3)
    first = load_caption_model(tiny_artifact, runtime="openvino", cache=cache)  # cache miss: traced
    assert len(built) == 1
    again = load_caption_model(tiny_artifact, runtime="openvino", cache=cache)  # cache hit
    assert len(built) == 1
    assert again.caption_images(images)[1] == first.caption_images(images)[1]
    assert len(again.decoders) == 1 and len(built) == 2  # built when asked for
    load_caption_model(tiny_artifact, runtime="tensorflow")  # TensorFlow needs them at load
    assert len(built) == 3


def test_weights_of_another_shape_are_refused(damaged, tmp_path):
    from tests.factories import make_tiny_artifact

    other = tmp_path / "other"
    make_tiny_artifact(str(other), max_length=12, captions=["completely other words here now"] * 2)
    shutil.copy(other / DECODER_WEIGHTS, damaged / DECODER_WEIGHTS)
    _resign(damaged)
    read_artifact(str(damaged))  # hashes fine now, but the arrays do not fit the config
    with pytest.raises(ArtifactError, match="decoder.weights.h5 .* does not fit"):
        load_caption_model(str(damaged))


class _Exploit:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/caption-pickle-executed"),))


def test_pickle_in_place_of_weights_is_refused(damaged):
    marker = Path("/tmp/caption-pickle-executed")
    marker.unlink(missing_ok=True)
    (damaged / DECODER_WEIGHTS).write_bytes(pickle.dumps(_Exploit()))
    (damaged / "model.pkl").write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(ArtifactError, match="SHA-256|bytes"):
        read_artifact(str(damaged))
    _resign(damaged)
    with pytest.raises(ArtifactError, match="not an HDF5"):
        load_caption_model(str(damaged))
    assert not marker.exists()


def test_lambda_layer_model_in_place_of_weights_is_refused(damaged, tmp_path):
    marker = tmp_path / "lambda-ran"

    def touch(x):  # would leave a trace if the loader ever ran it
        marker.touch()
        return x

    inp = keras.Input((3,))
    evil = keras.Model(inp, keras.layers.Lambda(touch)(inp))
    marker.unlink(missing_ok=True)
    evil.save(tmp_path / "evil.keras")  # zip archive holding the Lambda
    shutil.copy(tmp_path / "evil.keras", damaged / DECODER_WEIGHTS)
    _resign(damaged)
    with pytest.raises(ArtifactError, match="not an HDF5"):
        load_caption_model(str(damaged))
    # Legacy HDF5 full-model file with the Lambda: loaded as weights only, never deserialised.
    evil.save(tmp_path / "evil.h5")
    shutil.copy(tmp_path / "evil.h5", damaged / DECODER_WEIGHTS)
    _resign(damaged)
    with pytest.raises(ArtifactError, match="does not fit"):
        load_caption_model(str(damaged))
    assert not marker.exists()


def test_shipped_config_parses_into_dataclasses_and_back_unchanged():
    """config.json is parsed once (model.artifact_config); its blocks write back as they were."""
    from model.artifact_config import ArtifactConfig, EncoderConfig

    raw = json.loads((Path(__file__).parent.parent / "models" / "flickr8k-xception" / "config.json").read_text())
    config = ArtifactConfig.from_dict(raw)
    assert config.encoder.to_dict() == raw["encoder"]
    # an attention artifact keeps each member's kind in its ensemble block, not in "decoder"
    kind = {"kind": raw["ensemble"]["members"][0]["kind"]} if config.is_attention else {}
    assert config.decoder.to_dict() == {**raw["decoder"], **kind}
    assert config.encoder.image_size == (299, 299) and config.encoder.name == "xception"
    d = raw["decoding"]
    no_repeat = ",no_repeat" if d.get("no_repeat") else ""
    assert config.decoding.describe() == (
        f"{d['method']}(k={d['beam_width']},alpha={d['length_alpha']:g}{no_repeat},"
        f"max_len={raw['decoder']['max_length']})"
    )
    greedy = config.decode_settings(method="greedy", beam_width=None).describe()
    assert greedy == ("greedy(no_repeat,max_len=24)" if no_repeat else "greedy(max_len=24)")
    assert EncoderConfig.from_dict(config.encoder.to_dict()) == config.encoder
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.encoder.name = "resnet50"  # type: ignore[misc]
    with pytest.raises(ValueError, match="invalid encoder section"):
        ArtifactConfig.from_dict({**raw, "encoder": {"name": "xception"}})
    with pytest.raises(ValueError, match="invalid decoding section"):
        ArtifactConfig.from_dict({**raw, "decoding": {"method": "sample"}})


def test_artifact_files_reads_every_file_once(tiny_artifact, monkeypatch):
    """The INT8 build copies an artifact through artifact_files: one read per file, verified."""
    from collections import Counter

    from model import artifact, storage

    reads: Counter = Counter()
    real = storage.read_bytes

    def counting(uri, *args, **kwargs):
        reads[uri.rsplit("/", 1)[-1]] += 1
        return real(uri, *args, **kwargs)

    monkeypatch.setattr(storage, "read_bytes", counting)
    files = artifact.artifact_files(tiny_artifact)
    listed = json.loads((Path(tiny_artifact) / MANIFEST).read_text())["files"]
    assert set(files) == set(listed)
    assert reads == Counter({MANIFEST: 1, **{name: 1 for name in listed}})
