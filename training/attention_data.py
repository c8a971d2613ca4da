"""Training data of the attention decoders: caption id tables, batches of whole images with all
their captions (``image_batches``, as a tf.data pipeline in ``make_image_dataset``), and the dev
scores the runs are chosen by (``dev_quality``: caption metrics, distinct captions, findability)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from model.text import clean_tokens
from model.vocabulary import Vocabulary
from training.datasets import CaptionedImage


def caption_table(
    items: Sequence[CaptionedImage], vocab: Vocabulary, max_length: int, per_image: int | None = None
) -> np.ndarray:
    """Token ids ``(images, per_image, max_length)``: each image's non-empty captions, padded with
    all-padding rows (which weigh nothing in the loss)."""
    per_image = per_image or max(1, max(len(it.captions) for it in items))
    table = np.zeros((len(items), per_image, max_length), np.int32)
    for i, item in enumerate(items):
        rows = [vocab.encode(c, max_length) for c in item.captions if clean_tokens(c)][:per_image]
        for j, ids in enumerate(rows):
            table[i, j, : len(ids)] = ids
    return table


def image_batches(
    maps: np.ndarray, captions: np.ndarray, batch_images: int, shuffle: bool, seed: int
) -> Iterator[tuple[tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray]]:
    """Batches ``((maps, caption[:-1]), caption[1:], weight)`` of whole images, cut to the longest
    caption of the batch; ``weight`` masks padding and makes the loss a mean over real tokens.
    ``maps`` ``(images, ..., feature_dim)`` keep their dtype (float16 from the cache)."""
    n = len(maps)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch_images):
        idx = np.sort(order[start : start + batch_images])
        caps = captions[idx]
        length = int(np.flatnonzero((caps > 0).any(axis=(0, 1)))[-1]) + 1 if caps.any() else 2
        caps = caps[:, :, : max(length, 2)]
        target = caps[:, :, 1:]
        weight = (target > 0).astype(np.float32)
        weight /= max(weight.mean(), 1e-9)
        x = maps[idx]
        yield (x.reshape(len(idx), -1, x.shape[-1]), caps[:, :, :-1]), target, weight


def make_image_dataset(maps: np.ndarray, captions: np.ndarray, batch_images: int, shuffle: bool, seed: int) -> Any:
    """``image_batches`` as a tf.data pipeline (a new shuffle every epoch)."""
    import tensorflow as tf

    epochs = iter(range(1 << 30))
    regions = int(np.prod(maps.shape[1:-1]))
    k = captions.shape[1]
    spec = tf.TensorSpec((None, k, None), tf.int32)
    signature = (
        (tf.TensorSpec((None, regions, maps.shape[-1]), tf.as_dtype(maps.dtype)), spec),
        spec,
        tf.TensorSpec((None, k, None), tf.float32),
    )
    batches = -(-len(maps) // batch_images)
    return (
        tf.data.Dataset.from_generator(
            lambda: image_batches(maps, captions, batch_images, shuffle, seed + next(epochs)),
            output_signature=signature,
        )
        .apply(tf.data.experimental.assert_cardinality(batches))
        .prefetch(2)
    )


def dev_quality(captions: Sequence[Sequence[str]], items: Sequence[CaptionedImage]) -> dict[str, float]:
    """BLEU-1..4, CIDEr-D, ROUGE-L, distinct-caption share and BM25 findability (R@1/5/10, MRR,
    median rank; queries: references #2-#5 of each image) of one caption per item; without any
    second reference (a one-caption table) the findability columns are left out."""
    from model.retrieval_metrics import findability
    from training.evaluate import caption_scores

    scores = caption_scores(captions, items)
    texts = [" ".join(c) for c in captions]
    scores["distinct"] = len(set(texts)) / max(1, len(texts))
    queries = [(i, ref) for i, it in enumerate(items) for ref in it.captions[1:5]]
    if not queries:
        return scores
    report = findability(texts, queries)
    scores.update(
        r_at_1=report.r_at_1,
        r_at_5=report.r_at_5,
        r_at_10=report.r_at_10,
        mrr=report.mrr,
        median_rank=report.median_rank,
    )
    return scores
