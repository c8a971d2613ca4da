"""Each named step of the pipeline (``beam_pipeline.transforms`` and friends) on its own, with
``TestPipeline`` + ``assert_that`` on Beam's in-process FnApiRunner (real files, real tiny model)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to, is_not_empty

from beam_pipeline.caption_handler import CaptionModelHandler, ModelSpec
from beam_pipeline.records import ImageRecord, ImageRef, error_row
from beam_pipeline.run_stats import RunStats
from beam_pipeline.schemas import ERROR_SCHEMA
from beam_pipeline.transforms import (
    AttachReferences,
    CaptionImages,
    CommitOutputs,
    MatchInputs,
    ReadImages,
    SkipDoneAndDuplicates,
)
from tests.factories import write_jpeg
from tests.pipeline_helpers import write_token_file

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def pipeline() -> test_pipeline.TestPipeline:
    return test_pipeline.TestPipeline(runner=FnApiRunner(), blocking=True)


def _names(refs):
    return sorted(r.uri.rsplit("/", 1)[-1] for r in refs)


def test_match_inputs_lists_globs_and_manifest_and_reports_empty_globs(tmp_path):
    for name in ("a.jpg", "b.jpg"):
        write_jpeg(tmp_path / "images" / name)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"image_uri,image_id\n{tmp_path}/images/a.jpg,first\n")
    with pipeline() as p:
        refs, errors = p | MatchInputs(
            [f"{tmp_path}/images/*.jpg", f"{tmp_path}/nothing/*.png"], str(manifest), "image_uri", "image_id"
        )
        assert_that(
            refs | beam.Map(lambda r: (r.uri.rsplit("/", 1)[-1], r.image_id)),
            equal_to([("a.jpg", "a.jpg"), ("b.jpg", "b.jpg"), ("a.jpg", "first")]),
            label="Refs",
        )
        assert_that(
            errors | beam.Map(lambda e: (e["error_type"], e["stage"])), equal_to([("NoMatch", "match")]), label="Errors"
        )


def test_attach_references_joins_captions_by_image_id(tmp_path):
    tokens = write_token_file(tmp_path / "tokens.txt", {"a.jpg": ["a dog", "a brown dog"], "c.jpg": ["a cat"]})
    with pipeline() as p:
        refs = p | beam.Create([ImageRef("/x/a.jpg", "a.jpg"), ImageRef("/x/b.jpg", "b.jpg")])
        attached = refs | AttachReferences(str(tokens))
        assert_that(
            attached | beam.Map(lambda r: (r.image_id, r.references)),
            equal_to([("a.jpg", ("a dog", "a brown dog")), ("b.jpg", None)]),
        )


def test_skip_done_and_duplicates(tmp_path):
    done = tmp_path / "done.parquet"
    pq.write_table(pa.table({"image_uri": ["/x/done.jpg"]}), done)
    interrupted = tmp_path / "interrupted.parquet"
    pq.write_table(pa.table({"image_uri": ["/x/crashed.jpg"]}), interrupted)
    inputs = [ImageRef(f"/x/{n}", n) for n in ("new.jpg", "twice.jpg", "twice.jpg", "done.jpg", "crashed.jpg")]
    with pipeline() as p:
        todo, duplicates, skipped, _ = (
            p | beam.Create(inputs) | SkipDoneAndDuplicates([str(done), str(interrupted)], [str(interrupted)])
        )
        assert_that(todo | beam.Map(lambda r: r.image_id), equal_to(["new.jpg", "twice.jpg"]), label="Todo")
        assert_that(
            duplicates | beam.Map(lambda e: (e["image_id"], e["error_type"])),
            equal_to([("twice.jpg", "DuplicateInput")]),
            label="Duplicates",
        )
        assert_that(skipped, equal_to([False, True]), label="Skipped")


def test_read_images_decodes_to_the_model_size_and_reports_bad_files(tmp_path):
    good = write_jpeg(tmp_path / "good.jpg", size=(90, 60))
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    with pipeline() as p:
        records, errors = (
            p
            | beam.Create([ImageRef(str(good), "good.jpg"), ImageRef(str(bad), "bad.jpg")])
            | ReadImages((32, 48), 1 << 20, 1 << 24)
        )
        assert_that(
            records
            | beam.Map(
                lambda r: (r.ref.image_id, r.pixels.shape, r.pixels.dtype.name, r.width, r.height, len(r.sha256))
            ),
            equal_to([("good.jpg", (32, 48, 3), "uint8", 90, 60, 64)]),
            label="Records",
        )
        assert_that(
            errors | beam.Map(lambda e: (e["image_id"], e["error_type"], e["stage"])),
            equal_to([("bad.jpg", "NotAnImage", "decode")]),
            label="Errors",
        )


def _records(tmp_path: Path, n: int, size: int) -> list[ImageRecord]:
    from PIL import Image

    out = []
    for i in range(n):
        path = write_jpeg(tmp_path / f"img{i}.jpg", seed=i)
        pixels = np.asarray(Image.open(path).convert("RGB").resize((size, size)))
        out.append(ImageRecord(ImageRef(str(path), path.name), pixels, 96, 80, f"{i:064x}"))
    return out


def test_caption_images_runs_inference_through_the_handler(tmp_path, tiny_artifact):
    from model.artifact import read_artifact

    model_id = read_artifact(tiny_artifact).model_id
    records = _records(tmp_path, 5, 64)
    # A record whose pixels cannot be stacked with the others makes its batch fail; the batch is
    # retried image by image, so only that image becomes an error row.
    broken = ImageRecord(ImageRef("/x/broken.jpg", "broken.jpg"), np.zeros((7, 7, 3), np.uint8), 7, 7, "f" * 64)
    handler = CaptionModelHandler(ModelSpec(tiny_artifact, expected_model_id=model_id), max_batch_size=3)
    with pipeline() as p:
        rows, errors, workers = p | beam.Create(records + [broken]) | CaptionImages(handler, "tiny-test")
        assert_that(
            rows | beam.Map(lambda r: (r["image_id"], r["model_id"], bool(r["caption"]))),
            equal_to([(r.ref.image_id, model_id, True) for r in records]),
            label="Rows",
        )
        assert_that(
            errors | beam.Map(lambda e: (e["image_id"], e["stage"])),
            equal_to([("broken.jpg", "infer")]),
            label="Errors",
        )
        loads = workers | beam.Filter(lambda report: report[0] == "load")
        assert_that(
            loads | beam.Map(lambda r: (len(r[1]), r[1][2] == os.getpid())), equal_to([(4, True)]), label="OneLoad"
        )
        # 5 good images in batches of 3: every caption counted for this process, from the data.
        per_process = (
            workers
            | beam.Filter(lambda report: report[0] == "captioned_by")
            | beam.Map(lambda r: r[1])
            | beam.CombinePerKey(sum)
        )
        assert_that(per_process, equal_to([(f"{socket.gethostname()}:{os.getpid()}", 5)]), label="PerProcess")


def test_handler_declares_batching_and_sharing():
    handler = CaptionModelHandler(
        ModelSpec("/nowhere"), max_batch_size=16, min_batch_size=4, share_across_processes=True
    )
    assert handler.batch_elements_kwargs() == {"min_batch_size": 4, "max_batch_size": 16}
    assert handler.share_model_across_processes() and handler.model_copies() == 1
    assert not CaptionModelHandler(ModelSpec("/nowhere"), max_batch_size=8).share_model_across_processes()
    record = ImageRecord(ImageRef("/x/a.jpg", "a.jpg"), np.zeros((10, 10, 3), np.uint8), 10, 10)
    assert handler.get_num_bytes([record, record]) == 600


def test_commit_outputs_writes_each_source_to_readable_files(tmp_path):
    rows = [error_row(f"/x/{i}.jpg", f"{i}.jpg", "read", "FileNotFound", "gone") for i in range(5)]
    with pipeline() as p:
        {"read": p | "Read" >> beam.Create(rows[:3]), "match": p | "Match" >> beam.Create(rows[3:])} | CommitOutputs(
            str(tmp_path / "errors"), "run1", ERROR_SCHEMA, every=2, seconds=300, label_prefix="errors-"
        )
    files = sorted((tmp_path / "errors").glob("*.parquet"))
    assert len(files) == 3 and all(f.name.startswith("part-run1-") for f in files)
    committed = sorted(r["image_id"] for f in files for r in pq.read_table(f).to_pylist())
    assert committed == sorted(r["image_id"] for r in rows)


def test_run_stats_counts_from_the_data(tmp_path):
    path = tmp_path / "stats.json"
    captions = [
        {"caption": "a dog runs", "references": ["a dog runs", "a dog is running"]},
        {"caption": "a cat", "references": None},
    ]
    with pipeline() as p:
        {
            "inputs": p | "Inputs" >> beam.Create(range(5)),
            "captions": p | "Captions" >> beam.Create(captions),
            "errors": p | "Errors" >> beam.Create([{"e": 1}]),
            "skipped": p | "Skipped" >> beam.Create([True, False]),
            "workers": p
            | "Workers"
            >> beam.Create(
                [
                    ("load", ("id1", 1.5, 10, "h")),
                    ("load", ("id2", 2.0, 11, "h")),
                    ("load", ("id1", 1.5, 10, "h")),
                    ("captioned_by", ("h:10", 1)),
                    ("captioned_by", ("h:11", 2)),
                    ("captioned_by", ("h:10", 3)),
                ]
            ),
        } | RunStats(str(path))
    stats = json.loads(path.read_text())
    assert (stats["matched"], stats["captioned"], stats["failed"]) == (5, 2, 1)
    assert (stats["skipped_resume"], stats["skipped_from_interrupted"]) == (2, 1)
    assert stats["bleu_segments"] == 1 and stats["bleu"]["bleu1"] == pytest.approx(1.0)
    assert (stats["model_loads"], stats["worker_processes"], stats["model_load_seconds"]) == (2, 2, 3.5)
    assert stats["captioned_per_process"] == {"h:10": 4, "h:11": 2}


def test_matchers_can_fail(tmp_path):
    """The assertions above are real: a wrong expectation fails the pipeline."""
    with pytest.raises(Exception, match="Failed assert"):
        with pipeline() as p:
            assert_that(p | beam.Create([1]), equal_to([2]))
    with pipeline() as p:
        assert_that(p | beam.Create([1]), is_not_empty())


def test_same_content_split_and_copy_to_followers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from beam_pipeline.same_content import CopyCaptionsToFollowers, SplitBySameContent, known_columns

    def record(name: str, sha: str) -> ImageRecord:
        return ImageRecord(ImageRef(f"/x/{name}", name), np.zeros((4, 4, 3), np.uint8), 4, 4, sha)

    records = [
        record("a.jpg", "1" * 64),
        record("a-copy.jpg", "1" * 64),
        record("b.jpg", "2" * 64),
        record("b-copy.jpg", "2" * 64),
        record("known.jpg", "3" * 64),
    ]
    known = [
        {
            "image_sha256": "3" * 64,
            "caption": "a known cat",
            "score": -1.0,
            "decode": "greedy",
            "model_id": "m1",
            "encoder": "xception",
        }
    ]
    known_file = str(tmp_path / "known.parquet")  # earlier captions are files, read by the workers
    pq.write_table(pa.Table.from_pylist(known), known_file)
    with pipeline() as p:
        leaders, followers, copied = (
            p | beam.Create(records) | SplitBySameContent("m1", [known_file], known_columns(False))
        )
        assert_that(leaders | beam.Map(lambda r: r.ref.image_id), equal_to(["a.jpg", "b.jpg"]), label="Leaders")
        assert_that(
            copied | beam.Map(lambda r: (r["image_id"], r["caption"], r["caption_source"])),
            equal_to([("known.jpg", "a known cat", "same_content")]),
            label="Copied",
        )
        # Only a.jpg was captioned: its copy gets the caption, b's copy an error row.
        leader_rows = p | "LeaderRows" >> beam.Create(
            [
                {
                    "image_sha256": "1" * 64,
                    "caption": "a dog",
                    "score": -0.5,
                    "decode": "greedy",
                    "model_id": "m1",
                    "encoder": "xception",
                }
            ]
        )
        rows, errors = {"rows": leader_rows, "followers": followers} | CopyCaptionsToFollowers()
        assert_that(
            rows | beam.Map(lambda r: (r["image_id"], r["caption"])),
            equal_to([("a-copy.jpg", "a dog")]),
            label="FollowerRows",
        )
        assert_that(
            errors | beam.Map(lambda e: (e["image_id"], e["error_type"])),
            equal_to([("b-copy.jpg", "SameContentFailed")]),
            label="FollowerErrors",
        )
