"""The single-output protocol of the pipeline's DoFns (pure Python, no Beam runner)."""

from __future__ import annotations

from beam_pipeline.outcomes import (
    Captioned,
    Failed,
    ModelLoaded,
    Skipped,
    failed,
    is_main,
    load_summary,
    worker_reports,
)
from beam_pipeline.records import ImageRef, error_row


def test_side_results_are_not_main_elements():
    row = error_row("a.jpg", "a.jpg", "read", "FileNotFound", "gone")
    assert failed(row) == Failed(row)
    assert not is_main(failed(row)) and not is_main(Skipped("a.jpg"))
    assert not is_main(ModelLoaded("id", 1.0, 1, "h")) and not is_main(Captioned(3, 1, "h"))
    assert is_main(ImageRef("a.jpg", "a.jpg")) and is_main({"caption": "a dog"}) and is_main(row)


def test_load_summary_counts_distinct_copies_and_captioning_processes():
    # two processes sharing one copy (MultiProcessShared), then one process with its own copy
    loads = [("copy1", 2.5, 100, "h1"), ("copy1", 2.5, 101, "h1"), ("copy2", 1.0, 100, "h2")]
    assert load_summary(loads) == {"model_loads": 2, "model_load_seconds": 3.5, "worker_processes": 3}
    assert load_summary([]) == {"model_loads": 0, "model_load_seconds": 0, "worker_processes": 0}


def test_worker_reports_tag_loads_and_captions_per_process():
    assert list(worker_reports(ModelLoaded("id", 1.0, 7, "h"))) == [("load", ("id", 1.0, 7, "h"))]
    assert list(worker_reports(Captioned(3, 7, "h"))) == [("captioned_by", ("h:7", 3))]
    assert list(worker_reports({"caption": "a dog"})) == [] == list(worker_reports(Skipped("a.jpg")))
