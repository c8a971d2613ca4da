"""Caption priors for MMI reranking built from the training split (``model.caption_prior``),
and the training captions that novelty is measured against.

* ``decoder``: the artifact's own step model fed the mean float32 encoder feature of the first
  ``--prior-images`` training images (through training's feature cache);
* ``ngram``: an interpolated Kneser-Ney trigram over the training captions' vocabulary ids;
* ``unigram``: the same model of order 1 (word frequencies only: penalises common words).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import numpy as np

from model.caption_prior import DecoderPrior, NgramPrior
from model.caption_search import CaptionPrior, StepModel

log = logging.getLogger(__name__)

PRIORS = ("decoder", "ngram", "unigram")
DEFAULT_PRIOR_IMAGES = 500


def add_prior_arguments(parser: argparse.ArgumentParser) -> None:
    """``--mmi-prior`` and ``--prior-images`` (shared by evaluate and bench_quality)."""
    parser.add_argument("--mmi-prior", choices=PRIORS, default="decoder", help="log p(c) for MMI reranking")
    parser.add_argument(
        "--prior-images",
        type=int,
        default=DEFAULT_PRIOR_IMAGES,
        help="training images whose mean feature feeds the decoder prior",
    )


def training_captions(args: argparse.Namespace) -> list[str] | None:
    """Every caption of the training split (Flickr8k only; None with --table)."""
    if not getattr(args, "flickr8k", None):
        return None
    from training.splits import read_split

    return [c for item in read_split(args, "train") for c in item.captions]


def mean_training_feature(args: argparse.Namespace, contents: Any, images: int) -> np.ndarray:
    """Mean float32 encoder feature of the first ``images`` training images (encoded once, cached)."""
    from model.encoder import ImageEncoder, weights_fingerprint
    from training.features import FeatureCache, extract_features, feature_cache_key
    from training.splits import read_split

    enc = contents.config.encoder
    items = read_split(args, "train")[:images]
    weights = contents.encoder_weights
    cache = FeatureCache(args.cache_dir, feature_cache_key(enc.name, enc.image_size, weights_fingerprint(weights)))
    if any(it.image_id not in cache for it in items):
        built: list[ImageEncoder] = []  # built on first use: missing or undecodable images need none

        def encoder(images: np.ndarray) -> np.ndarray:
            if not built:
                built.append(ImageEncoder(enc.name, weights, enc.image_size))
            return built[0](images)

        extract_features(
            items, encoder, enc.image_size, cache, batch_size=args.extract_batch_size, progress=not args.no_progress
        )
    feats = [cache.get(it.image_id) for it in items if it.image_id in cache]
    if not feats:
        raise SystemExit("no training image could be encoded for the decoder prior")
    log.info("decoder prior: mean feature of %d training images", len(feats))
    return np.mean(np.stack(feats).astype(np.float64), axis=0).astype(np.float32)


def build_prior(
    kind: str, args: argparse.Namespace, contents: Any, step_model: StepModel, images: int = DEFAULT_PRIOR_IMAGES
) -> CaptionPrior:
    """The ``kind`` prior (``decoder`` or ``ngram``) of an artifact, from the training split."""
    vocab = contents.vocab
    if kind == "decoder":
        return DecoderPrior(step_model, mean_training_feature(args, contents, images), vocab.start_id)
    if kind in ("ngram", "unigram"):
        captions = training_captions(args)
        if captions is None:
            raise SystemExit("the n-gram prior needs the Flickr8k training captions (--flickr8k)")
        max_len = contents.config.decoder.max_length
        return NgramPrior(
            (vocab.encode(c, max_len)[1:] for c in captions),
            len(vocab),
            vocab.start_id,
            order=3 if kind == "ngram" else 1,
        )
    raise ValueError(f"unknown caption prior {kind!r}; known: {PRIORS}")
