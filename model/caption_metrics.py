"""Corpus CIDEr-D and ROUGE-L for captions (pure Python + NumPy, no TF/Beam).

Both follow the COCO caption evaluation code (``pycocoevalcap``), which is the field's reference,
so our numbers compare with published ones; the tests check equality with that package on the
same tokens. Tokens come from :func:`model.bleu.bleu_tokens`, the same tokenisation BLEU uses
(lowercase, punctuation stripped) instead of the Java PTB tokenizer.

CIDEr-D (Vedantam et al. 2015, as in ``pycocoevalcap.cider``): TF-IDF vectors of 1..4-grams with
document frequencies over the corpus' reference sets; per order the cosine similarity with each
reference, with the hypothesis' TF-IDF clipped at the reference's, a Gaussian length penalty
(sigma 6) and ×10; averaged over references, orders and images. The reference code's "length"
counts bigrams (its ``n == 1`` is the second order): mirrored on purpose.

ROUGE-L (Lin 2004, as in ``pycocoevalcap.rouge``): longest common subsequence, F-measure of the
best precision and best recall over the references with beta 1.2; the corpus score is the mean.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence

CIDER_N = 4
CIDER_SIGMA = 6.0
ROUGE_BETA = 1.2

Tokens = Sequence[str]


def _ngrams(tokens: Tokens, max_n: int = CIDER_N) -> Counter:
    counts: Counter = Counter()
    for n in range(1, max_n + 1):
        for i in range(len(tokens) - n + 1):
            counts[tuple(tokens[i : i + n])] += 1
    return counts


def _tfidf(counts: Counter, doc_freq: Counter, log_corpus: float) -> tuple[list[dict], list[float], int]:
    vec: list[dict] = [defaultdict(float) for _ in range(CIDER_N)]
    norm = [0.0] * CIDER_N
    length = 0
    for gram, tf in counts.items():
        n = len(gram) - 1
        value = float(tf) * (log_corpus - math.log(max(1.0, doc_freq[gram])))
        vec[n][gram] = value
        norm[n] += value * value
        if n == 1:  # the reference implementation's length: bigram count
            length += tf
    return vec, [math.sqrt(x) for x in norm], length


def _cider_sim(hyp: tuple, ref: tuple) -> list[float]:
    (vh, nh, lh), (vr, nr, lr) = hyp, ref
    penalty = math.exp(-((lh - lr) ** 2) / (2 * CIDER_SIGMA**2))
    out = []
    for n in range(CIDER_N):
        val = sum(min(v, vr[n].get(g, 0.0)) * vr[n].get(g, 0.0) for g, v in vh[n].items())
        if nh[n] != 0 and nr[n] != 0:
            val /= nh[n] * nr[n]
        out.append(val * penalty)
    return out


class CiderD:
    """CIDEr-D with document frequencies fixed by one reference corpus (``corpus``: a reference
    set per image). Scoring a corpus against its own references is the COCO definition; SCST
    rewards use the training references' frequencies instead (Rennie et al. 2017)."""

    def __init__(self, corpus: Sequence[Sequence[Tokens]]) -> None:
        if not corpus:
            raise ValueError("CIDEr-D needs a non-empty reference corpus")
        self.doc_freq: Counter = Counter()
        for refs in corpus:
            self.doc_freq.update({g for r in refs for g in _ngrams(r)})
        self.log_corpus = math.log(float(len(corpus)))

    def prepare(self, references: Sequence[Tokens]) -> list[tuple]:
        """The TF-IDF vectors of one image's references (reused for every hypothesis of it)."""
        if not references:
            raise ValueError("every hypothesis needs at least one reference")
        return [_tfidf(_ngrams(r), self.doc_freq, self.log_corpus) for r in references]

    def score(self, hypothesis: Tokens, prepared: Sequence[tuple]) -> float:
        """CIDEr-D of one hypothesis against ``prepare``-d references."""
        h = _tfidf(_ngrams(hypothesis), self.doc_freq, self.log_corpus)
        total = [0.0] * CIDER_N
        for r in prepared:
            total = [a + b for a, b in zip(total, _cider_sim(h, r))]
        return sum(total) / CIDER_N / len(prepared) * 10.0


def cider_d_segments(hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> list[float]:
    """CIDEr-D of each hypothesis against its references (document frequencies over the corpus)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference sets")
    if not hypotheses:
        raise ValueError("CIDEr-D of an empty corpus is undefined")
    scorer = CiderD(references)
    return [scorer.score(hyp, scorer.prepare(refs)) for hyp, refs in zip(hypotheses, references)]


def cider_d(hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> float:
    """Corpus CIDEr-D: the mean of :func:`cider_d_segments`."""
    scores = cider_d_segments(hypotheses, references)
    return sum(scores) / len(scores)


def _lcs(a: Tokens, b: Tokens) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l_segment(hypothesis: Tokens, references: Sequence[Tokens]) -> float:
    """ROUGE-L F-measure (beta 1.2) of one hypothesis: best precision and best recall."""
    if not references:
        raise ValueError("every hypothesis needs at least one reference")
    precisions, recalls = [], []
    for ref in references:
        common = _lcs(hypothesis, ref)
        precisions.append(common / len(hypothesis) if hypothesis else 0.0)
        recalls.append(common / len(ref) if ref else 0.0)
    p, r = max(precisions), max(recalls)
    if p == 0 or r == 0:
        return 0.0
    return (1 + ROUGE_BETA**2) * p * r / (r + ROUGE_BETA**2 * p)


def rouge_l(hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> float:
    """Corpus ROUGE-L: the mean of the per-hypothesis scores."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference sets")
    if not hypotheses:
        raise ValueError("ROUGE-L of an empty corpus is undefined")
    return sum(rouge_l_segment(h, refs) for h, refs in zip(hypotheses, references)) / len(hypotheses)
