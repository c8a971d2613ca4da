"""Paper-style corpus BLEU-1..4 from additive sufficient statistics (pure Python, no TF/Beam).

Corpus BLEU (Papineni et al. 2002) micro-averages n-gram precision: it sums clipped matches
and hypothesis n-gram counts over all segments before dividing. Those sums, plus the summed
hypothesis and closest-reference lengths, are all it needs, so a distributed combine can
accumulate a :class:`BleuStats` per worker, merge them, and still get exactly the number
``nltk.translate.bleu_score.corpus_bleu`` gives on the whole corpus. The tests check that
equality to 1e-12 for each of the four weight vectors in :data:`BLEU_WEIGHTS`.

nltk behaviour mirrored here (nltk 3.10, ``corpus_bleu`` with no smoothing):

* Per segment and order ``n`` the denominator is ``max(1, number of hypothesis n-grams)``,
  so a hypothesis shorter than ``n`` (even an empty one) still adds 1 to ``totals[n-1]``.
* Clipping uses, per hypothesis n-gram, the largest count in any single reference.
* The closest reference length breaks ties towards the shorter reference; a segment with no
  reference is an error (nltk raises ``KeyError`` or ``ValueError``; we raise ``ValueError``).
* An empty corpus has no BLEU: nltk dies with ``ZeroDivisionError`` building ``Fraction(0, 0)``;
  :func:`corpus_bleu_from_stats` raises ``ValueError`` (and the Beam combine outputs ``None``).
* If the corpus has no unigram match at all (this covers all-empty hypotheses), every BLEU
  score is 0, whatever the lengths (nltk returns before the brevity penalty matters).
* Otherwise a zero higher-order numerator does *not* zero the score: nltk's ``method0``
  replaces that precision with ``sys.float_info.min`` (and warns), so the order adds
  ``weight * log(2.2e-308)``: nothing when its weight is 0 (BLEU-1's zeros), a score of
  about 1e-154 for BLEU-2, and so on. We use the same constant, without the warning.
* Brevity penalty: 1 if ``hyp_len > ref_len``, 0 if ``hyp_len == 0``, else
  ``exp(1 - ref_len / hyp_len)``; the score is ``bp * exp(fsum(w_n * log(p_n)))``.
* ``corpus_bleu`` only computes orders up to ``len(weights)``; orders with zero weight that
  it does compute contribute exactly 0, so one set of statistics for n = 1..4 serves all
  four scores.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from model.text import END, PAD, SPECIAL_TOKENS, START, UNK, clean_tokens  # noqa: F401 - re-exported

# Stripped before scoring. <unk> is kept: it is a real model output that matches no reference
# word (references are cleaned text, which can never contain "<" or ">").
STRIPPED_TOKENS = frozenset({START, END, PAD})

MAX_N = 4
BLEU_WEIGHTS: dict[str, tuple[float, ...]] = {
    "bleu1": (1.0, 0.0, 0.0, 0.0),
    "bleu2": (0.5, 0.5, 0.0, 0.0),
    "bleu3": (1 / 3, 1 / 3, 1 / 3),
    "bleu4": (0.25, 0.25, 0.25, 0.25),
}
# What nltk's SmoothingFunction.method0 substitutes for a zero precision.
_ZERO_PRECISION = sys.float_info.min


def bleu_tokens(text_or_tokens: str | Sequence[str] | None) -> list[str]:
    """Tokenise a caption (text or tokens) the way BLEU is scored in the paper-style recipe.

    Text and token lists go through the same rules: whitespace-split, drop ``<start>``,
    ``<end>`` and ``<pad>`` (case-insensitively), keep ``<unk>`` verbatim, and clean every
    other token with :func:`model.text.clean_tokens` (lowercase, no punctuation or digits,
    no one-letter words except "a"). For text without special tokens this equals
    ``clean_tokens(text)``.
    """
    if text_or_tokens is None:
        return []
    pieces: Iterable[str] = text_or_tokens.split() if isinstance(text_or_tokens, str) else text_or_tokens
    out: list[str] = []
    for piece in pieces:
        lowered = str(piece).strip().lower()
        if lowered in STRIPPED_TOKENS:
            continue
        if lowered == UNK:
            out.append(UNK)
        else:
            out.extend(clean_tokens(lowered))
    return out


@dataclass
class BleuStats:
    """Sufficient statistics of corpus BLEU up to ``len(matches)``-grams; additive over segments.

    ``totals[n-1]`` is nltk's precision denominator: per segment ``max(1, #hypothesis n-grams)``.
    ``ref_len`` sums each segment's closest reference length (ties go to the shorter one).
    """

    matches: list[int] = field(default_factory=lambda: [0] * MAX_N)
    totals: list[int] = field(default_factory=lambda: [0] * MAX_N)
    hyp_len: int = 0
    ref_len: int = 0
    count: int = 0

    def __post_init__(self) -> None:
        if len(self.matches) != len(self.totals) or not self.matches:
            raise ValueError(
                f"matches and totals need the same non-zero length, got {len(self.matches)} and {len(self.totals)}"
            )

    @property
    def max_n(self) -> int:
        """Highest n-gram order these statistics cover."""
        return len(self.matches)

    @classmethod
    def zero(cls, max_n: int = MAX_N) -> BleuStats:
        """The identity of :meth:`merge` (no segments)."""
        return cls([0] * max_n, [0] * max_n, 0, 0, 0)

    def merge(self, other: BleuStats) -> BleuStats:
        """Return the statistics of both corpora together (neither input is changed)."""
        if other.max_n != self.max_n:
            raise ValueError(f"cannot merge BLEU stats of max_n {self.max_n} and {other.max_n}")
        return BleuStats(
            [a + b for a, b in zip(self.matches, other.matches)],
            [a + b for a, b in zip(self.totals, other.totals)],
            self.hyp_len + other.hyp_len,
            self.ref_len + other.ref_len,
            self.count + other.count,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (plain ints and lists)."""
        return {
            "matches": list(self.matches),
            "totals": list(self.totals),
            "hyp_len": self.hyp_len,
            "ref_len": self.ref_len,
            "count": self.count,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BleuStats:
        """Inverse of :meth:`to_dict`."""
        return cls(
            [int(x) for x in data["matches"]],
            [int(x) for x in data["totals"]],
            int(data["hyp_len"]),
            int(data["ref_len"]),
            int(data["count"]),
        )


def _check_tokens(tokens: Sequence[str], what: str) -> list[str]:
    """Materialise a token sequence, refusing a bare string (it would be scored per character)."""
    if isinstance(tokens, str):
        raise TypeError(f"{what} must be a sequence of tokens, not a str; use bleu_tokens()")
    return list(tokens)


def _ngram_counts(tokens: Sequence[str], n: int) -> Counter:
    """Counter of the n-grams (tuples) of ``tokens``; empty when it is shorter than n."""
    return Counter(zip(*(tokens[i:] for i in range(n))))


def segment_stats(hypothesis: Sequence[str], references: Sequence[Sequence[str]], max_n: int = MAX_N) -> BleuStats:
    """BLEU statistics of one hypothesis against its references (both already tokenised).

    Mirrors nltk's ``modified_precision``, ``closest_ref_length`` and length bookkeeping, so
    folding these with :meth:`BleuStats.merge` reproduces ``corpus_bleu``'s sums.
    """
    if max_n < 1:
        raise ValueError(f"max_n must be >= 1, got {max_n}")
    hyp = _check_tokens(hypothesis, "hypothesis")
    refs = [_check_tokens(ref, "each reference") for ref in references]
    if not refs:
        raise ValueError("BLEU needs at least one reference per hypothesis")
    matches: list[int] = []
    totals: list[int] = []
    for n in range(1, max_n + 1):
        counts = _ngram_counts(hyp, n)
        max_ref = dict.fromkeys(counts, 0)
        if counts:
            for ref in refs:
                ref_counts = _ngram_counts(ref, n)
                for gram in counts:
                    c = ref_counts.get(gram, 0)
                    if c > max_ref[gram]:
                        max_ref[gram] = c
        matches.append(sum(min(c, max_ref[g]) for g, c in counts.items()))
        totals.append(max(1, sum(counts.values())))
    hyp_len = len(hyp)
    ref_len = min((len(ref) for ref in refs), key=lambda r: (abs(r - hyp_len), r))
    return BleuStats(matches, totals, hyp_len, ref_len, 1)


def _brevity_penalty(ref_len: int, hyp_len: int) -> float:
    """nltk's ``brevity_penalty`` on corpus-summed lengths."""
    if hyp_len > ref_len:
        return 1.0
    if hyp_len == 0:
        return 0.0
    return math.exp(1 - ref_len / hyp_len)


def corpus_bleu_from_stats(stats: BleuStats) -> dict[str, float]:
    """BLEU-1..4 (uniform weights, no smoothing) from accumulated statistics, as nltk computes them.

    Raises ``ValueError`` for statistics of no segment (nltk fails on an empty corpus too).
    """
    if stats.max_n < MAX_N:
        raise ValueError(f"BLEU-1..4 need statistics up to 4-grams, got max_n={stats.max_n}")
    if stats.count == 0:
        raise ValueError("corpus BLEU of an empty corpus is undefined (no segments)")
    if stats.matches[0] == 0:
        return {name: 0.0 for name in BLEU_WEIGHTS}
    bp = _brevity_penalty(stats.ref_len, stats.hyp_len)
    # Python ints divide with correct rounding, as float(Fraction(num, den)) does in nltk.
    precisions = [num / den if num != 0 else _ZERO_PRECISION for num, den in zip(stats.matches, stats.totals)]
    return {
        name: bp * math.exp(math.fsum(w * math.log(p) for w, p in zip(weights, precisions)))
        for name, weights in BLEU_WEIGHTS.items()
    }


def corpus_bleu_scores(
    hypotheses: Iterable[Sequence[str]], references_list: Iterable[Sequence[Sequence[str]]]
) -> dict[str, float]:
    """Corpus BLEU-1..4 of tokenised hypotheses, each with its list of tokenised references."""
    hyps = list(hypotheses)
    refs_list = list(references_list)
    if len(hyps) != len(refs_list):
        raise ValueError(f"got {len(hyps)} hypotheses but {len(refs_list)} reference lists")
    total = BleuStats.zero()
    for hyp, refs in zip(hyps, refs_list):
        total = total.merge(segment_stats(hyp, refs))
    return corpus_bleu_from_stats(total)


def sentence_bleu_scores(hypothesis: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Per-row sentence BLEU-1..4, smoothed with Chen & Cherry method 1 (epsilon 0.1).

    Unsmoothed sentence BLEU is 0 (or ~1e-154) for almost every short caption because some
    3- or 4-gram order has no match; method 1 adds 0.1 to zero numerators instead, which keeps
    per-row scores informative for ranking. Corpus scores never use smoothing. Still 0 when
    no unigram matches. Computed by nltk itself (imported lazily: it is slow to import).
    """
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    hyp = _check_tokens(hypothesis, "hypothesis")
    refs = [_check_tokens(ref, "each reference") for ref in references]
    if not refs:
        raise ValueError("BLEU needs at least one reference per hypothesis")
    scores = sentence_bleu(
        refs,
        hyp,
        weights=list(BLEU_WEIGHTS.values()),
        smoothing_function=SmoothingFunction().method1,
    )
    return {name: float(score) for name, score in zip(BLEU_WEIGHTS, scores)}
