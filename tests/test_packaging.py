"""What a cloud runner ships with ``--setup_file ./setup.py``: the sdist must hold every package
and the default model files, and the installed package must find its default model."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The report package with its package data: the page inlines these CSS / JS files.
REPORT_FILES = (
    "caption_report/__main__.py",
    "caption_report/render.py",
    "caption_report/static/report.css",
    "caption_report/static/report.js",
)


def test_sdist_contains_packages_and_default_model(tmp_path):
    res = subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)], cwd=REPO, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    (archive,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for module in (
        "run_pipeline.py",
        "setup.py",
        "model/lstm_decoder.py",
        "model/caption_search.py",
        "model/artifact.py",
        "training/train.py",
        "beam_pipeline/pipeline.py",
        "beam_pipeline/caption_handler.py",
        "models/__init__.py",
        "caption_index/__main__.py",
        "caption_index/cli.py",
        *REPORT_FILES,
    ):
        assert module in names, module
    for model_file in ("config.json", "vocab.json", "decoder.weights.h5", "manifest.json"):
        assert f"models/flickr8k-xception/{model_file}" in names, model_file
    assert not any(n.endswith((".pkl", ".pickle")) for n in names)
    assert not any("flickr8k/images" in n or n.endswith(".jpg") for n in names)  # never the data


def test_wheel_carries_the_report_static_files_and_entry_point(tmp_path):
    if importlib.util.find_spec("setuptools.command.bdist_wheel") is None:  # setuptools < 70.1
        pytest.importorskip("wheel")  # installed with TensorFlow (astunparse needs it)
    res = subprocess.run(
        [
            sys.executable,
            "setup.py",
            "-q",
            "build",
            "-b",
            str(tmp_path / "build"),
            "bdist_wheel",
            "-b",
            str(tmp_path / "bdist"),
            "-d",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = zf.read(entry_points).decode()
    for name in REPORT_FILES:
        assert name in names, name
    assert "models/flickr8k-xception/config.json" in names
    assert "caption-report = caption_report.cli:main" in scripts
    assert "caption-index = caption_index.cli:main" in scripts
    assert "caption_index/query.py" in names
    assert "beam_pipeline/report.py" not in names


def test_default_model_is_the_shipped_artifact():
    from beam_pipeline.options import default_model_uri
    from model.artifact import read_artifact

    contents = read_artifact(default_model_uri())
    assert contents.config.encoder.name == "xception"
    assert contents.config.encoder.weights == "imagenet"  # weights are not shipped, only named
    assert not (Path(default_model_uri()) / "encoder.weights.h5").exists()
