"""Fit one merge decoder on cached features, resumable epoch by epoch.

One caption is one example (teacher forcing over the whole caption, padding masked). After
every epoch the member's progress is saved in its work folder: the last and the best weights
(HDF5, weights only), the optimizer's variables (``.npz``, no pickle) and a JSON state with
the history and early-stopping counters. A fit that is interrupted (crash, kill, reboot)
continues from its last finished epoch; a finished member is never trained again.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.storage import atomic_local_path

log = logging.getLogger("training")

STATE = "state.json"
LAST = "last.weights.h5"
BEST = "best.weights.h5"
OPTIMIZER = "optimizer.npz"


@dataclass(frozen=True)
class FitSettings:
    """What shapes one member's fit (all recorded in the artifact's config)."""

    epochs: int = 30
    patience: int = 3
    batch_size: int = 64
    learning_rate: float = 1e-3
    label_smoothing: float = 0.0
    seed: int = 0


def make_dataset(
    features: np.ndarray, index: np.ndarray, captions: np.ndarray, batch_size: int, shuffle: bool, seed: int
):
    """tf.data over whole captions: inputs (features, caption[:-1]), target caption[1:], and a
    per-token weight that masks padding and normalises the loss to a mean over real tokens."""
    import tensorflow as tf

    table = tf.constant(features)
    ds = tf.data.Dataset.from_tensor_slices((index, captions))
    if shuffle:
        ds = ds.shuffle(len(index), seed=seed, reshuffle_each_iteration=True)

    def to_example(i, c):
        target = c[:, 1:]
        mask = tf.cast(target > 0, tf.float32)
        weight = mask / tf.reduce_mean(mask)
        return (tf.gather(table, i), c[:, :-1]), target, weight

    return ds.batch(batch_size).map(to_example, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


def _loss(label_smoothing: float, vocab_size: int):
    import keras
    import tensorflow as tf

    if label_smoothing <= 0:
        return keras.losses.SparseCategoricalCrossentropy()
    dense = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)

    def smoothed(y_true, y_pred):
        return dense(tf.one_hot(tf.cast(y_true, tf.int32), vocab_size), y_pred)

    return smoothed


def _atomic_json(path: str, value: dict[str, Any]) -> None:
    with atomic_local_path(path) as tmp, open(tmp, "w") as f:
        json.dump(value, f, indent=1)


def _save_optimizer(optimizer: Any, path: str) -> None:
    with atomic_local_path(path) as tmp:
        np.savez(tmp, *[np.asarray(v.numpy()) for v in optimizer.variables])


def _restore_optimizer(optimizer: Any, path: str) -> bool:
    with np.load(path, allow_pickle=False) as data:
        values = [data[f"arr_{i}"] for i in range(len(data.files))]
    if len(values) != len(optimizer.variables) or any(
        v.shape != tuple(var.shape) for v, var in zip(values, optimizer.variables)
    ):
        return False
    for var, value in zip(optimizer.variables, values):
        var.assign(value)
    return True


def _save_weights(decoder: Any, path: str) -> None:
    with atomic_local_path(path) as tmp:
        decoder.save_weights(tmp)


def _load_weights(decoder: Any, path: str) -> None:
    """Strictly load weights into a (possibly compiled) decoder through an uncompiled twin:
    Keras reports a compiled model's optimizer as not covered by a weights-only file."""
    twin = type(decoder)(decoder.config)
    twin.load_weights(path)
    decoder.training_model.set_weights(twin.training_model.get_weights())


def new_fit_state(settings: FitSettings) -> dict[str, Any]:
    """The resumable state of a fit that has not finished an epoch (``fit_member``'s JSON)."""
    return {
        "epoch": 0,
        "history": {},
        "best_loss": None,
        "best_epoch": 0,
        "wait": 0,
        "done": False,
        "seconds": 0.0,
        "settings": settings.__dict__,
    }


def fit_member(
    decoder: Any,
    train_ds: Any,
    dev_ds: Any,
    settings: FitSettings,
    work_dir: str,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    verbose: int = 0,
) -> dict[str, Any]:
    """Train ``decoder`` (a ``MergeDecoder``) until dev loss stops improving for ``patience``
    epochs, resuming from ``work_dir`` when it holds an earlier, interrupted fit of the same
    member. Leaves the best weights in ``decoder`` and returns the member's record (history,
    best epoch, seconds). ``on_epoch(epoch, logs)`` may add entries (e.g. dev BLEU) to logs."""
    import keras

    os.makedirs(work_dir, exist_ok=True)
    state_path = os.path.join(work_dir, STATE)
    state = new_fit_state(settings)
    model = decoder.training_model
    model.compile(
        optimizer=keras.optimizers.Adam(settings.learning_rate),
        loss=_loss(settings.label_smoothing, decoder.config.vocab_size),
    )
    if os.path.exists(state_path):
        with open(state_path) as f:
            saved = json.load(f)
        if saved.get("settings") != settings.__dict__:
            raise ValueError(
                f"{work_dir} holds a fit with other settings ({saved.get('settings')}); "
                f"use another --work-dir or delete it"
            )
        state = saved
        _load_weights(decoder, os.path.join(work_dir, BEST if state["done"] else LAST))
        if state["done"]:
            log.info(
                "member in %s already trained (%d epochs, best %d): reused",
                work_dir,
                state["epoch"],
                state["best_epoch"],
            )
            return state
        model.optimizer.build(model.trainable_variables)
        restored = _restore_optimizer(model.optimizer, os.path.join(work_dir, OPTIMIZER))
        log.info(
            "resuming member in %s after epoch %d (optimizer state %s)",
            work_dir,
            state["epoch"],
            "restored" if restored else "reset",
        )

    class Progress(keras.callbacks.Callback):
        """Per epoch: extra metrics, early stopping bookkeeping and the resumable checkpoint."""

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.started = time.time()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs if logs is not None else {}
            if on_epoch is not None:
                on_epoch(epoch, logs)
            for k, v in logs.items():
                state["history"].setdefault(k, []).append(float(v))
            loss = float(logs["val_loss"])
            state["epoch"] = epoch + 1
            state["seconds"] = round(state["seconds"] + time.time() - self.started, 1)
            if state["best_loss"] is None or loss < state["best_loss"]:
                state.update(best_loss=loss, best_epoch=epoch + 1, wait=0)
                _save_weights(decoder, os.path.join(work_dir, BEST))
            else:
                state["wait"] += 1
            if state["wait"] >= settings.patience:
                self.model.stop_training = True
            _save_weights(decoder, os.path.join(work_dir, LAST))
            _save_optimizer(self.model.optimizer, os.path.join(work_dir, OPTIMIZER))
            _atomic_json(state_path, state)

    if state["epoch"] < settings.epochs and state["wait"] < settings.patience:
        model.fit(
            train_ds,
            validation_data=dev_ds,
            epochs=settings.epochs,
            initial_epoch=state["epoch"],
            callbacks=[Progress()],
            verbose=verbose,
        )
    _load_weights(decoder, os.path.join(work_dir, BEST))
    state["done"] = True
    _atomic_json(state_path, state)
    return state
