"""What a cloud runner ships with ``--setup_file ./setup.py``: the sdist must hold every package
and the default model files, and the installed package must find its default model."""
from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_sdist_contains_packages_and_default_model(tmp_path):
    res = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    (archive,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for module in ("run_pipeline.py", "setup.py", "model/lstm_decoder.py", "model/caption_search.py", "model/artifact.py",
                   "training/train.py", "beam_pipeline/pipeline.py", "beam_pipeline/inference.py",
                   "models/__init__.py"):
        assert module in names, module
    for model_file in ("config.json", "vocab.json", "decoder.weights.h5", "manifest.json"):
        assert f"models/flickr8k-xception/{model_file}" in names, model_file
    assert not any(n.endswith((".pkl", ".pickle")) for n in names)
    assert not any("flickr8k/images" in n or n.endswith(".jpg") for n in names)  # never the data


def test_default_model_is_the_shipped_artifact():
    from beam_pipeline.options import default_model_uri
    from model.artifact import read_artifact

    contents = read_artifact(default_model_uri())
    assert contents.config.encoder.name == "xception"
    assert contents.config.encoder.weights == "imagenet"  # weights are not shipped, only named
    assert not (Path(default_model_uri()) / "encoder.weights.h5").exists()
