"""Lake inputs (issue 30): every matched entry is accounted for, and objects that change in place
are captioned again by ``--resume``.

The odd entries are real ones made on the local disk (broken and looping symbolic links, a
directory and a FIFO named like images); the listing is tested on its own and through a real
pipeline run with the tiny test model.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from beam_pipeline.dedupe import Done, has_changed
from beam_pipeline.listing import list_local
from beam_pipeline.records import ImageRef
from tests.factories import write_jpeg
from tests.pipeline_helpers import read_rows, run_pipeline

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ODD = {
    "broken.jpg": "BrokenSymlink",
    "loop_a.jpg": "SymlinkLoop",
    "loop_b.jpg": "SymlinkLoop",
    "album.jpg": "IsADirectory",
    "pipe.jpg": "NotARegularFile",
}


def _odd_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    write_jpeg(folder / "good.jpg", seed=1)
    (folder / "link.jpg").symlink_to(folder / "good.jpg")
    (folder / "broken.jpg").symlink_to(folder / "gone.jpg")
    (folder / "loop_a.jpg").symlink_to(folder / "loop_b.jpg")
    (folder / "loop_b.jpg").symlink_to(folder / "loop_a.jpg")
    (folder / "album.jpg").mkdir()
    write_jpeg(folder / "album.jpg" / "inside.jpg", seed=2)  # not matched by folder/*.jpg
    os.mkfifo(folder / "pipe.jpg")
    (folder / "notes.txt").write_text("not matched")
    return folder


def test_listing_names_every_matched_entry(tmp_path):
    folder = _odd_folder(tmp_path / "lake")
    refs = {Path(r.uri).name: r for r in list_local(f"{folder}/*.jpg")}
    assert set(refs) == {"good.jpg", "link.jpg", *ODD}
    assert {n: r.entry_error for n, r in refs.items() if r.entry_error} == ODD
    good = refs["good.jpg"]
    assert good.size_bytes == (folder / "good.jpg").stat().st_size
    assert good.modified_ms == (folder / "good.jpg").stat().st_mtime_ns // 1_000_000
    assert refs["link.jpg"].size_bytes == good.size_bytes  # links are followed
    # "**" crosses folders; a last segment of only "*" treats directories as containers.
    deep = {Path(r.uri).name for r in list_local(f"{folder}/**.jpg")}
    assert "inside.jpg" in deep and "album.jpg" in deep
    assert "album.jpg" not in {Path(r.uri).name for r in list_local(f"{folder}/*")}
    assert [r.entry_error for r in list_local(str(folder / "broken.jpg"))] == ["BrokenSymlink"]
    assert list(list_local(str(folder / "absent.jpg"))) == []
    cwd = os.getcwd()
    try:  # a relative pattern gives relative URIs, as Beam's matcher does
        os.chdir(folder)
        assert {r.uri for r in list_local("*.jpg")} == set(refs)
    finally:
        os.chdir(cwd)


def test_odd_entries_become_error_rows_and_are_counted(tmp_path, tiny_artifact):
    folder = _odd_folder(tmp_path / "lake")
    out = tmp_path / "out"
    summary = run_pipeline(["--input", f"{folder}/*.jpg", "--output", str(out), "--model", tiny_artifact])
    errors = {Path(r["image_uri"]).name: r for r in read_rows(out, "errors")}
    captions = read_rows(out, "captions")
    assert sorted(Path(r["image_uri"]).name for r in captions) == ["good.jpg", "link.jpg"]
    assert {n: r["error_type"] for n, r in errors.items()} == ODD
    assert all(r["stage"] == "read" and "not opened" in r["message"] for r in errors.values())
    assert summary["matched"] == 7 == summary["captioned"] + summary["failed"]
    (good,) = [r for r in captions if r["image_uri"].endswith("/good.jpg")]
    assert good["source_size"] == (folder / "good.jpg").stat().st_size
    assert good["source_mtime"].timestamp() == pytest.approx((folder / "good.jpg").stat().st_mtime, abs=0.002)


def test_has_changed_compares_only_what_both_sides_know():
    ref = ImageRef("/x/a.jpg", "a.jpg", 100, modified_ms=5_000)
    assert not has_changed(ref, Done("done"))  # an older row without the columns: unknown
    assert not has_changed(ref, Done("done", None, 100, None))
    assert has_changed(ref, Done("done", None, 101, None))
    assert has_changed(ref, Done("done", None, 100, 4_000))
    assert not has_changed(ImageRef("/x/a.jpg", "a.jpg"), Done("done", None, 7, 1))  # a manifest row: unknown


def test_resume_captions_changed_files_again_and_the_latest_row_wins(tmp_path, flickr8k, tiny_artifact):
    photos = sorted((flickr8k / "images").glob("*.jpg"))[:12]
    folder = tmp_path / "lake"
    folder.mkdir()
    for photo in photos[:8]:
        shutil.copyfile(photo, folder / photo.name)
    (folder / "bad.jpg").write_text("not a picture yet")
    out = tmp_path / "out"
    common = ["--input", f"{folder}/*.jpg", "--output", str(out), "--model", tiny_artifact]
    first = run_pipeline(common)
    assert (first["captioned"], first["failed"], first["recaptioned_changed"]) == (8, 1, 0)
    changed = [folder / p.name for p in photos[:3]]
    for target, replacement in zip(changed, photos[8:11]):
        shutil.copyfile(replacement, target)  # another photo under the same name
    shutil.copyfile(photos[11], folder / "bad.jpg")  # the broken file is fixed
    second = run_pipeline(common + ["--resume"])
    assert (second["captioned"], second["failed"], second["skipped_resume"]) == (4, 0, 5)
    assert second["recaptioned_changed"] == 4
    assert second["matched"] == second["captioned"] + second["failed"] + second["skipped_resume"]
    third = run_pipeline(common + ["--resume"])  # nothing changed since: nothing is redone
    assert (third["captioned"], third["recaptioned_changed"], third["skipped_resume"]) == (0, 0, 9)

    latest: dict[str, dict] = {}
    for row in read_rows(out, "captions") + read_rows(out, "errors"):
        if row["image_uri"] not in latest or row["processed_at"] > latest[row["image_uri"]]["processed_at"]:
            latest[row["image_uri"]] = row
    assert len(latest) == 9
    for path in [*changed, folder / "bad.jpg"]:
        row = latest[str(path)]
        assert row["image_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert row.get("caption") and row["source_size"] == path.stat().st_size
