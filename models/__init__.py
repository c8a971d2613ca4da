"""Shipped model artifacts (data, not code). ``DEFAULT_MODEL_DIR`` is the pipeline's default."""

from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "flickr8k-xception"
