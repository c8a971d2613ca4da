"""Step models that wrap another and change its next-word log-probabilities (``StepModel``):
words never generated, a per-word penalty (MMI during the search), and no repetition.

A filter that bans words sets them to -inf and renormalises the row (``ban``), so a caption's
score stays a proper log-probability (of the constrained distribution).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from model.step_model import State, StepModel

NEARLY_ALL = 1.0 - 1e-6  # a row whose banned words held more mass is renormalised in full


def ban(logp: np.ndarray, rows: np.ndarray, words: np.ndarray) -> np.ndarray:
    """``logp`` (float64, changed in place and returned) with each ``(rows[i], words[i])`` set to
    -inf (pairs may repeat) and its row renormalised: the banned probability mass ``b`` is taken
    out as ``- log(1 - b)``, which reads only the banned entries (a log-sum-exp over the whole
    vocabulary would read every entry at every step); a row that loses nearly all of its mass is
    renormalised in full instead, for precision."""
    vocab = logp.shape[1]
    flat = np.unique(np.asarray(rows, np.int64) * vocab + np.asarray(words, np.int64))
    r, w = np.divmod(flat, vocab)
    mass = np.bincount(r, weights=np.exp(logp[r, w]), minlength=len(logp))
    logp[r, w] = -np.inf
    full = mass > NEARLY_ALL
    logp -= np.where(full, 0.0, np.log1p(-np.minimum(mass, NEARLY_ALL)))[:, None]  # in place, one pass
    if full.any():
        part = logp[full]
        top = part.max(axis=1, keepdims=True)
        logp[full] = part - (top + np.log(np.exp(part - top).sum(axis=1, keepdims=True)))
    return logp


class WordPenalty:
    """Wrap a step decoder so every word's log-probability gets ``bias[word]`` added (MMI during
    the search: bias = -lambda * log p(word)); the result is a score, no longer normalised."""

    def __init__(self, decoder: StepModel, bias: np.ndarray) -> None:
        self.decoder = decoder
        self.bias = np.asarray(bias, np.float64)

    def initial_state(self, features: np.ndarray) -> State:
        return self.decoder.initial_state(features)

    def step(self, word_ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        logp, state = self.decoder.step(word_ids, state)
        return np.asarray(logp, np.float64) + self.bias, state


class BannedWords:
    """Wrap a step decoder so some ids (padding, start, unknown word) are never generated; the
    remaining log-probabilities are renormalised, so scores stay proper log-probabilities."""

    def __init__(self, decoder: StepModel, banned_ids: Sequence[int]) -> None:
        self.decoder = decoder
        self.banned = np.asarray(sorted(set(banned_ids)), dtype=np.int64)

    def initial_state(self, features: np.ndarray) -> State:
        return self.decoder.initial_state(features)

    def step(self, word_ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        logp, state = self.decoder.step(word_ids, state)
        rows = np.repeat(np.arange(len(logp)), len(self.banned))
        return ban(np.array(logp, dtype=np.float64), rows, np.tile(self.banned, len(logp))), state


def repeat_bans(history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, words) that would repeat: the row's last word again, or a word that completes a
    trigram the row already holds. ``history``: each row's words so far ``(rows, t)``, last word
    last (``<start>`` first)."""
    rows = [np.arange(len(history))]
    words = [history[:, -1]]
    if history.shape[1] >= 3:
        # (w[j], w[j+1]) == (w[t-2], w[t-1]) for some j <= t-3: then w[j+2] would repeat a trigram
        match = (history[:, :-2] == history[:, -2:-1]) & (history[:, 1:-1] == history[:, -1:])
        r, j = np.nonzero(match)
        rows.append(r)
        words.append(history[r, j + 2])
    return np.concatenate(rows), np.concatenate(words)


class NoRepeat:
    """Wrap a step decoder so no caption repeats a word straight away ("blue blue") or repeats a
    trigram ("black and black and black"); renormalised like ``BannedWords``. Each row's words so
    far ride in the state (its last entry), so row selection follows beams."""

    def __init__(self, decoder: StepModel) -> None:
        self.decoder = decoder

    def initial_state(self, features: np.ndarray) -> State:
        return (*self.decoder.initial_state(features), np.zeros((len(features), 0), np.int64))

    def step(self, word_ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        history = np.concatenate([state[-1], np.asarray(word_ids, np.int64)[:, None]], axis=1)
        logp, inner = self.decoder.step(word_ids, state[:-1])
        rows, words = repeat_bans(history)
        return ban(np.array(logp, dtype=np.float64), rows, words), (*inner, history)
