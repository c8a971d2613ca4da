"""The rewards of self-critical sequence training (``training.scst``): CIDEr-D of sampled captions
against their image's references (``CiderReward``), their findability among the batch's captions
(``FindabilityReward``, after Luo et al. 2018), and the advantage of each sample over its baseline
(``advantages``). Pure NumPy; no TensorFlow."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from model.bleu import bleu_tokens
from model.caption_metrics import CiderD
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
    image's references is searched (BM25 with ties in expectation, ``model.retrieval_metrics``)
    over the captions of the same sample slot of all the batch's images, one document per image.
    A caption that could describe any image of the batch scores ~1/batch; one that only fits its
    own image scores 1. (Luo et al. 2018 use a learned retrieval model; BM25 is what the
    captions' users search with.)"""

    def __init__(self, vocab: Vocabulary, references: Sequence[Sequence[str]]) -> None:
        self.vocab = vocab
        self.references = [list(refs) for refs in references]

    def __call__(self, image_index: Sequence[int], token_ids: np.ndarray, samples: int) -> np.ndarray:
        """Rewards of rows grouped ``samples`` per image (image-major, as ``advantages``)."""
        from model.retrieval_metrics import findability

        texts = [" ".join(bleu_tokens(self.vocab.decode(row[1:]))) for row in token_ids]
        images = list(image_index)[::samples]
        out = np.zeros(len(texts), np.float64)
        for slot in range(samples):
            documents = texts[slot::samples]
            for j, image in enumerate(images):
                queries = [(j, ref) for ref in self.references[image]]
                out[j * samples + slot] = findability(documents, queries).mrr if queries else 0.0
        return out


def advantages(rewards: np.ndarray, samples: int, baseline: np.ndarray | None = None) -> np.ndarray:
    """Reward minus baseline for rewards grouped ``samples`` per image (rows image-major): the
    given per-image ``baseline`` (greedy), else the mean of the image's *other* samples."""
    r = np.asarray(rewards, np.float64).reshape(-1, samples)
    if baseline is not None:
        return (r - np.asarray(baseline, np.float64)[:, None]).reshape(-1)
    others = (r.sum(axis=1, keepdims=True) - r) / (samples - 1)
    return (r - others).reshape(-1)
