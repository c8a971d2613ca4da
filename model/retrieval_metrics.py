"""Findability of captions: can a person's own words find the image? (pure Python + NumPy).

One document per image (its caption), queried with other people's descriptions of the images.
The score is Okapi BM25 (Robertson et al.) with Lucene's non-negative IDF:

    idf(q)        = ln(1 + (N - n(q) + 0.5) / (n(q) + 0.5))
    score(D, Q)   = sum over query tokens q of idf(q) * f(q, D) * (k1 + 1)
                                      / (f(q, D) + k1 * (1 - b + b * |D| / avgdl))

where N is the number of documents, n(q) the number containing q, f(q, D) the count of q in D
and avgdl the mean document length in tokens. A token repeated in the query counts each time.
Tokens are :func:`model.text.clean_tokens` (the cleaning the vocabulary and BLEU use).

Ties are broken in expectation, so identical captions never win by their order: with ``g``
documents scoring above the target and ``t`` tied with it (target included), the target's
position is uniform over ``g+1 .. g+t``. Then P(rank <= k) = clip((k - g) / t, 0, 1),
E[1/rank] = mean(1/p for p in g+1..g+t) and the expected rank is g + (t + 1) / 2. R@k and MRR
average these over queries; the median rank is the median of the expected ranks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.text import clean_tokens

RECALL_AT = (1, 5, 10)


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens of ``text``, with the same cleaning as :mod:`model.text`."""
    return clean_tokens(text)


class BM25Index:
    """A BM25 index over ``documents`` (one per image, in order; empty documents are allowed and
    never match). ``k1`` >= 0 saturates term frequency, ``b`` in [0, 1] normalises length."""

    def __init__(self, documents: Sequence[str], k1: float = 1.2, b: float = 0.75) -> None:
        if k1 < 0 or not 0.0 <= b <= 1.0:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1, self.b = float(k1), float(b)
        tokenized = [tokenize(d) for d in documents]
        self.num_documents = len(tokenized)
        lengths = np.array([len(t) for t in tokenized], dtype=np.float64)
        self.avgdl = avgdl = float(lengths.mean()) if len(lengths) else 0.0
        # k1 * (1 - b + b * |D| / avgdl): the length normaliser of each document
        norm = self.k1 * (1.0 - self.b + self.b * (lengths / avgdl if avgdl > 0 else 0.0))
        postings: dict[str, tuple[list[int], list[int]]] = {}
        for doc, tokens in enumerate(tokenized):
            for term, tf in Counter(tokens).items():
                docs, tfs = postings.setdefault(term, ([], []))
                docs.append(doc)
                tfs.append(tf)
        # Per term: its idf, and (document ids, precomputed idf * tf * (k1 + 1) / (tf + norm)).
        self._idf: dict[str, float] = {}
        self._weights: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for term, (docs, tfs) in postings.items():
            ids = np.array(docs, dtype=np.int64)
            self._idf[term] = self._idf_of(len(docs))
            self._weights[term] = (ids, self._weight(self._idf[term], np.array(tfs, dtype=np.float64), norm[ids]))

    def _idf_of(self, n: int) -> float:
        """Lucene's non-negative idf of a term in ``n`` of the index's documents."""
        return float(np.log1p((self.num_documents - n + 0.5) / (n + 0.5)))

    def _weight(self, idf: float, tf: Any, norm: Any) -> Any:
        """idf * tf * (k1 + 1) / (tf + norm): a term's score in a document (scalars or arrays)."""
        return idf * tf * (self.k1 + 1.0) / (tf + norm)

    def scores(self, query: str) -> np.ndarray:
        """One BM25 score per document (float64, length ``num_documents``); all zero when no
        query token occurs in the index."""
        out = np.zeros(self.num_documents, dtype=np.float64)
        for term in tokenize(query):
            hit = self._weights.get(term)
            if hit is not None:
                out[hit[0]] += hit[1]
        return out

    def score_outside(self, query: str, document: str) -> float:
        """BM25 score of a ``document`` that is not in the index, with the index's statistics
        (N, document frequencies, avgdl) left as they are: how it would rank if added to a large
        index (what the SCST findability reward asks of a sampled caption). A term the index lacks
        gets the idf of a term in no document."""
        tokens = tokenize(document)
        if not tokens:
            return 0.0
        counts = Counter(tokens)
        ratio = len(tokens) / self.avgdl if self.avgdl > 0 else 0.0
        norm = self.k1 * (1.0 - self.b + self.b * ratio)
        unseen = self._idf_of(0)
        return float(sum(self._weight(self._idf.get(t, unseen), counts[t], norm) for t in tokenize(query) if counts[t]))


def expected_reciprocal_rank(above: int, tied: int) -> float:
    """E[1/rank] of a document with ``above`` documents scoring higher and ``tied`` equal to
    it (itself included), its position uniform over the tie group."""
    if above < 0 or tied < 1:
        raise ValueError("need above >= 0 and a tie group of at least the document itself")
    return float(np.mean(1.0 / np.arange(above + 1, above + tied + 1)))


def reciprocal_rank_among(others: np.ndarray, score: float) -> float:
    """E[1/rank] of a document scoring ``score`` among documents scoring ``others`` (itself not
    among them), ties in expectation."""
    above, tied = _above_and_tied_score(np.asarray(others), score)
    return expected_reciprocal_rank(above, tied + 1)


def _above_and_tied_score(scores: np.ndarray, score: float) -> tuple[int, int]:
    """(how many ``scores`` are above ``score``, how many equal it)."""
    return int(np.count_nonzero(scores > score)), int(np.count_nonzero(scores == score))


def _above_and_tied(scores: np.ndarray, target: int) -> tuple[int, int]:
    """(documents scoring above the target, documents tied with it including the target)."""
    scores = np.asarray(scores)
    if not 0 <= target < len(scores):
        raise ValueError(f"target {target} is not a document index (0..{len(scores) - 1})")
    return _above_and_tied_score(scores, scores[target])


def expected_rank(scores: np.ndarray, target: int) -> float:
    """1-based rank of document ``target`` with ties broken in expectation:
    1 + #(scores > s_t) + #(scores == s_t, excluding target) / 2."""
    above, tied = _above_and_tied(scores, target)
    return above + (tied + 1) / 2.0


@dataclass(frozen=True)
class FindabilityReport:
    """Retrieval quality over ``queries`` queries. ``r_at_k``: share of queries whose document is
    in the top k (in expectation over tie orders); ``mrr``: mean of E[1/rank]; ``median_rank``:
    median of the expected ranks (1 is best)."""

    r_at_1: float
    r_at_5: float
    r_at_10: float
    mrr: float
    median_rank: float
    queries: int


def _report(above: np.ndarray, tied: np.ndarray) -> FindabilityReport:
    """Aggregate per-query (above, tied) counts under the uniform tie rule."""
    if len(above) == 0:
        raise ValueError("findability needs at least one query")
    above = np.asarray(above, dtype=np.float64)
    tied = np.asarray(tied, dtype=np.float64)
    if np.any(above < 0) or np.any(tied < 1):
        raise ValueError("each query needs above >= 0 and a tie group of at least its target")
    recall = [float(np.mean(np.clip((k - above) / tied, 0.0, 1.0))) for k in RECALL_AT]
    reciprocal = [expected_reciprocal_rank(int(g), int(t)) for g, t in zip(above, tied)]
    ranks = above + (tied + 1.0) / 2.0
    return FindabilityReport(
        r_at_1=recall[0],
        r_at_5=recall[1],
        r_at_10=recall[2],
        mrr=float(np.mean(reciprocal)),
        median_rank=float(np.median(ranks)),
        queries=len(above),
    )


def findability(documents: Sequence[str], queries: Sequence[tuple[int, str]]) -> FindabilityReport:
    """BM25 (k1 1.2, b 0.75) over ``documents``, one per image; each query is (index of the right
    document, query text). Raises ValueError for no queries or an index outside the documents."""
    index = BM25Index(documents)
    counts = [_above_and_tied(index.scores(text), target) for target, text in queries]
    return _report(np.array([c[0] for c in counts]), np.array([c[1] for c in counts]))


def findability_of_ranks(ranks: Sequence[float]) -> FindabilityReport:
    """The report for exact 1-based ranks from another search backend (e.g. LanceDB results turned
    into ranks): each rank r is one untied position, so R@k counts r <= k and MRR averages 1/r.
    A fractional (expected) rank is used as it is. Raises ValueError for no ranks or a rank < 1."""
    r = np.asarray(ranks, dtype=np.float64)
    if r.size == 0:
        raise ValueError("findability needs at least one query")
    if np.any(r < 1):
        raise ValueError("ranks are 1-based")
    recall = [float(np.mean(r <= k)) for k in RECALL_AT]
    return FindabilityReport(
        r_at_1=recall[0],
        r_at_5=recall[1],
        r_at_10=recall[2],
        mrr=float(np.mean(1.0 / r)),
        median_rank=float(np.median(r)),
        queries=int(r.size),
    )
