"""Shared fixtures: paths to the real data beside the checkout and a tiny model artifact."""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CAPTION_SHARED_DIR", REPO.parent / "shared"))
XCEPTION_WEIGHTS = SHARED / "models" / "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"
FLICKR8K = SHARED / "data" / "flickr8k"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: renders HTML in headless Chromium")
    config.addinivalue_line("markers", "slow: runs a real model or a multi-process pipeline")
    # Downloads and converted OpenVINO graphs go to a folder of this test run (pipelines started
    # as subprocesses inherit it), not to the user's cache.
    config._caption_cache = tempfile.mkdtemp(prefix="caption-tests-cache-")
    os.environ["CAPTION_CACHE_DIR"] = config._caption_cache


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(getattr(config, "_caption_cache", ""), ignore_errors=True)


@pytest.fixture(scope="session")
def xception_weights() -> Path:
    """The real ImageNet Xception weights; tests skip (with this reason) only when absent."""
    if not XCEPTION_WEIGHTS.is_file():
        pytest.skip(f"real ImageNet Xception weights not found at {XCEPTION_WEIGHTS}")
    return XCEPTION_WEIGHTS


@pytest.fixture(scope="session")
def flickr8k() -> Path:
    if not (FLICKR8K / "Flickr8k.token.txt").is_file():
        pytest.skip(f"Flickr8k data not found at {FLICKR8K}")
    return FLICKR8K


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small self-contained artifact (MobileNetV3Small encoder weights embedded)."""
    from tests.factories import make_tiny_artifact

    path = tmp_path_factory.mktemp("tiny-model") / "model"
    make_tiny_artifact(str(path))
    return str(path)


@pytest.fixture(scope="session")
def tiny_attention_artifact(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small attention artifact (format 3): MobileNetV3Small weights embedded, whose 2x2x576 map
    feeds a soft and an adaptive decoder (random weights)."""
    from tests.factories import make_tiny_attention_artifact

    path = tmp_path_factory.mktemp("tiny-attention-model") / "model"
    make_tiny_attention_artifact(str(path), kinds=("soft", "adaptive"))
    return str(path)


@pytest.fixture(scope="module")
def photo_tables(tmp_path_factory) -> Path:
    """train.csv (calibration) and dev.csv (gate) tables of small real JPEGs with captions."""
    from tests.factories import TINY_CAPTIONS, write_jpeg

    root = tmp_path_factory.mktemp("int8-data")
    for split, seeds in (("train", range(0, 8)), ("dev", range(100, 106))):
        with open(root / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "caption"])
            for i, seed in enumerate(seeds):
                write_jpeg(root / "images" / f"{split}{i}.jpg", size=(72, 64), seed=seed)
                writer.writerow([f"images/{split}{i}.jpg", TINY_CAPTIONS[i % len(TINY_CAPTIONS)]])
    return root
