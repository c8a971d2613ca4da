"""``--inventory`` (issue 30): a run without the model that accounts for every matched entry.

Real Flickr8k photos (copies and hard links: identical content under other names), real bad
files and odd entries on the local disk, the real pipeline on the DirectRunner and on a Dask
cluster started by the test on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from PIL import Image

from beam_pipeline.inventory import RECORDED_RATES, estimate
from beam_pipeline.preflight import PreflightError
from tests.pipeline_helpers import run_pipeline

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

BAD = {
    "text.jpg": "NotAnImage",
    "empty.jpg": "EmptyFile",
    "broken.jpg": "BrokenSymlink",
    "album.jpg": "IsADirectory",
    "pipe.jpg": "NotARegularFile",
}


@pytest.fixture()
def lake(tmp_path: Path, flickr8k: Path) -> tuple[Path, list[Path]]:
    photos = sorted((flickr8k / "images").glob("*.jpg"))[:4]
    folder = tmp_path / "lake"
    folder.mkdir()
    for photo in photos:
        shutil.copyfile(photo, folder / photo.name)
    for i in range(3):  # the first photo three more times, under other names
        os.link(folder / photos[0].name, folder / f"link{i}.jpg")
    (folder / "text.jpg").write_text("<html>not an image</html>")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "broken.jpg").symlink_to(folder / "gone.jpg")
    (folder / "album.jpg").mkdir()
    os.mkfifo(folder / "pipe.jpg")
    return folder, photos


def _rows(out: Path) -> dict[str, dict]:
    rows = pads.dataset(str(out / "inventory"), format="parquet").to_table().to_pylist()
    assert len(rows) == len({r["image_uri"] for r in rows}) or any(r["error_type"] == "DuplicateInput" for r in rows)
    return {Path(r["image_uri"]).name + ("#dup" if r["error_type"] == "DuplicateInput" else ""): r for r in rows}


def _check(summary: dict, out: Path, folder: Path, photos: list[Path]) -> None:
    rows = _rows(out)
    assert summary["matched"] == len(rows) == 4 + 3 + len(BAD) + 2  # + a duplicate URI and a NoMatch glob
    assert summary["readable"] == 7 and summary["unreadable"] == len(BAD) + 2
    assert summary["unreadable_by_type"] == {**{t: 1 for t in BAD.values()}, "DuplicateInput": 1, "NoMatch": 1}
    # content: 4 photos, the text file, the empty file
    assert summary["distinct_content"] == 6 and summary["duplicate_inputs"] == 3
    assert summary["bytes"] == sum(p.stat().st_size for p in photos) + 3 * photos[0].stat().st_size + 25
    for name, error_type in BAD.items():
        assert rows[name]["error_type"] == error_type and rows[name]["message"]
    photo = photos[1]
    row = rows[photo.name]
    with Image.open(photo) as img:
        assert (row["format"], row["width"], row["height"]) == ("JPEG", *img.size)
    assert row["sha256"] == hashlib.sha256(photo.read_bytes()).hexdigest() and row["error_type"] is None
    assert row["bytes"] == row["source_size"] == photo.stat().st_size
    assert rows["link2.jpg"]["sha256"] == rows[photos[0].name]["sha256"]
    assert rows["empty.jpg"]["sha256"] == hashlib.sha256(b"").hexdigest() and rows["broken.jpg"]["sha256"] is None
    assert rows[f"{photos[2].name}#dup"]["error_type"] == "DuplicateInput"
    est = summary["estimate"]
    assert est["images"] == 7 and est["rates"].startswith("recorded")
    assert est["per_precision"]["int8"]["core_hours"] < est["per_precision"]["float32"]["core_hours"]
    assert not (out / "captions").exists() and not (out / "errors").exists()  # no caption or error rows
    assert json.loads((out / "inventory_summary.json").read_text()) == summary


def _args(folder: Path, out: Path, photos: list[Path]) -> list[str]:
    return [
        "--inventory",
        "--input",
        f"{folder}/*.jpg",
        "--input",
        str(folder / photos[2].name),
        "--input",
        f"{folder}/none/*.jpg",
        "--output",
        str(out),
    ]


def test_inventory_counts_every_input_without_the_model(lake, tmp_path):
    folder, photos = lake
    out = tmp_path / "out"
    summary = run_pipeline(_args(folder, out, photos) + ["--model", str(tmp_path / "no-such-model")])
    _check(summary, out, folder, photos)
    with pytest.raises(PreflightError, match="already holds an inventory"):
        run_pipeline(_args(folder, out, photos))
    with pytest.raises(PreflightError, match="writes no captions"):
        run_pipeline(_args(folder, tmp_path / "out2", photos) + ["--report"])


def test_inventory_on_a_dask_cluster(lake, tmp_path):
    pytest.importorskip("dask.distributed")
    from tests.engine_services import dask_cluster, dask_runner_flags

    folder, photos = lake
    out = tmp_path / "out"
    with dask_cluster(tmp_path / "logs", workers=2) as address:
        summary = run_pipeline(_args(folder, out, photos) + dask_runner_flags(address, 2))
    assert summary["runner"] == "DaskRunner"
    _check(summary, out, folder, photos)


def test_estimate_uses_the_per_core_rate():
    est = estimate(1_000_000, cores=8)
    fp32 = est["per_precision"]["float32"]
    assert fp32["core_hours"] == pytest.approx(1_000_000 / RECORDED_RATES["float32"] / 3600, rel=1e-3)
    assert fp32["wall_hours_on_cores"] == pytest.approx(fp32["core_hours"] / 8, rel=1e-3)


def test_the_command_line_prints_a_short_inventory_summary(lake, tmp_path):
    """``run_pipeline.py --inventory`` without --json prints the inventory's own short summary
    (it used to fail after writing the inventory: the caption summary has other fields)."""
    import subprocess
    import sys

    folder, photos = lake
    out = tmp_path / "out"
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, str(repo / "run_pipeline.py"), *_args(folder, out, photos)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    summary = json.loads((out / "inventory_summary.json").read_text())
    assert lines[0] == (
        f"Inventory of 14 inputs: 7 readable, 6 distinct contents, 3 duplicate inputs, {summary['bytes']} bytes"
    )
    assert lines[1].startswith(f"Unreadable: {len(BAD) + 2} (") and "BrokenSymlink 1" in lines[1]
    assert "int8" in lines[2] and "core-hours" in lines[2]
    assert lines[-1] == f"Outputs: {out}/inventory, {out}/inventory_summary.json" and len(lines) == 4
