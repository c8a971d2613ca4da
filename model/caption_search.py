"""Caption search: batched greedy and beam search over a step model (``StepModel``).

Pure NumPy, in the spirit of im2txt's ``caption_generator``: the step model is any object with
``initial_state(features)`` and ``step(word_ids, state)`` (``model.lstm_decoder.KerasStepModel``
and ``OpenVinoStepModel`` are the real ones, tests use small fakes); the state is a tuple of arrays whose
first axis is the row, so beams and finished images are handled by row selection. An entry may
instead be ``PerImage``: arrays with one entry per image, shared by that image's rows (the model
keeps a per-row image index in the state to find them), which row selection does not copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from model.step_filters import BannedWords, NoRepeat, WordPenalty
from model.step_model import StepModel, select_rows
from model.vocabulary import Vocabulary


@dataclass(frozen=True)
class DecodeSettings:
    """How captions are searched for; ``describe()`` is stored with every output row."""

    method: str = "beam"  # "greedy" or "beam"
    beam_width: int = 3
    length_alpha: float = 0.7  # beam ranking uses sum(logp) / len ** alpha
    max_length: int = 34  # max caption tokens including <start> and <end>
    # MMI reranking of the beam's finished captions: (log p(c|image) - mmi_lambda * log p(c)) /
    # len ** alpha, with log p(c) from a caption prior (``model.caption_prior``). 0 = off.
    mmi_lambda: float = 0.0
    # "rerank": the beam's finished captions; "step": every word's log-prob gets -mmi_lambda *
    # log p(word) of a context-free (unigram) prior during the search itself (not <end>).
    mmi_mode: str = "rerank"
    # no caption repeats a word straight away or a trigram (``model.step_filters.NoRepeat``)
    no_repeat: bool = False

    def __post_init__(self) -> None:
        if self.method not in ("greedy", "beam"):
            raise ValueError(f"decode method must be 'greedy' or 'beam', not {self.method!r}")
        if self.beam_width < 1:
            raise ValueError("beam_width must be >= 1")
        if self.max_length < 2:
            raise ValueError("max_length must be >= 2")
        if self.mmi_lambda < 0:
            raise ValueError("mmi_lambda must be >= 0")
        if self.mmi_mode not in ("rerank", "step"):
            raise ValueError(f"mmi_mode must be 'rerank' or 'step', not {self.mmi_mode!r}")
        if self.mmi_lambda and self.mmi_mode == "rerank" and self.method != "beam":
            raise ValueError("MMI reranking needs beam search (it reranks the beam's candidates)")

    @classmethod
    def parse(cls, spec: str, max_length: int) -> DecodeSettings:
        """A command line's search: ``greedy`` or ``beam:WIDTH:ALPHA``, either followed by
        ``:no_repeat`` (ValueError naming the form otherwise)."""
        parts = spec.split(":")
        no_repeat = parts[-1] == "no_repeat"
        parts = parts[:-1] if no_repeat else parts
        try:
            if parts == ["greedy"]:
                return cls("greedy", max_length=max_length, no_repeat=no_repeat)
            if len(parts) == 3 and parts[0] == "beam":
                return cls("beam", int(parts[1]), float(parts[2]), max_length, no_repeat=no_repeat)
        except ValueError:
            pass
        raise ValueError(f"a search is greedy or beam:WIDTH:ALPHA, optionally with :no_repeat, not {spec!r}")

    def describe(self) -> str:
        mmi = f",{'mmi' if self.mmi_mode == 'rerank' else 'mmi_step'}={self.mmi_lambda:g}" if self.mmi_lambda else ""
        mmi += ",no_repeat" if self.no_repeat else ""
        if self.method == "greedy":
            return f"greedy({mmi[1:]}{',' if mmi else ''}max_len={self.max_length})"
        return f"beam(k={self.beam_width},alpha={self.length_alpha:g}{mmi},max_len={self.max_length})"


class CaptionPrior(Protocol):
    """Log-probability of whole captions without the image (``model.caption_prior``)."""

    def logprob(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """log p(c) of each caption (token ids after <start>, with <end> when reached)."""
        ...


@dataclass(frozen=True)
class Hypothesis:
    """A decoded caption: token ids (without <start>, with <end> when reached) and its log-prob."""

    token_ids: tuple[int, ...]
    logprob: float

    @property
    def score(self) -> float:
        """Mean token log-probability: a length-independent confidence in (-inf, 0]."""
        return self.logprob / max(1, len(self.token_ids))


def greedy_decode(
    decoder: StepModel, features: np.ndarray, start_id: int, end_id: int, max_length: int
) -> list[Hypothesis]:
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
        active, words, state = active[alive], best[alive].astype(np.int32), select_rows(state, np.flatnonzero(alive))
    return [Hypothesis(tuple(t), float(lp)) for t, lp in zip(tokens, logprobs)]


def beam_search(
    decoder: StepModel,
    features: np.ndarray,
    start_id: int,
    end_id: int,
    max_length: int,
    beam_width: int = 3,
    length_alpha: float = 0.7,
) -> list[Hypothesis]:
    """Keep the ``beam_width`` best partial captions per image; finished ones are ranked by
    ``logprob / len ** length_alpha``. All live beams of all images advance in one decoder call.

    An ending counts only when it ranks among the top ``beam_width`` extensions (so width 1 is
    exactly greedy); an image stops when its best finished caption scores at least as well as
    its best live beam would at the current length."""
    candidates = beam_candidates(decoder, features, start_id, end_id, max_length, beam_width, length_alpha)
    return [max(found, key=lambda h: normalised_score(h, length_alpha)) for found in candidates]


def normalised_score(h: Hypothesis, length_alpha: float, logprob: float | None = None) -> float:
    """The beam search's ranking score of a finished caption: its log-probability (or
    ``logprob``) divided by ``len ** length_alpha``."""
    return (h.logprob if logprob is None else logprob) / max(1, len(h.token_ids)) ** length_alpha


def largest_first(values: np.ndarray, take: int) -> tuple[np.ndarray, np.ndarray]:
    """The column indices and values of each row's ``take`` largest ``values``, largest first, the
    lower index first among equals (-inf ranks last but is kept; no NaN).

    Rounds of ``argmax`` when ``take`` is at most 64 and the picks are finite (NumPy's
    ``argpartition`` was most of the search's Python time, and a whole-row sort costs far more than
    the rounds at wide beams' shapes: docs/PERFORMANCE.md §13d, §13e), else a stable sort of the
    whole rows."""
    rows = np.arange(len(values))
    if take <= 64:
        left = values.copy()
        picks = np.empty((len(values), take), np.intp)
        picked = np.empty((len(values), take), values.dtype)
        for j in range(take):
            picks[:, j] = left.argmax(axis=1)
            picked[:, j] = left[rows, picks[:, j]]  # -inf once a row has no finite value left
            left[rows, picks[:, j]] = -np.inf
        if np.isfinite(picked).all():  # a -inf pick could repeat an earlier one: sort instead
            return picks, picked
    picks = np.argsort(-values, axis=1, kind="stable")[:, :take]
    return picks, np.take_along_axis(values, picks, 1)


def _top_extensions(
    row_image: np.ndarray, row_logp: np.ndarray, logp: np.ndarray, take: int
) -> tuple[np.ndarray, list[list[int]], list[list[int]], list[list[float]]]:
    """Each image's ``take`` best extensions of its live rows, best first, in one set of array
    operations over all images (``row_image`` is sorted: rows are grouped by image).

    Returns the images (sorted) and, per image, the candidates' rank-ordered rows, words and
    total log-probabilities (an image with fewer than ``take`` extensions has fewer)."""
    images, starts, counts = np.unique(row_image, return_index=True, return_counts=True)
    vocab = logp.shape[1]
    width = int(counts.max())
    totals_of_rows = row_logp[:, None] + logp
    if counts.min() == width:  # the usual layout: as many rows per image, no padding
        flat = totals_of_rows.reshape(len(images), width * vocab)
    else:  # (images, beams, vocab); padding (-inf at the end of an image's row) ranks after its rows'
        group = np.repeat(np.arange(len(images)), counts)
        total = np.full((len(images), width, vocab), -np.inf)
        total[group, np.arange(len(row_image)) - starts[group]] = totals_of_rows
        flat = total.reshape(len(images), width * vocab)
    part, values = largest_first(flat, min(take, flat.shape[1]))
    beam, word = np.divmod(part, vocab)
    real = beam < counts[:, None]  # padding rows of images with fewer beams are not candidates
    rows, words, totals = [], [], []
    for i in range(len(images)):
        keep = real[i]
        rows.append((starts[i] + beam[i][keep]).tolist())
        words.append(word[i][keep].tolist())
        totals.append(values[i][keep].tolist())
    return images, rows, words, totals


def beam_candidates(
    decoder: StepModel,
    features: np.ndarray,
    start_id: int,
    end_id: int,
    max_length: int,
    beam_width: int = 3,
    length_alpha: float = 0.7,
) -> list[list[Hypothesis]]:
    """Every finished caption of :func:`beam_search`, per image, in the order they finished
    (at least one per image); ``beam_search`` picks the best of each list."""
    n = len(features)
    k = beam_width
    base = decoder.initial_state(features)
    # Live beams: one flat list of rows, grouped by image; per row its image, tokens and log-prob.
    state = base
    row_image = np.arange(n)
    row_tokens: list[tuple[int, ...]] = [() for _ in range(n)]
    row_logp = np.zeros(n, dtype=np.float64)
    words = np.full(n, start_id, dtype=np.int32)
    finished: list[list[Hypothesis]] = [[] for _ in range(n)]
    best_finished = [-np.inf] * n  # the best normalised score among finished[image]

    for step in range(max_length - 1):
        logp, state = decoder.step(words, state)
        last_step = step == max_length - 2
        cur_len = step + 1
        keep_rows: list[int] = []
        keep_words: list[int] = []
        new_tokens: list[tuple[int, ...]] = []
        new_logp: list[float] = []
        new_image: list[int] = []
        images, cand_rows, cand_words, cand_totals = _top_extensions(row_image, row_logp, logp, 2 * k)
        for i, image in enumerate(images.tolist()):
            kept = 0
            best_live = -np.inf
            for rank, (row, word, total) in enumerate(zip(cand_rows[i], cand_words[i], cand_totals[i])):
                if kept == k:
                    break
                hyp_tokens = row_tokens[row] + (word,)
                if word == end_id or last_step:
                    # Like HF/im2txt: an ending only counts if it ranks among the top k.
                    if rank < k:
                        finished[image].append(Hypothesis(hyp_tokens, total))
                        best_finished[image] = max(
                            best_finished[image], normalised_score(finished[image][-1], length_alpha)
                        )
                    continue
                keep_rows.append(row)
                keep_words.append(word)
                new_tokens.append(hyp_tokens)
                new_logp.append(total)
                new_image.append(image)
                best_live = max(best_live, total)
                kept += 1
            # HF-style stop: the best finished caption beats what the live beams score now.
            if kept and finished[image] and best_finished[image] >= best_live / cur_len**length_alpha:
                del keep_rows[-kept:], keep_words[-kept:], new_tokens[-kept:], new_logp[-kept:], new_image[-kept:]
        if not keep_rows:
            break
        state = select_rows(state, np.asarray(keep_rows))
        words = np.asarray(keep_words, dtype=np.int32)
        row_tokens, row_logp, row_image = new_tokens, np.asarray(new_logp), np.asarray(new_image)
    return finished


def mmi_rerank(
    candidates: Sequence[Sequence[Hypothesis]], prior: CaptionPrior, mmi_lambda: float, length_alpha: float
) -> list[Hypothesis]:
    """Per image, the candidate maximising ``(logprob - mmi_lambda * log p(c)) / len ** alpha``
    (first of equals; lambda 0 gives the beam's own choice). Returned hypotheses keep their
    conditional log-probability, so ``score`` stays a confidence in the image's caption."""
    flat = [h.token_ids for found in candidates for h in found]
    prior_lp = iter(np.asarray(prior.logprob(flat), np.float64) if flat else [])
    out = []
    for found in candidates:
        best, best_value = None, -np.inf
        for h in found:
            value = normalised_score(h, length_alpha, h.logprob - mmi_lambda * float(next(prior_lp)))
            if best is None or value > best_value:
                best, best_value = h, value
        out.append(best)
    return out


def filtered_decoder(decoder: StepModel, settings: DecodeSettings, banned_ids: Sequence[int] = ()) -> StepModel:
    """``decoder`` behind the search's step filters: ``banned_ids`` never generated and, with
    ``settings.no_repeat``, no word repeated straight away and no trigram twice."""
    if len(banned_ids):
        decoder = BannedWords(decoder, banned_ids)
    if settings.no_repeat:
        decoder = NoRepeat(decoder)
    return decoder


def decode_batch(
    decoder: StepModel,
    features: np.ndarray,
    start_id: int,
    end_id: int,
    settings: DecodeSettings,
    banned_ids: Sequence[int] = (),
    prior: CaptionPrior | None = None,
) -> list[Hypothesis]:
    """Decode a batch of image feature vectors with the given settings; ``banned_ids`` are
    never generated (callers ban padding, <start> and <unk>). ``prior`` is needed (and only
    used) when ``settings.mmi_lambda`` > 0."""
    if settings.mmi_lambda and prior is None:
        raise ValueError("MMI reranking (mmi_lambda > 0) needs a caption prior")
    if len(features) == 0:
        return []
    decoder = filtered_decoder(decoder, settings, banned_ids)
    if settings.mmi_lambda and settings.mmi_mode == "step":
        return _step_mmi(decoder, features, start_id, end_id, settings, prior)
    if settings.method == "greedy":
        return greedy_decode(decoder, features, start_id, end_id, settings.max_length)
    if settings.mmi_lambda:
        candidates = beam_candidates(
            decoder, features, start_id, end_id, settings.max_length, settings.beam_width, settings.length_alpha
        )
        return mmi_rerank(candidates, prior, settings.mmi_lambda, settings.length_alpha)
    return beam_search(
        decoder, features, start_id, end_id, settings.max_length, settings.beam_width, settings.length_alpha
    )


def _step_mmi(
    decoder: StepModel, features: np.ndarray, start_id: int, end_id: int, settings: DecodeSettings, prior: CaptionPrior
) -> list[Hypothesis]:
    """Search with each word penalised by -lambda * log p(word) (<end> is not penalised), then
    give every hypothesis back its conditional log-probability."""
    word_logprobs = getattr(prior, "word_logprobs", None)
    if word_logprobs is None:
        raise ValueError("step-wise MMI needs a context-free prior (word_logprobs), e.g. a unigram model")
    bias = -settings.mmi_lambda * np.asarray(word_logprobs(), np.float64)
    bias[end_id] = 0.0
    plain = replace(settings, mmi_lambda=0.0, mmi_mode="rerank")
    hyps = decode_batch(WordPenalty(decoder, bias), features, start_id, end_id, plain)
    return [Hypothesis(h.token_ids, h.logprob - float(sum(bias[t] for t in h.token_ids))) for h in hyps]


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


def caption_features(
    step_model: StepModel,
    vocab: Vocabulary,
    features: np.ndarray,
    settings: DecodeSettings,
    prior: CaptionPrior | None = None,
) -> list[CaptionResult]:
    """Captions of a batch of encoder feature vectors: the one features -> captions path of the
    project (``model.captioner.CaptionModel`` for the pipeline, ``training.evaluate`` for scores).
    Padding, <start> and <unk> are never generated; ``prior`` serves MMI reranking."""
    hyps = decode_batch(
        step_model,
        np.asarray(features, np.float32),
        vocab.start_id,
        vocab.end_id,
        settings,
        vocab.never_generated,
        prior,
    )
    results = []
    for hyp in hyps:
        words = tuple(vocab.decode(strip_end(hyp.token_ids, vocab.end_id)))
        results.append(CaptionResult(" ".join(words), words, float(hyp.score)))
    return results
