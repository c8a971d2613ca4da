"""Attention artifacts (format 3): round trip, what older and newer artifacts do, config fields
that are checked, the export command, and the pipeline captioning real photos with one. Tiny
hand-made decoders (random weights) on a small real encoder: no training here."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from model.artifact import (  # noqa: E402
    CONFIG,
    MANIFEST,
    ArtifactError,
    artifact_files,
    read_artifact,
)
from model.artifact_config import ATTENTION_FORMAT, AttentionConfig, EncoderConfig  # noqa: E402
from model.artifact_writer import save_artifact, with_int8_encoder, write_files
from model.attention_decoder import AttentionDecoder, AttentionStepModel  # noqa: E402
from model.caption_search import DecodeSettings, decode_batch  # noqa: E402
from model.captioner import build_decoders, build_step_model, load_caption_model  # noqa: E402
from model.vocabulary import Vocabulary  # noqa: E402
from tests.factories import TINY_CAPTIONS  # noqa: E402
from tests.pipeline_helpers import flickr8k_photos, read_rows, run_pipeline  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VOCAB = Vocabulary.build(TINY_CAPTIONS, min_count=1)


def decoders(kinds: tuple[str, ...], seed: int = 0, **sizes) -> list[AttentionDecoder]:
    out = []
    for i, kind in enumerate(kinds):
        keras.utils.set_random_seed(seed + i)
        cfg = dict(
            vocab_size=len(VOCAB),
            max_length=10,
            feature_dim=12,
            regions=4,
            embedding_dim=8,
            units=16,
            attention_dim=8,
            dropout=0.0,
            kind=kind,
        )
        out.append(AttentionDecoder(AttentionConfig(**{**cfg, **sizes})))
    return out


def save(uri: Path, members: list[AttentionDecoder], combine: str = "mean_logprob") -> str:
    return save_artifact(
        str(uri),
        decoder=members,
        vocab=VOCAB,
        encoder=EncoderConfig("mobilenet_v3_small", (32, 32), "none"),
        decoding=DecodeSettings("beam", 2, 0.5, 10),
        combine=combine,
    )


def rewritten(src: Path, dst: Path, change) -> str:
    """A copy of artifact ``src`` with ``change(config)`` applied and a valid manifest (so only
    the config's content can be refused)."""
    files = artifact_files(str(src))
    config = json.loads(files[CONFIG])
    change(config)
    files[CONFIG] = json.dumps(config).encode()
    write_files(str(dst), files)
    return str(dst)


def test_attention_artifact_round_trip(tmp_path: Path):
    members = decoders(("adaptive", "soft"), seed=3)
    save(tmp_path / "a", members, "mean_prob")
    config = json.loads((tmp_path / "a" / CONFIG).read_text())
    assert config["format"] == ATTENTION_FORMAT
    assert config["ensemble"] == {
        "members": [
            {"file": "decoder.weights.h5", "kind": "adaptive"},
            {"file": "decoder-2.weights.h5", "kind": "soft"},
        ],
        "combine": "mean_prob",
    }
    assert "kind" not in config["decoder"]  # the kinds live with the members only
    contents = read_artifact(str(tmp_path / "a"))
    assert contents.config.is_attention and contents.config.encoder_output == "map"
    assert contents.config.member_kinds == ("adaptive", "soft")
    assert [c.kind for c in contents.config.member_configs()] == ["adaptive", "soft"]
    for original, back in zip(members, build_decoders(contents)):
        assert back.config == original.config
        for a, b in zip(original.training_model.get_weights(), back.training_model.get_weights()):
            np.testing.assert_array_equal(a, b)
    maps = np.random.default_rng(0).normal(size=(3, 2, 2, 12)).astype(np.float32)
    settings = contents.decode_settings()
    expected = decode_batch(AttentionStepModel(members, "mean_prob"), maps, VOCAB.start_id, VOCAB.end_id, settings)
    for runtime in ("tensorflow", "openvino"):
        got = decode_batch(
            build_step_model(contents, runtime, cache="none"), maps, VOCAB.start_id, VOCAB.end_id, settings
        )
        assert [h.token_ids for h in got] == [h.token_ids for h in expected]
    model = load_caption_model(str(tmp_path / "a"), with_encoder=False)
    assert [r.caption for r in model.caption_features(maps)] == [
        r.caption for r in model.caption_features(maps.reshape(3, 4, 12))
    ]  # (n, h, w, d) and (n, cells, d) are the same maps


def test_members_of_other_sizes_are_not_written(tmp_path: Path):
    with pytest.raises(ArtifactError, match="share one decoder config"):
        save(tmp_path / "bad", decoders(("soft",)) + decoders(("soft",), units=8))


def test_the_shipped_artifact_is_an_attention_model_with_a_map_int8_encoder():
    """(Format 2, the merge ensembles shipped before, is written and read in tests/test_ensemble.py.)"""
    contents = read_artifact(str(REPO / "models" / "flickr8k-xception"), encoder_weights="none")
    assert contents.config.format == "image-caption-model/3" and contents.config.is_attention
    assert contents.config.encoder_output == "map" and contents.int8_encoder is not None
    assert contents.config.encoder.resize == "bilinear"
    config = json.loads((REPO / "models" / "flickr8k-xception" / "config.json").read_text())
    gate = config["encoder"]["int8"]["quality_gate"]
    assert gate["gate"]["passed"] and gate["decode"] == contents.decode_settings().describe()
    assert contents.decode_settings().no_repeat


def test_newer_or_inconsistent_formats_are_refused_by_name(tmp_path: Path):
    save(tmp_path / "good", decoders(("soft",)))
    newer = tmp_path / "newer"
    shutil.copytree(tmp_path / "good", newer)
    manifest = json.loads((newer / MANIFEST).read_text())
    manifest["format"] = "image-caption-model/4"
    (newer / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="format='image-caption-model/4'.*newer version of this package"):
        read_artifact(str(newer))
    # A format-3 ensemble written as format 2 (a merge ensemble) is refused, not misread.
    with pytest.raises(ArtifactError, match="not image-caption-model/3|invalid"):
        read_artifact(
            rewritten(tmp_path / "good", tmp_path / "as2", lambda c: c.update(format="image-caption-model/2"))
        )
    with pytest.raises(ArtifactError, match="attention member"):
        read_artifact(
            rewritten(tmp_path / "good", tmp_path / "kind", lambda c: c["ensemble"]["members"][0].update(kind="hard"))
        )


def test_preprocessing_and_resize_are_promises_not_decoration(tmp_path: Path):
    save(tmp_path / "good", decoders(("soft",)))
    assert (
        read_artifact(str(tmp_path / "good")).config.encoder.preprocessing
        == "keras.applications.mobilenet_v3.preprocess_input"
    )
    with pytest.raises(ArtifactError, match="preprocessed with 'keras.applications.resnet.preprocess_input'"):
        read_artifact(
            rewritten(
                tmp_path / "good",
                tmp_path / "pre",
                lambda c: c["encoder"].update(preprocessing="keras.applications.resnet.preprocess_input"),
            )
        )
    with pytest.raises(ArtifactError, match="resized with 'nearest'"):
        read_artifact(
            rewritten(tmp_path / "good", tmp_path / "resize", lambda c: c["encoder"].update(resize="nearest"))
        )


def test_an_int8_encoder_of_pooled_features_is_refused_for_an_attention_decoder(tmp_path: Path):
    save(tmp_path / "a", decoders(("soft",)))
    xml = b'<?xml version="1.0"?>\n<net name="fake" version="11"></net>\n'
    block = {"encoder": "mobilenet_v3_small", "image_size": [32, 32]}
    with_int8_encoder(str(tmp_path / "a"), str(tmp_path / "pooled"), xml, b"\0" * 8, block)
    with pytest.raises(ArtifactError, match="outputs the pooled features but its decoder reads the map"):
        read_artifact(str(tmp_path / "pooled"))
    with_int8_encoder(str(tmp_path / "a"), str(tmp_path / "map"), xml, b"\0" * 8, {**block, "output": "map"})
    assert read_artifact(str(tmp_path / "map")).int8_encoder is not None


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["openvino", "tensorflow"])
def test_pipeline_captions_real_photos_with_an_attention_artifact(
    tmp_path: Path, flickr8k: Path, tiny_attention_artifact: str, runtime: str
):
    from model.encoder import ImageEncoder
    from model.image_loading import decode_image

    attention_artifact = tiny_attention_artifact
    images = tmp_path / "images"
    images.mkdir()
    photos = flickr8k_photos(flickr8k, 40, 4)
    for photo in photos:
        (images / photo.name).symlink_to(photo)
    (images / "notes.jpg").write_text("<html>not a photo</html>")
    (images / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    summary = run_pipeline(
        [
            "--input",
            f"{images}/*.jpg",
            "--output",
            str(out),
            "--model",
            attention_artifact,
            "--encoder_runtime",
            runtime,
            "--model_cache_dir",
            str(tmp_path / "cache"),
            "--emit_embeddings",
            "--batch_size",
            "3",
        ]
    )
    assert summary["captioned"] == 4 and summary["failed"] == 2
    captions, errors = read_rows(out, "captions"), read_rows(out, "errors")
    assert sorted(e["error_type"] for e in errors) == ["EmptyFile", "NotAnImage"]
    contents = read_artifact(attention_artifact)
    assert {r["model_id"] for r in captions} == {contents.model_id}
    assert all(r["caption"] and set(r["caption"].split()) <= set(contents.vocab.tokens) for r in captions)
    # The embedding is the pooled vector: the map's global average = the pooled encoder's output.
    pooled = ImageEncoder("mobilenet_v3_small", contents.encoder_weights, (64, 64), runtime=runtime, cache="none")
    by_name = {Path(r["image_uri"]).name: r for r in captions}
    pixels = np.stack([decode_image(p.read_bytes(), (64, 64)).pixels for p in photos])
    expected = pooled(pixels)
    got = np.array([by_name[p.name]["embedding"] for p in photos], np.float32)
    assert got.shape == (4, 576)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)


def work_dir(
    root: Path, kind: str, seed: int, vocab: Vocabulary = VOCAB, best_epoch: int = 2, **sizes
) -> tuple[Path, AttentionDecoder]:
    """A training.train_attention work folder written by hand: config, vocabulary, best weights, state."""
    (decoder,) = decoders((kind,), seed=seed, vocab_size=len(vocab), **sizes)
    folder = root / f"{kind}-{seed}"
    (folder / "member-1").mkdir(parents=True)
    (folder / "attention_config.json").write_text(json.dumps(decoder.config.to_dict()))
    (folder / "vocabulary.json").write_text(json.dumps({"vocabulary": vocab.to_json(), "max_length": 10}))
    decoder.save_weights(str(folder / "member-1" / "best.weights.h5"))
    (folder / "member-1" / "state.json").write_text(json.dumps({"epoch": 4, "best_epoch": best_epoch, "done": True}))
    return folder, decoder


def evaluation(folder: Path, members: list[Path], decode: str, epoch: int = 2, **scores) -> None:
    with open(folder / "evaluations.jsonl", "a") as f:
        f.write(
            json.dumps(
                {"checkpoint": "best", "epoch": epoch, "decode": decode, "members": [str(m) for m in members], **scores}
            )
            + "\n"
        )


def test_export_writes_the_work_folders_decoders_with_the_search_chosen_on_dev(tmp_path: Path):
    from training import export_attention

    soft, soft_decoder = work_dir(tmp_path, "soft", 1)
    adaptive, adaptive_decoder = work_dir(tmp_path, "adaptive", 2)
    evaluation(soft, [soft, adaptive], "beam(k=3,alpha=0.5,max_len=10)", cider_d=0.5, r_at_5=0.1)
    evaluation(soft, [soft, adaptive], "greedy(max_len=10)", cider_d=0.4, r_at_5=0.3)  # best by cider_d+r_at_5
    evaluation(soft, [soft, adaptive], "beam(k=9,alpha=0,max_len=10)", epoch=1, cider_d=9.0, r_at_5=9.0)  # stale
    evaluation(soft, [soft], "beam(k=5,alpha=0,max_len=10)", cider_d=9.0, r_at_5=9.0)  # other members
    evaluation(soft, [soft, adaptive], "beam(k=5,alpha=0,mmi=0.5,max_len=10)", cider_d=9.0, r_at_5=9.0)  # no prior
    out = tmp_path / "model"
    assert (
        export_attention.main(
            [
                "--work-dir",
                str(soft),
                "--ensemble-with",
                str(adaptive),
                "--out",
                str(out),
                "--record-encoder-weights",
                "imagenet",
                "--image-size",
                "299",
            ]
        )
        == 0
    )
    contents = read_artifact(str(out))
    assert contents.config.member_kinds == ("soft", "adaptive")
    assert contents.decode_settings().describe() == "greedy(max_len=10)"
    assert contents.config.training["dev"]["r_at_5"] == 0.3
    assert contents.config.encoder.name == "xception" and contents.config.encoder.weights == "imagenet"
    for original, back in zip([soft_decoder, adaptive_decoder], build_decoders(contents)):
        for a, b in zip(original.training_model.get_weights(), back.training_model.get_weights()):
            np.testing.assert_array_equal(a, b)
    # An explicit search needs no record; a missing record is named.
    assert (
        export_attention.main(["--work-dir", str(adaptive), "--out", str(tmp_path / "m2"), "--decode", "beam:4:0.7"])
        == 0
    )
    assert read_artifact(str(tmp_path / "m2")).decode_settings().describe() == "beam(k=4,alpha=0.7,max_len=10)"
    with pytest.raises(SystemExit, match="no dev evaluation"):
        export_attention.main(["--work-dir", str(adaptive), "--out", str(tmp_path / "m3")])


def test_export_takes_the_scst_epoch_and_its_search_and_refuses_mixed_vocabularies(tmp_path: Path):
    from training import export_attention

    soft, _ = work_dir(tmp_path, "soft", 1)
    scst = soft / "member-1" / "scst-0123456789ab"
    scst.mkdir()
    (tuned,) = decoders(("soft",), seed=7)
    tuned.save_weights(str(scst / "best.weights.h5"))
    (scst / "state.json").write_text(
        json.dumps(
            {
                "done": True,
                "epoch": 2,
                "best_epoch": 1,
                "settings": {"beam_width": 2, "length_alpha": 0.7, "select": "cider_d+r_at_5"},
                "history": [
                    {"epoch": 0, "dev": {"cider_d": 0.3}},
                    {"epoch": 1, "dev": {"cider_d": 0.6, "r_at_5": 0.2}},
                ],
            }
        )
    )
    out = tmp_path / "model"
    assert export_attention.main(["--work-dir", str(soft), "--checkpoint", "scst", "--out", str(out)]) == 0
    contents = read_artifact(str(out))
    assert contents.decode_settings().describe() == "beam(k=2,alpha=0.7,max_len=10)"
    assert contents.config.training["dev"]["cider_d"] == 0.6
    (back,) = build_decoders(contents)
    for a, b in zip(tuned.training_model.get_weights(), back.training_model.get_weights()):
        np.testing.assert_array_equal(a, b)
    (soft / "member-1" / "scst-ba9876543210").mkdir()  # a second SCST run: it must be named
    shutil.copy(scst / "state.json", soft / "member-1" / "scst-ba9876543210" / "state.json")
    with pytest.raises(SystemExit, match="holds 2 SCST runs.*--scst-run"):
        export_attention.main(["--work-dir", str(soft), "--checkpoint", "scst", "--out", str(tmp_path / "two")])
    assert (
        export_attention.main(
            ["--work-dir", str(soft), "--checkpoint", "scst", "--scst-run", scst.name, "--out", str(tmp_path / "named")]
        )
        == 0
    )
    assert read_artifact(str(tmp_path / "named")).config.training["dev"]["cider_d"] == 0.6
    other, _ = work_dir(tmp_path, "adaptive", 3, vocab=Vocabulary.build(TINY_CAPTIONS[:4], min_count=1))
    with pytest.raises(SystemExit, match="another vocabulary"):
        export_attention.main(
            ["--work-dir", str(soft), "--ensemble-with", str(other), "--out", str(tmp_path / "x"), "--decode", "greedy"]
        )
    with pytest.raises(SystemExit) as exc:
        export_attention.main(["--work-dir", str(soft), "--out", str(tmp_path / "y"), "--ensmble-with", str(other)])
    assert exc.value.code == 2


@pytest.mark.slow
def test_export_with_int8_quantises_the_map_encoder_through_the_gate(tmp_path: Path, photo_tables: Path):
    from model.encoder import ImageEncoder
    from model.image_loading import decode_image
    from training import export_attention

    keras.utils.set_random_seed(0)
    encoder_weights = tmp_path / "encoder.weights.h5"
    ImageEncoder("mobilenet_v3_small", None, (64, 64), spatial=True).save_weights(str(encoder_weights))
    folder, _ = work_dir(tmp_path, "soft", 1, feature_dim=576, regions=4)
    out = tmp_path / "model"
    common = [
        "--work-dir",
        str(folder),
        "--out",
        str(out),
        "--decode",
        "beam:2:0.5",
        "--encoder",
        "mobilenet_v3_small",
        "--image-size",
        "64",
        "--record-encoder-weights",
        str(encoder_weights),
        "--int8",
        "--encoder-weights",
        str(encoder_weights),
        "--table",
        str(photo_tables / "train.csv"),
        "--dev-table",
        str(photo_tables / "dev.csv"),
        "--cache-dir",
        str(tmp_path / "features"),
        "--calibration-images",
        "6",
        "--no-progress",
    ]
    assert export_attention.main(common + ["--max-bleu-drop", "-1"]) == 3  # refused by the gate: float32 stays
    assert read_artifact(str(out)).int8_encoder is None
    assert export_attention.main(common + ["--max-bleu-drop", "1", "--min-identical", "0"]) == 0
    contents = read_artifact(str(out))
    block = contents.config.encoder.int8
    assert block["output"] == "map" and block["quality_gate"]["gate"]["passed"]
    images = np.stack(
        [decode_image((photo_tables / "images" / f"dev{i}.jpg").read_bytes(), (64, 64)).pixels for i in range(4)]
    )
    model8 = load_caption_model(str(out), precision="int8")
    assert model8.encode(images).shape == (4, 2, 2, 576)  # the IR outputs the map
    pooled, captions = model8.caption_images(images)
    assert pooled.shape == (4, 576) and len(captions) == 4 and all(c.caption for c in captions)


def test_a_released_decoder_seeds_only_a_work_folder_of_its_vocabulary_and_sizes(tmp_path: Path):
    from argparse import Namespace

    from training import export_attention, train_attention
    from training.attention_seed import released_decoder, seed_member
    from training.fit import BEST, FitSettings

    soft, decoder = work_dir(tmp_path, "soft", 4)
    released = tmp_path / "released"
    assert export_attention.main(["--work-dir", str(soft), "--out", str(released), "--decode", "greedy"]) == 0
    target = tmp_path / "seeded"
    target.mkdir()
    contents = released_decoder(str(released))
    train_attention._vocabulary(Namespace(work_dir=str(target)), [], contents)
    saved = json.loads((target / "vocabulary.json").read_text())
    assert saved["vocabulary"] == VOCAB.to_json() and saved["max_length"] == 10
    member = target / "member-1"
    with pytest.raises(SystemExit, match="another vocabulary"):
        seed_member(contents, str(member), decoder.config, FitSettings(), list(VOCAB.tokens)[:-1] + ["zebra"])
    with pytest.raises(SystemExit, match="--kind soft"):
        seed_member(contents, str(member), replace(decoder.config, kind="adaptive"), FitSettings(), VOCAB.tokens)
    assert not member.exists()  # refused before anything was written
    assert seed_member(contents, str(member), decoder.config, FitSettings(epochs=3), VOCAB.tokens)
    state = json.loads((member / "state.json").read_text())
    assert state["done"] and state["settings"] == FitSettings(epochs=3).__dict__ and state["epoch"] == 0
    seeded = AttentionDecoder(decoder.config)
    seeded.load_weights(str(member / BEST))
    for a, b in zip(decoder.training_model.get_weights(), seeded.training_model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not seed_member(contents, str(member), decoder.config, FitSettings(), VOCAB.tokens)  # a fit is kept
