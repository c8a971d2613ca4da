"""Self-critical sequence training (SCST, Rennie et al. 2017) of one decoder, resumable.

The decoder is a merge decoder (``model.lstm_decoder``) or an attention decoder
(``model.attention_decoder``, fed spatial maps ``(images, regions, feature_dim)``): what is used
of it is its step model (``project_image``, ``step_tensors``, ``width``) and ``caption_probs``.

Starting from a cross-entropy member, every update samples ``samples`` captions per image from
the decoder's own step-wise graph (no dropout), rewards each with its CIDEr-D against the
image's references (document frequencies from the *training* references) plus, with
``discriminability`` > 0, that weight times its findability among the batch's captions or, with
``findability_pool`` N, among N other training images' greedy captions refreshed every epoch
(``FindabilityReward``, after Luo et al. 2018), subtracts a baseline
(the mean reward of the image's other samples, or its greedy caption's reward) and minimises
``-(advantage * sum log p(sampled tokens))`` with Adam; the log-probabilities come from the
teacher-forced training graph run on the samples (``training=False``: the policy that sampled).

After every epoch the member's dev metrics with beam search are logged and the epoch with the
best ``select`` metric is kept (epoch 0 is the cross-entropy start, so SCST can only be kept when
it is measured to help). Progress is saved per epoch in the work folder like ``training.fit``:
last and best weights, the optimizer's variables and a JSON state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from model.caption_search import DecodeSettings
from model.vocabulary import Vocabulary
from training.datasets import CaptionedImage
from training.fit import (
    BEST,
    LAST,
    OPTIMIZER,
    STATE,
    _atomic_json,
    _load_weights,
    _restore_optimizer,
    _save_optimizer,
    _save_weights,
)
from training.scst_rewards import CiderReward, FindabilityReward, advantages

log = logging.getLogger("training")

BASELINES = ("mean", "greedy")


@dataclass(frozen=True)
class ScstSettings:
    """What shapes one member's SCST (recorded in the artifact's config)."""

    epochs: int = 3
    learning_rate: float = 5e-5
    samples: int = 5  # captions sampled per image and update
    batch_images: int = 16  # images per update
    baseline: str = "mean"  # "mean" of the other samples' rewards, or the "greedy" caption's
    select: str = "bleu4"  # dev metric (or sum like "bleu1+bleu4") choosing the epoch; 0 = CE start
    beam_width: int = 4  # dev search used for the choice
    length_alpha: float = 0.5
    seed: int = 0
    discriminability: float = 0.0  # weight of FindabilityReward added to the CIDEr-D reward
    findability_pool: int = 0  # 0: rank among the batch's captions; N: among N other images' greedy captions

    def __post_init__(self) -> None:
        if self.baseline not in BASELINES:
            raise ValueError(f"SCST baseline must be one of {BASELINES}, not {self.baseline!r}")
        if self.baseline == "mean" and self.samples < 2:
            raise ValueError("the mean-of-other-samples baseline needs at least 2 samples per image")
        if self.samples < 1 or self.batch_images < 1:
            raise ValueError("samples and batch_images must be >= 1")
        if self.discriminability < 0:
            raise ValueError("the discriminability weight must be >= 0")
        if self.findability_pool < 0:
            raise ValueError("the findability pool size must be >= 0")

    def identity(self) -> dict[str, Any]:
        """Everything but ``epochs``: a run asked for more epochs continues the same one (and no
        ``discriminability`` or ``findability_pool`` when 0, so runs from before they existed
        still resume)."""
        optional = ("discriminability", "findability_pool")
        return {k: v for k, v in asdict(self).items() if k != "epochs" and not (k in optional and v == 0)}

    def run_folder(self) -> str:
        """The folder name of this SCST run inside a member's folder: ``scst-`` and a hash of
        ``identity()`` (so other settings never resume it)."""
        return "scst-" + hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:12]

    @classmethod
    def from_flags(cls, args: Any) -> ScstSettings:
        """The settings of the ``--scst-*`` (and ``--seed``) flags of the training commands."""
        return cls(
            args.scst_epochs,
            args.scst_learning_rate,
            args.scst_samples,
            args.scst_batch_images,
            args.scst_baseline,
            args.scst_select,
            args.scst_beam_width,
            args.scst_length_alpha,
            args.seed,
            args.scst_discriminability,
            args.scst_findability_pool,
        )


class Sampler:
    """Draws captions from a decoder's step-wise graph: ``sample`` (multinomial) or greedy."""

    def __init__(self, decoder: Any, vocab: Vocabulary) -> None:
        import tensorflow as tf

        self.step = decoder.step_model()
        self.vocab = vocab
        self.max_length = decoder.config.max_length
        block = np.zeros(decoder.config.vocab_size, np.float32)
        block[list(vocab.never_generated)] = -np.inf
        self._block = tf.constant(block)
        self._draw = tf.function(self._draw_fn, reduce_retracing=True)

    def _draw_fn(self, features: Any, seed: Any, greedy: bool) -> Any:
        import tensorflow as tf

        rows = tf.shape(features)[0]
        image = self.step.project_image(features)
        constants = image if isinstance(image, tuple) else (image,)  # an attention map: values, keys, global
        width = self.step.width
        h = c = tf.zeros([rows, width])
        words = tf.fill([rows], self.vocab.start_id)
        done = tf.zeros([rows], tf.bool)
        out = [words]
        for t in range(self.max_length - 1):
            logp, h, c = self.step.step_tensors(words, h, c, *constants)
            logits = logp + self._block
            if greedy:
                nxt = tf.argmax(logits, axis=1, output_type=tf.int32)
            else:
                nxt = tf.random.stateless_categorical(logits, 1, seed + t, dtype=tf.int32)[:, 0]
            words = tf.where(done, tf.zeros_like(nxt), nxt)  # pad after <end>
            out.append(words)
            done = done | tf.equal(words, self.vocab.end_id)
        return tf.stack(out, axis=1)

    def __call__(self, features: np.ndarray, seed: tuple[int, int] = (0, 0), greedy: bool = False) -> np.ndarray:
        import tensorflow as tf

        return self._draw(tf.constant(features, tf.float32), tf.constant(seed, tf.int32), greedy).numpy()


def make_train_step(decoder: Any, optimizer: Any):
    """A traced update: loss = -mean(advantage * sum log p(sampled tokens)) over the rows."""
    import tensorflow as tf

    model = decoder.training_model
    variables = model.trainable_variables

    @tf.function(reduce_retracing=True)
    def train_step(features, tokens, advantage):
        target = tokens[:, 1:]
        mask = tf.cast(target > 0, tf.float32)
        with tf.GradientTape() as tape:
            probs = decoder.caption_probs(features, tokens[:, :-1])
            picked = tf.gather(probs, target[..., None], batch_dims=2)[..., 0]
            logp = tf.reduce_sum(tf.math.log(tf.maximum(picked, 1e-12)) * mask, axis=1)
            loss = -tf.reduce_mean(advantage * logp)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss, logp

    return train_step


def sequence_logprob(decoder: Any, features: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Sum of log p of each row's tokens after <start> (padding excluded) under ``decoder``."""
    probs = np.asarray(decoder.caption_probs(features, tokens[:, :-1]))
    target = tokens[:, 1:]
    picked = np.take_along_axis(probs, target[..., None], axis=2)[..., 0]
    return (np.log(np.maximum(picked, 1e-12)) * (target > 0)).sum(axis=1)


def scst_epoch(
    decoder: Any,
    sampler: Sampler,
    train_step: Any,
    reward: CiderReward,
    features: np.ndarray,
    settings: ScstSettings,
    epoch: int,
    findable: FindabilityReward | None = None,
) -> dict[str, float]:
    """One pass over the images in a seeded order; returns mean sample/greedy reward and loss (and
    with ``findable`` and a discriminability weight, the samples' mean findability reward)."""
    import tensorflow as tf

    order = np.random.default_rng([settings.seed, epoch]).permutation(len(features))
    k = settings.samples
    weight = settings.discriminability if findable is not None else 0.0
    if weight and findable.pool_size:
        set_findability_pool(findable, sampler, features, settings, epoch)
    sums = {"reward": 0.0, "baseline": 0.0, "loss": 0.0, "findability": 0.0}
    for b, start in enumerate(range(0, len(order), settings.batch_images)):
        idx = order[start : start + settings.batch_images]
        feats = np.repeat(features[idx], k, axis=0)
        rows_image = np.repeat(idx, k)
        tokens = sampler(feats, (settings.seed * 1000 + epoch, b * 64))
        r = reward(rows_image, tokens)
        if weight:
            found = findable(rows_image, tokens, k)
            sums["findability"] += float(found.sum())
            r = r + weight * found
        base = None
        if settings.baseline == "greedy":
            greedy = sampler(features[idx], greedy=True)
            base = reward(idx, greedy) + (weight * findable(idx, greedy, 1) if weight else 0.0)
        adv = advantages(r, k, base)
        loss, _ = train_step(tf.constant(feats), tf.constant(tokens), tf.constant(adv, tf.float32))
        sums["reward"] += float(r.sum())
        sums["baseline"] += float((r.reshape(-1, k).mean(1) if base is None else base).sum()) * k
        sums["loss"] += float(loss) * len(idx)
    n = len(order)
    stats = {"reward": sums["reward"] / (n * k), "baseline": sums["baseline"] / (n * k), "loss": sums["loss"] / n}
    if weight:
        stats["findability"] = sums["findability"] / (n * k)
    return stats


def set_findability_pool(
    findable: FindabilityReward, sampler: Sampler, features: np.ndarray, settings: ScstSettings, epoch: int
) -> None:
    """Give ``findable`` this epoch's distractors: the decoder's greedy captions of
    ``findable.pool_size`` training images drawn by the seed and the epoch."""
    rng = np.random.default_rng([settings.seed, epoch, 1])
    pool = np.sort(rng.choice(len(features), min(findable.pool_size, len(features)), replace=False))
    chunk = 64
    captions = [sampler(features[pool[i : i + chunk]], greedy=True) for i in range(0, len(pool), chunk)]
    findable.set_pool(pool, np.concatenate(captions) if captions else np.zeros((0, 1), np.int32))


def scst_member(
    decoder: Any,
    vocab: Vocabulary,
    train_items: Sequence[CaptionedImage],
    train_feats: np.ndarray,
    dev_items: Sequence[CaptionedImage],
    dev_feats: np.ndarray,
    settings: ScstSettings,
    work_dir: str,
    score_captions: Callable[[list[list[str]], Sequence[CaptionedImage]], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Run SCST on ``decoder`` (its cross-entropy weights loaded) for ``settings.epochs``,
    resuming from ``work_dir``; leaves the chosen epoch's weights in it and returns the record.
    ``score_captions`` scores the dev captions for the epoch choice (default: BLEU-1..4, CIDEr-D,
    ROUGE-L; e.g. ``training.attention_data.dev_quality`` adds distinct captions and findability)."""
    import keras
    import tensorflow as tf

    from training.evaluate import caption_scores, generate_captions, objective

    os.makedirs(work_dir, exist_ok=True)
    state_path = os.path.join(work_dir, STATE)
    search = DecodeSettings("beam", settings.beam_width, settings.length_alpha, decoder.config.max_length)
    sampler = Sampler(decoder, vocab)
    optimizer = keras.optimizers.Adam(settings.learning_rate)
    optimizer.build(decoder.training_model.trainable_variables)

    def dev_scores() -> dict[str, float]:
        captions = generate_captions(sampler.step, vocab, dev_feats, search)
        return (score_captions or caption_scores)(captions, dev_items)

    if os.path.exists(state_path):
        import json

        with open(state_path) as f:
            state = json.load(f)
        if state.get("settings") != settings.identity():
            raise ValueError(
                f"{work_dir} holds SCST with other settings ({state.get('settings')}); "
                f"use another --work-dir or delete it"
            )
        finished = state["done"] and state["epoch"] >= settings.epochs
        _load_weights(decoder, os.path.join(work_dir, BEST if finished else LAST))
        if finished:
            log.info("SCST member in %s already done (best epoch %d): reused", work_dir, state["best_epoch"])
            return state
        restored = _restore_optimizer(optimizer, os.path.join(work_dir, OPTIMIZER))
        log.info(
            "resuming SCST in %s after epoch %d (optimizer %s)",
            work_dir,
            state["epoch"],
            "restored" if restored else "reset",
        )
    else:
        started = time.time()
        scores = dev_scores()
        state = {
            "epoch": 0,
            "history": [{"epoch": 0, "dev": scores, "seconds": round(time.time() - started, 1)}],
            "best_epoch": 0,
            "best_score": objective(scores, settings.select),
            "done": False,
            "seconds": 0.0,
            "settings": settings.identity(),
        }
        log.info("SCST start (CE weights): dev %s", " ".join(f"{k}={v:.4f}" for k, v in scores.items()))
        _save_weights(decoder, os.path.join(work_dir, BEST))
        _atomic_json(state_path, state)

    reward = CiderReward(vocab, [it.captions for it in train_items])
    findable = (
        FindabilityReward(vocab, [it.captions for it in train_items], settings.findability_pool)
        if settings.discriminability
        else None
    )
    train_step = make_train_step(decoder, optimizer)
    tf.random.set_seed(settings.seed)
    while state["epoch"] < settings.epochs:
        epoch = state["epoch"] + 1
        started = time.time()
        stats = scst_epoch(decoder, sampler, train_step, reward, train_feats, settings, epoch, findable)
        fitted = time.time()
        scores = dev_scores()
        score = objective(scores, settings.select)
        state["history"].append(
            {
                "epoch": epoch,
                **stats,
                "dev": scores,
                "seconds": round(fitted - started, 1),
                "dev_seconds": round(time.time() - fitted, 1),
            }
        )
        log.info(
            "SCST epoch %d: reward %.4f (baseline %.4f) in %.0f s; dev %s",
            epoch,
            stats["reward"],
            stats["baseline"],
            fitted - started,
            " ".join(f"{k}={v:.4f}" for k, v in scores.items()),
        )
        if score > state["best_score"]:
            state.update(best_epoch=epoch, best_score=score)
            _save_weights(decoder, os.path.join(work_dir, BEST))
        state.update(epoch=epoch, done=False)
        state["seconds"] = round(state["seconds"] + time.time() - started, 1)
        _save_weights(decoder, os.path.join(work_dir, LAST))
        _save_optimizer(optimizer, os.path.join(work_dir, OPTIMIZER))
        _atomic_json(state_path, state)
    _load_weights(decoder, os.path.join(work_dir, BEST))
    state["done"] = True
    _atomic_json(state_path, state)
    return state


def limit_threads_from_env() -> None:
    """Honour ``CAPTION_TF_THREADS=N``: TensorFlow intra- and inter-op pools of N threads (a
    shared machine); must run before TensorFlow executes anything."""
    n = os.environ.get("CAPTION_TF_THREADS")
    if n:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(int(n))
        tf.config.threading.set_inter_op_parallelism_threads(int(n))
