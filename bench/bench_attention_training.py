"""Training step time of the attention decoders (``model.attention_decoder``) by size.

Reproduce::

    CAPTION_TF_THREADS=2 python bench/bench_attention_training.py --sizes 512:256 256:128 --repeats 5

Random maps of the real shape (10x10x2048, float16 as cached) and random 18-token captions, 5 per
image, ``--batch-images`` images per batch, the real vocabulary size; after two untimed batches
(tracing, first run), the median of ``--repeats`` batches per size and kind, and the train-only minutes of an
epoch over 6,000 images it implies (the dev loss pass and dev evaluation come on top).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from bench.common import machine, median_time, table


def add_batch_arguments(p: argparse.ArgumentParser) -> None:
    """The batch and timing flags of the training-step benches."""
    p.add_argument("--batch-images", type=int, default=16)
    p.add_argument("--vocab-size", type=int, default=2534)
    p.add_argument("--repeats", type=int, default=5)


def random_batch(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(maps float16 as cached, input words, target words) of ``--batch-images`` images with 5
    captions of 18 tokens each: the real shapes, random values (the time does not depend on them)."""
    rng = np.random.default_rng(0)
    b = args.batch_images
    maps = rng.normal(size=(b, 100, 2048)).astype(np.float16)
    words = rng.integers(1, args.vocab_size, size=(b, 5, 18)).astype(np.int32)
    target = rng.integers(1, args.vocab_size, size=(b, 5, 18)).astype(np.int32)
    return maps, words, target


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["512:256", "256:128"], help="UNITS:ATTENTION_DIM")
    p.add_argument("--kinds", nargs="+", default=["adaptive", "soft"])
    add_batch_arguments(p)
    args = p.parse_args()

    import keras

    from model.artifact_config import AttentionConfig
    from model.attention_decoder import AttentionDecoder
    from training.scst import limit_threads_from_env

    limit_threads_from_env()
    b = args.batch_images
    maps, words, target = random_batch(args)
    rows = []
    for size in args.sizes:
        units, attention = (int(x) for x in size.split(":"))
        for kind in args.kinds:
            decoder = AttentionDecoder(
                AttentionConfig(args.vocab_size, 24, units=units, attention_dim=attention, dropout=0.3, kind=kind)
            )
            model = decoder.training_model
            model.compile(optimizer=keras.optimizers.Adam(5e-4), loss=keras.losses.SparseCategoricalCrossentropy())
            for _ in range(2):  # tracing, then the first run of the traced graph (slower: allocations)
                model.train_on_batch((maps, words), target)
            per, _ = median_time(lambda m=model: m.train_on_batch((maps, words), target), args.repeats)
            rows.append([kind, units, attention, decoder.count_params(), round(per, 3), round(per * 6000 / b / 60, 1)])
    print(
        f"machine: {machine()}; TF threads: {os.environ.get('CAPTION_TF_THREADS', 'default')}; "
        f"batch {b} images x 5 captions x 18 tokens; median of {args.repeats}"
    )
    print(
        table(["kind", "units", "attention dim", "parameters", "s / batch", "train min / epoch (6,000 images)"], rows)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
