"""End-to-end runs of the Beam pipeline on the in-process DirectRunner (Beam's FnApiRunner),
with a small real model artifact, generated images and real Parquet output."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from nltk.translate.bleu_score import corpus_bleu

from model.bleu import bleu_tokens
from tests.factories import write_jpeg
from tests.pipeline_helpers import read_rows, read_summary, run_pipeline, write_token_file

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture()
def images(tmp_path) -> Path:
    """12 good JPEGs, a text file named .jpg, a truncated JPEG and an empty file."""
    d = tmp_path / "images"
    for i in range(12):
        write_jpeg(d / f"img{i:02d}.jpg", size=(80 + 4 * i, 60 + 2 * i), seed=i)
    (d / "html.jpg").write_text("<!DOCTYPE html><html>404</html>")
    good = (d / "img00.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (d / "empty.jpg").write_bytes(b"")
    return d


def test_every_input_accounted_for_exactly_once(images, tmp_path, tiny_artifact):
    out = tmp_path / "out"
    summary = run_pipeline(
        [
            "--input",
            f"{images}/*.jpg",
            "--input",
            f"{images}/img03.jpg",
            "--input",
            f"{tmp_path}/nowhere/*.png",
            "--output",
            str(out),
            "--model",
            tiny_artifact,
            "--batch_size",
            "4",
        ]
    )
    captions, errors = read_rows(out, "captions"), read_rows(out, "errors")
    assert len(captions) == 12
    assert {r["image_id"] for r in captions} == {f"img{i:02d}.jpg" for i in range(12)}
    by_uri = {e["image_uri"]: e for e in errors}
    assert by_uri[f"{images}/html.jpg"]["error_type"] == "NotAnImage"
    assert by_uri[f"{images}/html.jpg"]["stage"] == "decode"
    assert by_uri[f"{images}/truncated.jpg"]["error_type"] == "TruncatedImage"
    assert by_uri[f"{images}/empty.jpg"]["error_type"] == "EmptyFile"
    assert by_uri[f"{tmp_path}/nowhere/*.png"]["error_type"] == "NoMatch"
    dup = [e for e in errors if e["error_type"] == "DuplicateInput"]
    assert [d["image_uri"] for d in dup] == [f"{images}/img03.jpg"]
    assert len(errors) == 5
    # 15 files + 1 duplicate + 1 empty glob = 17 inputs = 12 captions + 5 errors
    assert summary["matched"] == 17 and summary["captioned"] == 12 and summary["failed"] == 5
    assert summary["matched"] == summary["captioned"] + summary["failed"]
    assert summary["skipped_resume"] == 0 and summary["model_loads"] == 1
    assert summary["bleu"] is None
    assert read_summary(out) == summary
    row = next(r for r in captions if r["image_id"] == "img05.jpg")
    assert (row["width"], row["height"]) == (100, 70)
    assert row["model_id"] == summary["model_id"] and row["encoder"] == "mobilenet_v3_small"
    assert row["decode"] == "beam(k=2,alpha=0.7,max_len=12)" and row["score"] <= 0
    assert row["references"] is None and row["bleu4"] is None
    assert row["processed_at"].tzinfo is not None


def test_references_bleu_columns_and_corpus_bleu(images, tmp_path, tiny_artifact):
    refs = {f"img{i:02d}.jpg": ["a dog runs on the grass", f"a man rides a bike number {i}"] for i in range(0, 12, 2)}
    token_file = write_token_file(tmp_path / "refs.txt", refs)
    out = tmp_path / "out"
    summary = run_pipeline(
        [
            "--input",
            f"{images}/img*.jpg",
            "--output",
            str(out),
            "--model",
            tiny_artifact,
            "--references",
            str(token_file),
            "--decode",
            "greedy",
        ]
    )
    captions = read_rows(out, "captions")
    with_refs = [r for r in captions if r["references"]]
    assert {r["image_id"] for r in with_refs} == set(refs)
    for r in with_refs:
        assert r["references"] == refs[r["image_id"]]
        assert all(0.0 <= r[f"bleu{n}"] <= 1.0 for n in range(1, 5))
    assert all(r["bleu1"] is None for r in captions if not r["references"])
    hyps = [bleu_tokens(r["caption"]) for r in with_refs]
    references = [[bleu_tokens(c) for c in r["references"]] for r in with_refs]
    for n in range(1, 5):
        expected = corpus_bleu(references, hyps, weights=tuple([1.0 / n] * n))
        assert summary["bleu"][f"bleu{n}"] == pytest.approx(expected, abs=1e-12)
    assert summary["bleu_segments"] == 6
    assert summary["decode"].startswith("greedy")


def test_manifest_input_with_ids_and_references(images, tmp_path, tiny_artifact):
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uri", "id", "refs"])
        w.writerow([f"{images}/img01.jpg", "first", "a dog runs|a dog on grass"])
        w.writerow([f"{images}/img02.jpg", "second", ""])
        w.writerow([f"{images}/missing.jpg", "gone", ""])
    out = tmp_path / "out"
    summary = run_pipeline(
        [
            "--input_manifest",
            str(manifest),
            "--manifest_uri_column",
            "uri",
            "--manifest_id_column",
            "id",
            "--manifest_references_column",
            "refs",
            "--output",
            str(out),
            "--model",
            tiny_artifact,
        ]
    )
    rows = {r["image_id"]: r for r in read_rows(out, "captions")}
    assert set(rows) == {"first", "second"}
    assert rows["first"]["references"] == ["a dog runs", "a dog on grass"]
    assert rows["first"]["bleu1"] is not None and rows["second"]["references"] is None
    (err,) = read_rows(out, "errors")
    assert err["image_id"] == "gone" and err["stage"] == "read" and err["error_type"] == "FileNotFound"
    assert summary["matched"] == 3 and summary["captioned"] == 2 and summary["failed"] == 1
    assert summary["bleu_segments"] == 1


def test_resume_skips_done_work(images, tmp_path, tiny_artifact):
    out = tmp_path / "out"
    first = run_pipeline(["--input", f"{images}/img0*.jpg", "--output", str(out), "--model", tiny_artifact])
    assert first["captioned"] == 10
    with pytest.raises(Exception, match="not empty; use --resume"):
        run_pipeline(["--input", f"{images}/*.jpg", "--output", str(out), "--model", tiny_artifact])
    second = run_pipeline(["--input", f"{images}/*.jpg", "--output", str(out), "--model", tiny_artifact, "--resume"])
    assert second["skipped_resume"] == 10
    assert second["captioned"] == 2 and second["failed"] == 3
    assert second["matched"] == second["captioned"] + second["failed"] + second["skipped_resume"]
    third = run_pipeline(["--input", f"{images}/*.jpg", "--output", str(out), "--model", tiny_artifact, "--resume"])
    assert third["captioned"] == 0 and third["failed"] == 0 and third["skipped_resume"] == 15
    captions = read_rows(out, "captions")
    uris = [r["image_uri"] for r in captions] + [r["image_uri"] for r in read_rows(out, "errors")]
    assert len(uris) == len(set(uris)) == 15
    assert len(list((out / "_runs").iterdir())) == 3


def test_resume_with_another_model_is_refused(images, tmp_path, tiny_artifact):
    from beam_pipeline.preflight import PreflightError
    from tests.factories import make_tiny_artifact

    out = tmp_path / "out"
    run_pipeline(["--input", f"{images}/img0[0-1].jpg", "--output", str(out), "--model", tiny_artifact])
    other = tmp_path / "other-model"
    make_tiny_artifact(str(other), seed=7)
    with pytest.raises(PreflightError, match="already holds captions of model"):
        run_pipeline(["--input", f"{images}/*.jpg", "--output", str(out), "--model", str(other), "--resume"])
    assert len(read_rows(out, "captions")) == 2


def test_output_inside_input_is_refused(images, tiny_artifact):
    from beam_pipeline.preflight import PreflightError

    with pytest.raises(PreflightError, match="inside the input directory"):
        run_pipeline(["--input", f"{images}/*.jpg", "--output", str(images / "out"), "--model", tiny_artifact])
    with pytest.raises(PreflightError, match="inside the input directory"):
        run_pipeline(["--input", f"{images}/*.jpg", "--output", str(images), "--model", tiny_artifact])


def test_emit_embeddings(images, tmp_path, tiny_artifact):
    out = tmp_path / "out"
    run_pipeline(
        ["--input", f"{images}/img0[0-2].jpg", "--output", str(out), "--model", tiny_artifact, "--emit_embeddings"]
    )
    rows = read_rows(out, "captions")
    assert len(rows) == 3 and all(len(r["embedding"]) == 576 for r in rows)


def test_both_encoder_runtimes_give_the_same_captions(images, tmp_path, tiny_artifact):
    """OpenVINO (the CPU default) and TensorFlow run the same Keras graph: same rows, recorded."""
    rows = {}
    for runtime in ("openvino", "tensorflow"):
        out = tmp_path / runtime
        summary = run_pipeline(
            [
                "--input",
                f"{images}/*.jpg",
                "--output",
                str(out),
                "--model",
                tiny_artifact,
                "--encoder_runtime",
                runtime,
                "--emit_embeddings",
            ]
        )
        assert summary["encoder_runtime"] == runtime and summary["captioned"] == 12
        rows[runtime] = {r["image_uri"]: r for r in read_rows(out, "captions")}
    assert rows["openvino"].keys() == rows["tensorflow"].keys()
    for uri, row in rows["openvino"].items():
        other = rows["tensorflow"][uri]
        assert row["caption"] == other["caption"]
        np.testing.assert_allclose(row["embedding"], other["embedding"], rtol=1e-3, atol=1e-4)


def test_model_cache_dir_cold_and_warm_starts_give_the_same_rows(images, tmp_path, tiny_artifact):
    """--model_cache_dir: the first run fills it (encoder + two decoder graphs), the second
    reads it back and writes the same rows; "none" writes nothing anywhere."""
    cache = tmp_path / "model-cache"
    rows = []
    for i in range(2):
        out = tmp_path / f"out{i}"
        summary = run_pipeline(
            [
                "--input",
                f"{images}/*.jpg",
                "--output",
                str(out),
                "--model",
                tiny_artifact,
                "--encoder_runtime",
                "openvino",
                "--model_cache_dir",
                str(cache),
                "--emit_embeddings",
            ]
        )
        assert summary["captioned"] == 12 and summary["batch_size"] == 32
        assert len([p for p in cache.iterdir() if (p / "model.xml").is_file()]) == 3
        rows.append({r["image_uri"]: (r["caption"], r["score"], r["embedding"]) for r in read_rows(out, "captions")})
    assert rows[0] == rows[1]

    before = sorted(Path(os.environ["CAPTION_CACHE_DIR"]).rglob("*"))
    summary = run_pipeline(
        [
            "--input",
            f"{images}/*.jpg",
            "--output",
            str(tmp_path / "out-none"),
            "--model",
            tiny_artifact,
            "--encoder_runtime",
            "openvino",
            "--model_cache_dir",
            "none",
        ]
    )
    assert summary["captioned"] == 12
    assert sorted(Path(os.environ["CAPTION_CACHE_DIR"]).rglob("*")) == before


def test_multi_threading_loads_the_model_once(images, tmp_path, tiny_artifact):
    out = tmp_path / "out"
    summary = run_pipeline(
        [
            "--input",
            f"{images}/*.jpg",
            "--output",
            str(out),
            "--model",
            tiny_artifact,
            "--direct_running_mode",
            "multi_threading",
            "--direct_num_workers",
            "4",
            "--batch_size",
            "2",
        ]
    )
    assert summary["captioned"] == 12 and summary["model_loads"] == 1


@pytest.mark.slow
def test_multi_processing_pickles_and_loads_once_per_process(images, tmp_path, tiny_artifact):
    out = tmp_path / "out"
    summary = run_pipeline(
        [
            "--input",
            f"{images}/*.jpg",
            "--output",
            str(out),
            "--model",
            tiny_artifact,
            "--direct_running_mode",
            "multi_processing",
            "--direct_num_workers",
            "2",
            "--batch_size",
            "2",
        ]
    )
    assert summary["captioned"] == 12 and summary["failed"] == 3
    assert 1 <= summary["model_loads"] <= 2
    assert len(read_rows(out, "captions")) == 12


def test_run_pipeline_cli_refuses_tampered_model(images, tmp_path, tiny_artifact, capsys):
    import shutil

    import run_pipeline as cli

    bad = tmp_path / "bad-model"
    shutil.copytree(tiny_artifact, bad)
    (bad / "vocab.json").write_text('{"format": "image-caption-vocab/1", "tokens": []}')
    out = tmp_path / "out"
    assert cli.main(["--input", f"{images}/*.jpg", "--output", str(out), "--model", str(bad)]) == 2
    assert "vocab.json" in capsys.readouterr().err
    assert not out.exists()  # refused before anything was read or written


def test_report_flag_writes_the_gallery(images, tmp_path, tiny_artifact, capsys):
    import run_pipeline as cli

    out = tmp_path / "out"
    assert (
        cli.main(
            [
                "--input",
                f"{images}/img0[0-2].jpg",
                "--input",
                f"{images}/empty.jpg",
                "--output",
                str(out),
                "--model",
                tiny_artifact,
                "--report",
                "--report_sample",
                "2",
                "--progress_seconds",
                "0",
                "--json",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert json.loads(printed)["report"] == str(out / "report.html")
    page = (out / "report.html").read_text()
    assert "Showing 2 of 3 captions" in page and 'id="error-table"' in page and "EmptyFile" in page
    assert page.count('<article class="card"') == 2 and page.count('src="data:image/jpeg;base64,') == 2
