"""Dataset flags shared by train and evaluate, and a split's items with their cached features."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

import numpy as np

from training.datasets import CaptionedImage, read_caption_table, read_flickr8k
from training.features import ExtractionReport, FeatureCache, extract_features, feature_cache_key

log = logging.getLogger("training")

DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "image-captioning", "features")


def add_data_arguments(parser: argparse.ArgumentParser, with_dev: bool = True) -> None:
    """Dataset, encoder and feature-cache flags shared by train and evaluate."""
    g = parser.add_argument_group("data")
    g.add_argument("--flickr8k", help="Flickr8k root (Flickr8k.token.txt, split lists, images/)")
    g.add_argument("--images-dir", default="images", help="image folder inside the Flickr8k root")
    g.add_argument("--table", help="caption table (CSV/TSV/JSONL/Parquet) for the split being read")
    if with_dev:
        g.add_argument("--dev-table", help="caption table of the dev split (with --table)")
    g.add_argument("--image-column", default="image", help="image path/URI column of --table files")
    g.add_argument("--caption-column", default="caption", help="caption column of --table files")
    g.add_argument("--id-column", default=None, help="image id column of --table files (default: the file name)")
    g.add_argument(
        "--encoder-weights",
        default=None,
        help="encoder weights: 'imagenet' (download), a path or fsspec URI to an HDF5 file",
    )
    g.add_argument("--cache-dir", default=DEFAULT_CACHE, help="feature cache directory")
    g.add_argument(
        "--extract-batch-size", type=int, default=32, help="images per encoder batch while filling the feature cache"
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def read_split(args: argparse.Namespace, split: str) -> list[CaptionedImage]:
    if args.flickr8k:
        return read_flickr8k(args.flickr8k, split, images_dir=args.images_dir)
    table = args.dev_table if split == "dev" and getattr(args, "dev_table", None) else args.table
    if not table:
        raise SystemExit("give --flickr8k ROOT or --table FILE (and --dev-table FILE for training)")
    return read_caption_table(table, args.image_column, args.caption_column, args.id_column)


def load_split_features(
    args: argparse.Namespace,
    split: str,
    encoder_name: str,
    weights: str | None,
    image_size: tuple[int, int],
    encoder: Any = None,
    spatial: bool = False,
) -> tuple[list[CaptionedImage], np.ndarray, ExtractionReport]:
    """Items of a split that have features, their feature matrix, and what was skipped.
    ``spatial``: the encoder's last convolutional maps, cached and returned as float16
    ``(n, h, w, d)``; else pooled float32 vectors ``(n, d)``."""
    from model.encoder import ImageEncoder, weights_fingerprint

    items = read_split(args, split)
    cache = FeatureCache(
        args.cache_dir,
        feature_cache_key(encoder_name, image_size, weights_fingerprint(weights), spatial=spatial),
        dtype=np.float16 if spatial else np.float32,
    )
    todo = [it for it in items if it.image_id not in cache]
    if todo and encoder is None:
        # Built on first use only: when every uncached image is missing or undecodable (they are
        # retried, and reported, on every run) no encoder is needed at all.
        built: list[ImageEncoder] = []

        def encoder(images: np.ndarray) -> np.ndarray:
            if not built:
                built.append(ImageEncoder(encoder_name, weights, image_size, spatial=spatial))
            return built[0](images)

    report = (
        extract_features(
            items, encoder, image_size, cache, batch_size=args.extract_batch_size, progress=not args.no_progress
        )
        if todo
        else ExtractionReport(cached=len(items))
    )
    kept = [it for it in items if it.image_id in cache]
    skipped = len(items) - len(kept)
    log.info(
        "%s: %d images listed, %d with features, %d skipped (missing %d, undecodable %d)",
        split,
        len(items),
        len(kept),
        skipped,
        len(report.missing),
        len(report.undecodable),
    )
    if not kept:
        raise SystemExit(f"no usable images in the {split} split")
    feats = cache.stacked([it.image_id for it in kept])
    return kept, feats, report
