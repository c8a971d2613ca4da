"""INT8 encoder: built by training.quantize (real NNCF on a small real model), refused by the
quality gate when it loses too much, carried and verified in the artifact, run by the pipeline."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.factories import make_tiny_artifact
from tests.pipeline_helpers import read_rows, run_pipeline
from training.compare_precision import caption_agreement, feature_cosines, gate_failures

# --- pure functions of the gate (no TensorFlow, no OpenVINO) ---------------------------------


def test_feature_cosines_and_caption_agreement():
    a = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    b = np.array([[2.0, 0.0], [0.0, -1.0], [1.0, 0.0]])
    assert np.allclose(feature_cosines(a, b), [1.0, -1.0, np.sqrt(0.5)])
    refs = [["a dog runs on the grass"], ["a man rides a bike"]]
    same = caption_agreement([["a", "dog", "runs"], ["a", "man"]], [["a", "dog", "runs"], ["a", "man"]], refs)
    assert same["identical_captions"] == 1.0 and all(v == 0 for v in same["bleu_delta"].values())
    worse = caption_agreement(
        [["a", "dog", "runs", "on", "the", "grass"], ["a", "man", "rides", "a", "bike"]],
        [["a", "cat"], ["a", "man", "rides", "a", "bike"]],
        refs,
    )
    assert worse["identical_captions"] == 0.5
    assert worse["bleu_delta"]["bleu1"] < 0 and worse["bleu_float32"]["bleu4"] == pytest.approx(1.0)


def test_gate_failures_name_each_broken_margin():
    report = {
        "identical_captions": 0.85,
        "bleu_delta": {"bleu1": 0.001, "bleu2": -0.002, "bleu3": -0.004, "bleu4": -0.006},
    }
    failures = gate_failures(report, max_bleu_drop=0.005, min_identical=0.9)
    assert len(failures) == 2 and failures[0].startswith("bleu4 drops by 0.0060") and "85.0 %" in failures[1]
    assert gate_failures(report, max_bleu_drop=0.01, min_identical=0.8) == []


def test_gate_refuses_lost_findability_distinctness_or_cider():
    report = {
        "identical_captions": 0.6,
        "bleu_delta": dict.fromkeys(("bleu1", "bleu2", "bleu3", "bleu4"), 0.0),
        "quality_delta": {"cider_d": -0.03, "r_at_5": -0.02, "distinct_share": -0.01},
    }
    failures = gate_failures(report, max_bleu_drop=0.005, min_identical=0.5)
    assert [f.split()[0] for f in failures] == ["cider_d", "r_at_5"]
    assert gate_failures(report, 0.005, 0.5, max_cider_drop=0.05, max_r5_drop=0.05) == []
    assert gate_failures(report, 0.005, 0.5, 0.05, 0.05, max_distinct_drop=0.005)[0].startswith("distinct_share")


def test_agreement_reports_each_quality_column_of_both_caption_lists():
    refs = [["a dog runs on grass", "a brown dog runs"], ["a man rides a bike", "a cyclist on a road"]]
    same = [["a", "dog", "runs"], ["a", "man", "rides", "a", "bike"]]
    generic = [["a", "dog", "runs"], ["a", "dog", "runs"]]
    report = caption_agreement(same, generic, refs)
    assert report["quality_float32"]["distinct_share"] == 1.0 and report["quality_quantised"]["distinct_share"] == 0.5
    assert report["quality_delta"]["distinct_share"] == -0.5
    assert report["quality_delta"]["r_at_5"] <= 0 and report["quality_delta"]["cider_d"] < 0


def test_identical_caption_default_depends_on_what_the_encoder_returns():
    import argparse

    from training.compare_precision import add_gate_arguments, gate_margins

    parser = argparse.ArgumentParser()
    add_gate_arguments(parser)
    args = parser.parse_args([])
    assert gate_margins(args, "pooled")["min_identical"] == 0.9 and gate_margins(args, "map")["min_identical"] == 0.5
    assert gate_margins(parser.parse_args(["--min-identical", "0.7"]), "map")["min_identical"] == 0.7


# --- real quantisation of the tiny model ------------------------------------------------------


def _quantize(model: str, tables: Path, cache: Path, *extra: str) -> int:
    from training.quantize import main

    return main(
        [
            "--model",
            model,
            "--table",
            str(tables / "train.csv"),
            "--dev-table",
            str(tables / "dev.csv"),
            "--cache-dir",
            str(cache),
            "--calibration-images",
            "6",
            "--no-progress",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def int8_artifact(tiny_artifact, photo_tables, tmp_path_factory) -> str:
    """The tiny artifact plus its INT8 encoder (generous margins: random weights caption badly)."""
    out = str(tmp_path_factory.mktemp("int8-model") / "model")
    cache = tmp_path_factory.mktemp("int8-features")
    assert (
        _quantize(tiny_artifact, photo_tables, cache, "--output", out, "--max-bleu-drop", "1", "--min-identical", "0")
        == 0
    )
    return out


def test_gate_refuses_and_writes_nothing(tiny_artifact, photo_tables, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_artifact, model)
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    # A margin no quantised model can meet: BLEU would have to rise by 1.
    assert _quantize(str(model), photo_tables, tmp_path / "cache", "--max-bleu-drop", "-1") == 3
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before


def test_int8_artifact_records_calibration_and_runs(int8_artifact, tiny_artifact, photo_tables):
    from model.artifact import INT8_ENCODER_BIN, INT8_ENCODER_XML, read_artifact
    from model.captioner import load_caption_model
    from model.image_loading import decode_image

    contents = read_artifact(int8_artifact)
    block = contents.config.encoder.int8
    manifest = json.loads((Path(int8_artifact) / "manifest.json").read_text())
    assert {INT8_ENCODER_XML, INT8_ENCODER_BIN} <= set(manifest["files"])
    assert block["calibration"]["count"] == 6 and block["calibration"]["split"] == "train"
    assert all(i.startswith("train") for i in block["calibration"]["image_ids"])
    assert block["versions"]["nncf"] and block["quality_gate"]["split"] == "dev"
    assert contents.model_id != read_artifact(tiny_artifact).model_id
    images = np.stack(
        [decode_image((photo_tables / "images" / f"dev{i}.jpg").read_bytes(), (64, 64)).pixels for i in range(4)]
    )
    f32 = load_caption_model(tiny_artifact, runtime="openvino", cache="none").encode(images)
    model8 = load_caption_model(int8_artifact, precision="int8")
    f8, captions = model8.caption_images(images)
    assert f8.shape == f32.shape and np.isfinite(f8).all() and len(captions) == 4
    # Quantised for real: INT8 activations (FakeQuantize) and INT8 weight constants in the IR. (The
    # random-weight tiny encoder's features are ~1e-11, so their values say nothing about INT8
    # quality; the real model's agreement is measured in docs/PERFORMANCE.md.)
    xml = contents.int8_encoder[0]
    assert xml.count(b'type="FakeQuantize"') > 10 and re.search(rb'element_type="[iu]8"', xml)
    # float32 of the INT8 artifact is still the float32 encoder
    assert np.allclose(
        load_caption_model(int8_artifact, runtime="openvino", cache="none").encode(images), f32, atol=1e-4
    )


def test_preset_reaches_nncf_and_is_recorded(int8_artifact, tiny_artifact, photo_tables, tmp_path):
    """--preset performance (all symmetric) gives another graph than the default mixed preset,
    and the artifact says which one it carries, with the layers kept in float32."""
    from model.artifact import read_artifact

    out = str(tmp_path / "model")
    assert (
        _quantize(
            tiny_artifact,
            photo_tables,
            tmp_path / "cache",
            "--output",
            out,
            "--preset",
            "performance",
            "--max-bleu-drop",
            "1",
            "--min-identical",
            "0",
        )
        == 0
    )
    symmetric, mixed = read_artifact(out).config.encoder.int8, read_artifact(int8_artifact).config.encoder.int8
    assert symmetric["preset"].startswith("performance") and mixed["preset"].startswith("mixed")
    assert mixed["ignored_scope"]["name"] == "block1" and len(mixed["ignored_scope"]["node_names"]) == 2
    assert read_artifact(out).int8_encoder[0] != read_artifact(int8_artifact).int8_encoder[0]


@pytest.mark.parametrize("name", ["encoder.int8.bin", "encoder.int8.xml"])
def test_tampered_int8_files_are_refused(int8_artifact, tmp_path, name):
    from model.artifact import ArtifactError
    from model.captioner import load_caption_model

    model = tmp_path / "model"
    shutil.copytree(int8_artifact, model)
    data = bytearray((model / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (model / name).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"{name}.*SHA-256"):
        load_caption_model(str(model), precision="int8")


def test_non_ir_xml_with_a_matching_manifest_is_refused(int8_artifact, tmp_path):
    from model.artifact import ArtifactError, artifact_files
    from model.artifact_writer import write_files
    from model.captioner import load_caption_model

    files = artifact_files(int8_artifact)
    files["encoder.int8.xml"] = b"\x80\x04\x95 not a graph"  # e.g. a pickle, re-hashed into the manifest
    write_files(str(tmp_path / "model"), files)
    with pytest.raises(ArtifactError, match="not an OpenVINO IR graph"):
        load_caption_model(str(tmp_path / "model"), precision="int8")


def test_int8_needs_openvino_and_an_int8_encoder(int8_artifact, tiny_artifact):
    from model.artifact import ArtifactError, read_artifact
    from model.captioner import check_encoder_ready, load_caption_model
    from model.encoder import EncoderError

    with pytest.raises(EncoderError, match="only on OpenVINO"):
        load_caption_model(int8_artifact, precision="int8", runtime="tensorflow")
    with pytest.raises(EncoderError, match="only on OpenVINO"):
        check_encoder_ready(read_artifact(int8_artifact), "int8", "tensorflow")
    with pytest.raises(ArtifactError, match="has no INT8 encoder"):
        check_encoder_ready(read_artifact(tiny_artifact), "int8", "auto")
    check_encoder_ready(read_artifact(int8_artifact), "int8", "auto")


def test_from_artifact_copies_the_ir_only_for_the_same_encoder(int8_artifact, tiny_artifact, photo_tables, tmp_path):
    from model.artifact import read_artifact

    model = tmp_path / "model"
    shutil.copytree(tiny_artifact, model)  # e.g. the same encoder with a retrained decoder
    assert (
        _quantize(
            str(model),
            photo_tables,
            tmp_path / "cache",
            "--from-artifact",
            int8_artifact,
            "--max-bleu-drop",
            "1",
            "--min-identical",
            "0",
        )
        == 0
    )
    copied = read_artifact(str(model))
    assert copied.int8_encoder == read_artifact(int8_artifact).int8_encoder
    assert copied.config.encoder.int8["copied_from_model_id"] == read_artifact(int8_artifact).model_id
    other = tmp_path / "other"
    make_tiny_artifact(str(other), seed=1)  # other encoder weights
    with pytest.raises(SystemExit, match="built from another encoder"):
        _quantize(str(other), photo_tables, tmp_path / "cache", "--from-artifact", int8_artifact)


def test_compare_precision_command(int8_artifact, photo_tables, tmp_path, capsys):
    from training.compare_precision import main

    args = [
        "--model",
        int8_artifact,
        "--table",
        str(photo_tables / "dev.csv"),
        "--cache-dir",
        str(tmp_path),
        "--no-progress",
    ]
    assert main(args + ["--max-bleu-drop", "1", "--min-identical", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 6 and 0 <= report["identical_captions"] <= 1
    assert report["feature_cosine"]["min"] <= report["feature_cosine"]["median"]
    assert main(args + ["--max-bleu-drop", "-1"]) == 1


def test_pipeline_runs_int8_and_refuses_int8_on_tensorflow(int8_artifact, tiny_artifact, photo_tables, tmp_path):
    from model.artifact import ArtifactError
    from model.encoder import EncoderError

    images = f"{photo_tables}/images/dev*.jpg"
    summary = run_pipeline(
        [
            "--input",
            images,
            "--output",
            str(tmp_path / "out"),
            "--model",
            int8_artifact,
            "--precision",
            "int8",
            "--batch_size",
            "4",
        ]
    )
    assert summary["captioned"] == 6 and summary["failed"] == 0 and summary["encoder_precision"] == "int8"
    assert len(read_rows(tmp_path / "out", "captions")) == 6
    with pytest.raises(EncoderError, match="only on OpenVINO"):
        run_pipeline(
            [
                "--input",
                images,
                "--output",
                str(tmp_path / "tf"),
                "--model",
                int8_artifact,
                "--precision",
                "int8",
                "--encoder_runtime",
                "tensorflow",
            ]
        )
    with pytest.raises(ArtifactError, match="has no INT8 encoder"):
        run_pipeline(
            ["--input", images, "--output", str(tmp_path / "none"), "--model", tiny_artifact, "--precision", "int8"]
        )


def test_int8_path_of_an_attention_decoder_may_carry_its_graphs_with_int8_weights(
    tiny_attention_artifact, tiny_artifact, photo_tables, tmp_path
):
    """--decoder-weights int8_asym: the artifact carries the decoder's projection and step graphs
    with INT8 weights (listed in the manifest, recorded in encoder.int8), the gate compares the
    whole INT8 path (INT8 map and those graphs) against float32, --precision int8 runs them
    (float32 traces its own), quantising again without the flag drops them, a manifest without one
    of them is refused, and a pooled (merge) decoder has no such graphs to give."""
    from model import openvino_runtime as ovr
    from model.artifact import (
        INT8_DECODER_FILES,
        ArtifactError,
        compute_model_id,
        read_artifact,
    )
    from model.captioner import int8_decoder_graphs, load_caption_model
    from model.image_loading import decode_image

    out = str(tmp_path / "model")
    gate = ("--max-bleu-drop", "1", "--min-identical", "0", "--max-cider-drop", "9", "--max-r5-drop", "1")
    gate = (*gate, "--max-distinct-drop", "1")
    assert (
        _quantize(
            tiny_attention_artifact,
            photo_tables,
            tmp_path / "f",
            "--output",
            out,
            *gate,
            "--decoder-weights",
            "int8_asym",
        )
        == 0
    )
    contents = read_artifact(out)
    block = contents.config.encoder.int8
    manifest = json.loads((Path(out) / "manifest.json").read_text())
    decoder_files = {name for pair in INT8_DECODER_FILES for name in pair}
    assert decoder_files <= set(manifest["files"])
    assert block["decoder_weights"]["mode"] == "int8_asym" and block["decoder_weights"]["versions"]["nncf"]
    assert block["quality_gate"]["int8_decoder_graphs"] and block["quality_gate"]["gate"]["passed"]
    (image_xml, _), (step_xml, _) = contents.int8_decoder
    assert re.search(rb'element_type="u8"', step_xml) and b"attention_score" in step_xml  # INT8 weights
    assert re.search(rb'element_type="u8"', image_xml) and b"region_dense" in image_xml
    assert int8_decoder_graphs(contents, "int8") is contents.int8_decoder
    assert int8_decoder_graphs(contents, "float32") is None

    images = np.stack(
        [decode_image((photo_tables / "images" / f"dev{i}.jpg").read_bytes(), (64, 64)).pixels for i in range(3)]
    )
    compiled_irs = []
    real_compile_ir = ovr.compile_ir
    try:
        ovr.compile_ir = lambda xml, weights, throughput=False: (
            compiled_irs.append(xml) or real_compile_ir(xml, weights, throughput)
        )
        for precision in ("int8", "float32"):
            _, captions = load_caption_model(out, precision=precision, cache="none").caption_images(images)
            assert len(captions) == 3
    finally:
        ovr.compile_ir = real_compile_ir
    assert compiled_irs == [contents.int8_encoder[0], image_xml, step_xml]  # int8's IRs; float32 traces

    again = str(tmp_path / "again")
    assert _quantize(out, photo_tables, tmp_path / "f", "--output", again, *gate) == 0
    assert read_artifact(again).int8_decoder is None
    assert not decoder_files & set(json.loads((Path(again) / "manifest.json").read_text())["files"])
    with pytest.raises(SystemExit, match="attention decoder"):
        _quantize(tiny_artifact, photo_tables, tmp_path / "f", "--decoder-weights", "int8_asym")
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    manifest["files"].pop("decoder_step.int8.bin")  # a consistent manifest that lacks an announced file
    manifest["model_id"] = compute_model_id({name: f["sha256"] for name, f in manifest["files"].items()})
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="announces INT8 decoder graphs but decoder_step.int8.bin"):
        read_artifact(str(broken))
