"""The rewards of self-critical sequence training (``training.scst``): CIDEr-D of sampled captions
against their image's references (``CiderReward``), their findability among the batch's captions
or among a pool of other images' captions (``FindabilityReward``, after Luo et al. 2018), and the
advantage of each sample over its baseline (``advantages``). Pure NumPy; no TensorFlow."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from model.bleu import bleu_tokens
from model.caption_metrics import CiderD
from model.retrieval_metrics import BM25Index, reciprocal_rank_among
from model.vocabulary import Vocabulary


class CiderReward:
    """CIDEr-D of token-id captions against each image's references, DF from ``corpus``."""

    def __init__(
        self, vocab: Vocabulary, references: Sequence[Sequence[str]], corpus: Sequence[Sequence[str]] | None = None
    ) -> None:
        tokenised = [[bleu_tokens(c) for c in refs] for refs in references]
        self.vocab = vocab
        self.scorer = CiderD(tokenised if corpus is None else [[bleu_tokens(c) for c in refs] for refs in corpus])
        self.prepared = [self.scorer.prepare(refs) for refs in tokenised]

    def __call__(self, image_index: Sequence[int], token_ids: np.ndarray) -> np.ndarray:
        """Rewards of rows ``token_ids`` (``[<start>, w1 .. <end>, pad ..]``) of images ``image_index``."""
        return np.asarray(
            [
                self.scorer.score(bleu_tokens(self.vocab.decode(row[1:])), self.prepared[i])
                for i, row in zip(image_index, token_ids)
            ],
            np.float64,
        )


class FindabilityReward:
    """Discriminability of sampled captions: per row, E[1/rank] of its image when each of the
    image's references is searched with BM25 (ties in expectation, ``model.retrieval_metrics``),
    one document per image. A caption that could describe any image scores ~1/documents; one that
    only fits its own image scores 1. (Luo et al. 2018 use a learned retrieval model; BM25 is what
    the captions' users search with.)

    Two sets of documents to rank against:

    * ``pool_size`` 0: the captions of the same sample slot of all the batch's images (16 images:
      an easier search than the 1,000 images of the dev metric);
    * ``pool_size`` N: N distractor captions of other training images set by :meth:`set_pool`
      (the decoder's greedy captions, refreshed each epoch by ``training.scst``), the sample scored
      as if added to their index: the harder search of the dev metric (1,000 images).
    """

    def __init__(self, vocab: Vocabulary, references: Sequence[Sequence[str]], pool_size: int = 0) -> None:
        if pool_size < 0:
            raise ValueError("the findability pool size must be >= 0")
        self.vocab = vocab
        self.references = [list(refs) for refs in references]
        self.pool_size = pool_size
        self._pool_images = np.zeros(0, np.int64)
        self._pool_index: BM25Index | None = None

    def text(self, row: np.ndarray) -> str:
        """The caption of a token-id row ``[<start>, w1 .. <end>, pad ..]``, as BM25 reads it."""
        return " ".join(bleu_tokens(self.vocab.decode(row[1:])))

    def set_pool(self, image_index: Sequence[int], token_ids: np.ndarray) -> None:
        """The distractors: captions (token-id rows) of training images ``image_index``. A row's
        own image is left out of its ranking."""
        if len(image_index) != len(token_ids):
            raise ValueError("one caption per pool image")
        self._pool_images = np.asarray(image_index, np.int64)
        self._pool_index = BM25Index([self.text(row) for row in token_ids])

    def __call__(self, image_index: Sequence[int], token_ids: np.ndarray, samples: int) -> np.ndarray:
        """Rewards of rows grouped ``samples`` per image (image-major, as ``advantages``)."""
        if self.pool_size:
            return self._against_pool(image_index, token_ids)
        from model.retrieval_metrics import findability

        texts = [self.text(row) for row in token_ids]
        images = list(image_index)[::samples]
        out = np.zeros(len(texts), np.float64)
        for slot in range(samples):
            documents = texts[slot::samples]
            for j, image in enumerate(images):
                queries = [(j, ref) for ref in self.references[image]]
                out[j * samples + slot] = findability(documents, queries).mrr if queries else 0.0
        return out

    def _against_pool(self, image_index: Sequence[int], token_ids: np.ndarray) -> np.ndarray:
        index = self._pool_index
        if index is None:
            raise RuntimeError("set_pool() first: the pooled findability reward has no distractors")
        pool_scores: dict[int, list[np.ndarray]] = {}  # per image, its references' scores of the pool
        out = np.zeros(len(token_ids), np.float64)
        for r, (image, row) in enumerate(zip(image_index, token_ids)):
            image = int(image)
            refs = self.references[image]
            if not refs:
                continue
            if image not in pool_scores:
                others = self._pool_images != image
                pool_scores[image] = [index.scores(ref)[others] for ref in refs]
            text = self.text(row)
            out[r] = float(
                np.mean(
                    [
                        reciprocal_rank_among(scores, index.score_outside(ref, text))
                        for ref, scores in zip(refs, pool_scores[image])
                    ]
                )
            )
        return out


def advantages(rewards: np.ndarray, samples: int, baseline: np.ndarray | None = None) -> np.ndarray:
    """Reward minus baseline for rewards grouped ``samples`` per image (rows image-major): the
    given per-image ``baseline`` (greedy), else the mean of the image's *other* samples."""
    r = np.asarray(rewards, np.float64).reshape(-1, samples)
    if baseline is not None:
        return (r - np.asarray(baseline, np.float64)[:, None]).reshape(-1)
    others = (r.sum(axis=1, keepdims=True) - r) / (samples - 1)
    return (r - others).reshape(-1)
