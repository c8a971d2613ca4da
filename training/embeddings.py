"""Initial word vectors for the decoder's Embedding layer.

As in the seed, vectors can come from Word2Vec trained on the training captions (gensim), from a
word2vec/GloVe text file, or the layer is learned from scratch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import fsspec
import numpy as np

from model.vocabulary import SPECIAL_TOKENS, Vocabulary

log = logging.getLogger(__name__)


def train_word2vec(
    sentences: Iterable[Sequence[str]], dim: int, seed: int = 0, epochs: int = 20, window: int = 5, min_count: int = 1
) -> dict[str, np.ndarray]:
    """Skip-gram Word2Vec on tokenised captions; one worker so results are reproducible."""
    from gensim.models import Word2Vec

    model = Word2Vec(
        sentences=[list(s) for s in sentences],
        vector_size=dim,
        window=window,
        min_count=min_count,
        sg=1,
        seed=seed,
        workers=1,
        epochs=epochs,
    )
    return {word: model.wv[word].astype(np.float32) for word in model.wv.index_to_key}


def load_text_vectors(uri: str, vocabulary: Vocabulary | None = None) -> dict[str, np.ndarray]:
    """Read a word2vec/GloVe text file (``word v1 v2 …`` per line; a word2vec header line is
    skipped). Only words of ``vocabulary`` are kept when given, to bound memory."""
    keep = set(vocabulary.tokens) if vocabulary is not None else None
    vectors: dict[str, np.ndarray] = {}
    dim = None
    with fsspec.open(uri, "rt", encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f):
            parts = line.rstrip().split(" ")
            if line_no == 0 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue  # word2vec header: "<count> <dim>"
            if len(parts) < 2:
                continue
            word, values = parts[0], parts[1:]
            if dim is None:
                dim = len(values)
            if len(values) != dim:
                raise ValueError(f"{uri} line {line_no + 1}: {len(values)} values, expected {dim}")
            if keep is None or word in keep:
                vectors[word] = np.asarray(values, dtype=np.float32)
    if not vectors:
        raise ValueError(f"no usable word vectors in {uri}")
    return vectors


def embedding_matrix(
    vocab: Vocabulary, vectors: Mapping[str, np.ndarray], dim: int, seed: int = 0
) -> tuple[np.ndarray, float]:
    """Initial Embedding weights: known words get their vector; others a random vector of the
    same scale; padding stays zero. Returns the matrix and the share of words covered."""
    sample = next(iter(vectors.values()))
    if sample.shape[0] != dim:
        raise ValueError(f"word vectors have {sample.shape[0]} dimensions but embedding_dim is {dim}")
    scale = float(np.std(np.stack(list(vectors.values())[:5000])))
    rng = np.random.default_rng(seed)
    matrix = rng.normal(0.0, scale, size=(len(vocab), dim)).astype(np.float32)
    matrix[vocab.pad_id] = 0.0
    words = [w for w in vocab.tokens if w not in SPECIAL_TOKENS]
    covered = 0
    for word in words:
        vec = vectors.get(word)
        if vec is not None:
            matrix[vocab.id_of(word)] = vec
            covered += 1
    return matrix, covered / max(1, len(words))
