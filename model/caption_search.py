"""Caption search: batched greedy and beam search over a step model (``StepModel``).

Pure NumPy, in the spirit of im2txt's ``caption_generator``: the step model is any object with
``initial_state(features)`` and ``step(word_ids, state)`` (``model.lstm_decoder.KerasStepModel``
and ``OpenVinoStepModel`` are the real ones, tests use small fakes); the state is a tuple of arrays whose
first axis is the row, so beams and finished images are handled by row selection.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from model.vocabulary import Vocabulary

State = tuple[np.ndarray, ...]


class StepModel(Protocol):
    """What the search needs of a network: advance one word at a time, carrying the recurrent
    state (implemented by ``model.lstm_decoder.KerasStepModel`` / ``OpenVinoStepModel``)."""

    def initial_state(self, features: np.ndarray) -> State: ...

    def step(self, word_ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """Return log-probabilities ``(rows, vocab)`` of the next word and the new state."""
        ...


@dataclass(frozen=True)
class DecodeSettings:
    """How captions are searched for; ``describe()`` is stored with every output row."""

    method: str = "beam"  # "greedy" or "beam"
    beam_width: int = 3
    length_alpha: float = 0.7  # beam ranking uses sum(logp) / len ** alpha
    max_length: int = 34  # max caption tokens including <start> and <end>

    def __post_init__(self) -> None:
        if self.method not in ("greedy", "beam"):
            raise ValueError(f"decode method must be 'greedy' or 'beam', not {self.method!r}")
        if self.beam_width < 1:
            raise ValueError("beam_width must be >= 1")
        if self.max_length < 2:
            raise ValueError("max_length must be >= 2")

    def describe(self) -> str:
        if self.method == "greedy":
            return f"greedy(max_len={self.max_length})"
        return f"beam(k={self.beam_width},alpha={self.length_alpha:g},max_len={self.max_length})"


@dataclass(frozen=True)
class Hypothesis:
    """A decoded caption: token ids (without <start>, with <end> when reached) and its log-prob."""

    token_ids: tuple[int, ...]
    logprob: float

    @property
    def score(self) -> float:
        """Mean token log-probability: a length-independent confidence in (-inf, 0]."""
        return self.logprob / max(1, len(self.token_ids))


def _select(state: State, rows: np.ndarray) -> State:
    return tuple(s[rows] for s in state)


def greedy_decode(decoder: StepModel, features: np.ndarray, start_id: int, end_id: int,
                  max_length: int) -> list[Hypothesis]:
    """Pick the most likely next word at every step, for a whole batch of images at once."""
    n = len(features)
    state = decoder.initial_state(features)
    words = np.full(n, start_id, dtype=np.int32)
    tokens: list[list[int]] = [[] for _ in range(n)]
    logprobs = np.zeros(n, dtype=np.float64)
    active = np.arange(n)  # original image index of each live row
    for _ in range(max_length - 1):
        logp, state = decoder.step(words, state)
        best = np.argmax(logp, axis=1)
        best_logp = logp[np.arange(len(best)), best]
        for row, image in enumerate(active):
            tokens[image].append(int(best[row]))
            logprobs[image] += float(best_logp[row])
        alive = best != end_id
        if not alive.any():
            break
        active, words, state = active[alive], best[alive].astype(np.int32), _select(state, np.flatnonzero(alive))
    return [Hypothesis(tuple(t), float(lp)) for t, lp in zip(tokens, logprobs)]


def beam_search(decoder: StepModel, features: np.ndarray, start_id: int, end_id: int,
                max_length: int, beam_width: int = 3, length_alpha: float = 0.7) -> list[Hypothesis]:
    """Keep the ``beam_width`` best partial captions per image; finished ones are ranked by
    ``logprob / len ** length_alpha``. All live beams of all images advance in one decoder call.

    An ending counts only when it ranks among the top ``beam_width`` extensions (so width 1 is
    exactly greedy); an image stops when its best finished caption scores at least as well as
    its best live beam would at the current length."""
    n = len(features)
    k = beam_width
    base = decoder.initial_state(features)
    # Live beams: one flat list of rows; per row its image, tokens and log-prob.
    state = base
    row_image = np.arange(n)
    row_tokens: list[tuple[int, ...]] = [() for _ in range(n)]
    row_logp = np.zeros(n, dtype=np.float64)
    words = np.full(n, start_id, dtype=np.int32)
    finished: list[list[Hypothesis]] = [[] for _ in range(n)]

    def normalised(h: Hypothesis) -> float:
        return h.logprob / max(1, len(h.token_ids)) ** length_alpha

    for step in range(max_length - 1):
        logp, state = decoder.step(words, state)
        last_step = step == max_length - 2
        keep_rows: list[int] = []
        keep_words: list[int] = []
        new_tokens: list[tuple[int, ...]] = []
        new_logp: list[float] = []
        new_image: list[int] = []
        for image in np.unique(row_image):
            rows = np.flatnonzero(row_image == image)
            total = row_logp[rows, None] + logp[rows]  # (beams, vocab)
            flat = total.ravel()
            take = min(flat.size, 2 * k)
            order = np.argpartition(-flat, take - 1)[:take]
            order = order[np.argsort(-flat[order], kind="stable")]
            kept = 0
            for rank, idx in enumerate(order):
                if kept == k:
                    break
                beam, word = divmod(int(idx), total.shape[1])
                row = int(rows[beam])
                hyp_tokens = row_tokens[row] + (word,)
                if word == end_id or last_step:
                    # Like HF/im2txt: an ending only counts if it ranks among the top k.
                    if rank < k:
                        finished[image].append(Hypothesis(hyp_tokens, float(flat[idx])))
                    continue
                keep_rows.append(row)
                keep_words.append(word)
                new_tokens.append(hyp_tokens)
                new_logp.append(float(flat[idx]))
                new_image.append(int(image))
                kept += 1
            live = [lp for lp, im in zip(new_logp, new_image) if im == image]
            if finished[image] and live:
                # HF-style stop: the best finished caption beats what the live beams score now.
                cur_len = step + 1
                if max(map(normalised, finished[image])) >= max(live) / cur_len ** length_alpha:
                    drop = [i for i, im in enumerate(new_image) if im == image]
                    for i in reversed(drop):
                        del keep_rows[i], keep_words[i], new_tokens[i], new_logp[i], new_image[i]
        if not keep_rows:
            break
        state = _select(state, np.asarray(keep_rows))
        words = np.asarray(keep_words, dtype=np.int32)
        row_tokens, row_logp, row_image = new_tokens, np.asarray(new_logp), np.asarray(new_image)
    results = []
    for image in range(n):
        results.append(max(finished[image], key=normalised))
    return results


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
        logp = np.array(logp, dtype=np.float64)
        logp[:, self.banned] = -np.inf
        top = logp.max(axis=1, keepdims=True)
        logp -= top + np.log(np.exp(logp - top).sum(axis=1, keepdims=True))
        return logp, state


def decode_batch(decoder: StepModel, features: np.ndarray, start_id: int, end_id: int,
                 settings: DecodeSettings, banned_ids: Sequence[int] = ()) -> list[Hypothesis]:
    """Decode a batch of image feature vectors with the given settings; ``banned_ids`` are
    never generated (callers ban padding, <start> and <unk>)."""
    if len(features) == 0:
        return []
    if len(banned_ids):
        decoder = BannedWords(decoder, banned_ids)
    if settings.method == "greedy":
        return greedy_decode(decoder, features, start_id, end_id, settings.max_length)
    return beam_search(decoder, features, start_id, end_id, settings.max_length,
                       settings.beam_width, settings.length_alpha)


def strip_end(token_ids: Sequence[int], end_id: int) -> list[int]:
    """Token ids up to (not including) the end token."""
    out = []
    for t in token_ids:
        if t == end_id:
            break
        out.append(int(t))
    return out


@dataclass(frozen=True)
class CaptionResult:
    """One caption: text, its words, and the mean token log-probability as a confidence."""

    caption: str
    tokens: tuple[str, ...]
    score: float


def caption_features(step_model: StepModel, vocab: Vocabulary, features: np.ndarray,
                     settings: DecodeSettings) -> list[CaptionResult]:
    """Captions of a batch of encoder feature vectors: the one features -> captions path of the
    project (``model.captioner.CaptionModel`` for the pipeline, ``training.evaluate`` for scores).
    Padding, <start> and <unk> are never generated."""
    hyps = decode_batch(step_model, np.asarray(features, np.float32), vocab.start_id, vocab.end_id, settings,
                        vocab.never_generated)
    results = []
    for hyp in hyps:
        words = tuple(vocab.decode(strip_end(hyp.token_ids, vocab.end_id)))
        results.append(CaptionResult(" ".join(words), words, float(hyp.score)))
    return results
