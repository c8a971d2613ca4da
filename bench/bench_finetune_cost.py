"""What fine-tuning Xception's last block would cost per epoch on this machine (issue 27).

Issue 27 allows fine-tuning Xception's last blocks "only if its cost on 2 cores is stated and
worth it". This bench states the cost: one training step of a batch of ``--batch-images`` images
with 5 captions each (18 tokens, the real vocabulary size), timed two ways in one process:

  decoder only        the attention decoder's step on cached maps (what ``training.train_attention``
                      runs today);
  + block 14          Xception's block 14 (two separable convolutions 1024 -> 1536 -> 2048 with
                      batch norm, ImageNet weights from ``--encoder-weights``; batch norm kept in
                      inference mode, as usual when fine-tuning with small batches) trained with the
                      decoder: its input, block 13's 10x10x1024 output, cached instead of the map.

Both use Adam and the decoder's loss; the random inputs have the real shapes (the time does not
depend on the values). After two untimed steps (tracing), the median of ``--repeats`` steps, and
the train-only minutes of an epoch over 6,000 images it implies. Block 13 and earlier would add
the 19x19 part of the exit flow and the cache of its input (19x19x728 per image); not timed here.

Reproduce::

    CAPTION_TF_THREADS=2 python bench/bench_finetune_cost.py --repeats 5 \\
        --encoder-weights ../shared/models/xception_weights_tf_dim_ordering_tf_kernels_notop.h5
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from bench.bench_attention_training import add_batch_arguments, random_batch
from bench.common import XCEPTION_WEIGHTS, machine, median_time, table

BLOCK14 = (
    "block14_sepconv1",
    "block14_sepconv1_bn",
    "block14_sepconv1_act",
    "block14_sepconv2",
    "block14_sepconv2_bn",
    "block14_sepconv2_act",
)


def block14(weights: str) -> object:
    """Xception's block 14 with its trained weights, as a model of block 13's output (10x10x1024)."""
    import keras

    xception = keras.applications.Xception(include_top=False, weights=weights, input_shape=(299, 299, 3))
    x = inputs = keras.Input((10, 10, 1024))
    for name in BLOCK14:
        layer = xception.get_layer(name)
        x = layer(x, training=False) if name.endswith("_bn") else layer(x)
    return keras.Model(inputs, x, name="block14")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder-weights", default=str(XCEPTION_WEIGHTS))
    p.add_argument("--units", type=int, default=512)
    p.add_argument("--attention-dim", type=int, default=256)
    p.add_argument("--kind", default="soft", choices=["soft", "adaptive"])
    add_batch_arguments(p)
    args = p.parse_args()

    import keras
    import tensorflow as tf

    from model.artifact_config import AttentionConfig
    from model.attention_decoder import AttentionDecoder
    from training.scst import limit_threads_from_env

    limit_threads_from_env()
    b = args.batch_images
    maps, words, target = (tf.constant(x) for x in random_batch(args))
    maps = tf.cast(maps, tf.float32)
    block13_out = tf.constant(np.random.default_rng(1).normal(size=(b, 10, 10, 1024)).astype(np.float32))
    decoder = AttentionDecoder(
        AttentionConfig(
            args.vocab_size, 24, units=args.units, attention_dim=args.attention_dim, dropout=0.3, kind=args.kind
        )
    ).training_model
    tail = block14(args.encoder_weights)
    loss_of = keras.losses.SparseCategoricalCrossentropy()

    def step_fn(with_block: bool) -> object:
        optimizer = keras.optimizers.Adam(5e-4)
        variables = decoder.trainable_variables + (tail.trainable_variables if with_block else [])

        @tf.function
        def step() -> tf.Tensor:
            with tf.GradientTape() as tape:
                features = tf.reshape(tail(block13_out, training=False), (b, 100, 2048)) if with_block else maps
                loss = loss_of(target, decoder((features, words), training=True))
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss

        return step

    rows = []
    for label, with_block in (("decoder only (today)", False), ("decoder + Xception block 14", True)):
        step = step_fn(with_block)
        for _ in range(2):
            step()
        per, _ = median_time(lambda s=step: s().numpy(), args.repeats)
        trained = decoder.count_params() + (tail.count_params() if with_block else 0)
        rows.append([label, trained, round(per, 3), round(per * 6000 / b / 60, 1)])
    print(
        f"machine: {machine()}; TF threads: {os.environ.get('CAPTION_TF_THREADS', 'default')}; "
        f"{args.kind}-{args.units}, batch {b} images x 5 captions x 18 tokens; median of {args.repeats}"
    )
    print(table(["training step", "parameters", "s / batch", "train min / epoch (6,000 images)"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
