"""Caption priors log p(c) for MMI reranking (``DecodeSettings.mmi_lambda``), pure NumPy.

MMI reranking (Li et al. 2016, "A diversity-promoting objective") prefers captions that are likely
for *this* image but unlikely in general: score = log p(c|image) - lambda * log p(c). Two priors:

* :class:`DecoderPrior`: the captioner itself, fed one fixed "average image" feature (the mean
  training feature): its log p(c) measures how generic a caption is *for this decoder*, and it
  needs nothing but a 2048-d vector beside the artifact. Costs one teacher-forced decoder pass over
  the candidates.
* :class:`NgramPrior`: an interpolated Kneser-Ney n-gram model of the training captions' token
  ids (Chen & Goodman 1999, one discount 0.75): no decoder calls.

Both score token ids after <start>, with <end> when the caption reached it (as ``Hypothesis``).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from model.step_model import StepModel


class DecoderPrior:
    """log p(c | feature) from a step model with one fixed feature vector for every caption."""

    def __init__(self, step_model: StepModel, feature: np.ndarray, start_id: int, batch_rows: int = 256) -> None:
        self.step_model = step_model
        self.feature = np.asarray(feature, np.float32).reshape(1, -1)
        self.start_id = start_id
        self.batch_rows = batch_rows

    def logprob(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Teacher-forced sum of log-probabilities of each sequence (0.0 for an empty one)."""
        out = np.zeros(len(token_ids), np.float64)
        for start in range(0, len(token_ids), self.batch_rows):
            chunk = token_ids[start : start + self.batch_rows]
            out[start : start + len(chunk)] = self._chunk(chunk)
        return out

    def _chunk(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        total = np.zeros(len(token_ids), np.float64)
        nonempty = [i for i, t in enumerate(token_ids) if len(t)]
        if nonempty:
            total[nonempty] = self._forced([token_ids[i] for i in nonempty])
        return total

    def _forced(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        n = len(token_ids)
        lengths = np.array([len(t) for t in token_ids])
        width = int(lengths.max())
        padded = np.zeros((n, width), np.int64)
        for i, t in enumerate(token_ids):
            padded[i, : len(t)] = t
        total = np.zeros(n, np.float64)
        state = self.step_model.initial_state(np.repeat(self.feature, n, axis=0))
        words = np.full(n, self.start_id, np.int32)
        rows = np.arange(n)  # rows still running, as indices into token_ids
        for t in range(width):
            logp, state = self.step_model.step(words, state)
            total[rows] += logp[np.arange(len(rows)), padded[rows, t]]
            more = lengths[rows] > t + 1
            if not more.any():
                break
            keep = np.flatnonzero(more)
            rows = rows[keep]
            state = tuple(s[keep] for s in state)
            words = padded[rows, t].astype(np.int32)
        return total


class NgramPrior:
    """Interpolated Kneser-Ney ``order``-gram model over token-id sequences; histories start with
    ``order - 1`` copies of ``start_id``. The unigram level is interpolated with a uniform
    distribution over ``vocab_size`` ids, so no id has probability 0."""

    def __init__(
        self, sequences: Iterable[Sequence[int]], vocab_size: int, start_id: int, order: int = 3, discount: float = 0.75
    ) -> None:
        if order < 1 or not 0 < discount < 1:
            raise ValueError("n-gram prior needs order >= 1 and 0 < discount < 1")
        self.order, self.discount, self.vocab_size, self.start_id = order, discount, vocab_size, start_id
        # counts[k][history][word]: k = history length; the top order uses raw counts, lower
        # orders continuation counts (distinct words seen before history + word).
        top: dict[tuple, Counter] = defaultdict(Counter)
        for seq in sequences:
            padded = (start_id,) * (order - 1) + tuple(int(w) for w in seq)
            for i in range(order - 1, len(padded)):
                top[padded[i - order + 1 : i]][padded[i]] += 1
        self.counts: list[dict[tuple, Counter]] = [defaultdict(Counter) for _ in range(order)]
        self.counts[order - 1] = top
        for k in range(order - 1, 0, -1):
            for history, words in self.counts[k].items():
                for w in words:
                    self.counts[k - 1][history[1:]][w] += 1
        self._totals = [{h: sum(c.values()) for h, c in level.items()} for level in self.counts]
        self._cache: dict[tuple, float] = {}

    def _prob(self, history: tuple, word: int) -> float:
        key = (history, word)
        if key in self._cache:
            return self._cache[key]
        k = len(history)
        lower = self._prob(history[1:], word) if k else 1.0 / self.vocab_size
        words = self.counts[k].get(history)
        if not words:
            p = lower
        else:
            total = self._totals[k][history]
            p = (max(words.get(word, 0) - self.discount, 0.0) + self.discount * len(words) * lower) / total
        self._cache[key] = p
        return p

    def word_logprobs(self) -> np.ndarray:
        """log p(word) for every id (order 1 only: a context-free prior for step-wise MMI)."""
        if self.order != 1:
            raise ValueError(f"word_logprobs needs a unigram prior, this one has order {self.order}")
        return np.log([self._prob((), w) for w in range(self.vocab_size)])

    def logprob(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Sum over tokens of log p(token | previous order-1 tokens)."""
        out = np.zeros(len(token_ids), np.float64)
        for i, seq in enumerate(token_ids):
            padded = (self.start_id,) * (self.order - 1) + tuple(int(w) for w in seq)
            out[i] = sum(
                np.log(self._prob(padded[j - self.order + 1 : j], padded[j]))
                for j in range(self.order - 1, len(padded))
            )
        return out
