"""Benchmark: whole-caption training versus the classic per-prefix expansion, and peak memory.

Reproduce (from the repository root, after a training run has filled the feature cache)::

    python bench/bench_training.py --flickr8k ../shared/data/flickr8k \\
        --encoder-weights ../shared/models/xception_weights_tf_dim_ordering_tf_kernels_notop.h5 \\
        --cache-dir .cache/features --captions 3000 --repeats 3

1. Speed. One epoch over the same ``--captions`` training captions, two ways, with the same decoder
   sizes (the shipped defaults: 256-d embedding, 256 LSTM units, dropout 0.5), optimiser and
   batch size in captions:

   * whole caption (``training.fit.make_dataset`` + ``MergeDecoder.training_model``): one
     example per caption, teacher forcing over all its words at once;
   * per prefix (``model.lstm_decoder.build_prefix_model``), as the classic tutorials do: one example
     per word, its prefix pre-padded to ``max_length``, the image features repeated for every
     prefix. The examples are streamed (``tf.data.Dataset.from_generator``), never materialised;
     a batch holds every prefix of ``--batch-size`` captions, as the tutorials' generator yields
     every prefix of a few photos, so both run the same number of optimiser steps per epoch.

   Each formulation gets a short untimed warm-up (graph tracing), then ``--repeats`` timed epochs;
   the table shows the median.

2. Memory. The whole-caption epoch runs in a fresh subprocess per size in ``--memory-captions``
   (default 2,000 and 10,000 captions; captions are repeated if the split has too few) and
   reports its own peak RSS during the fit (``VmHWM`` of /proc/self/status, reset just before
   the fit), then runs the largest size again on the first run's images only (same feature
   table, captions repeated), so growth from more images and from more captions can be told
   apart; next to it, what the tutorials' materialised per-prefix arrays would take.

Features come from the feature cache that ``python -m training.train`` fills (key: encoder
Xception at 299x299 plus a hash of the weights file). If the cache holds none of the train
images, random 2048-d features stand in (with the real captions) and the output says so: the
decoder's cost does not depend on the feature values.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Keras notes that a tf.data input is not reshuffled by fit() and that a generator of unknown
# length ran out at the end of the epoch: both are expected here.
warnings.filterwarnings("ignore", message=r"`shuffle=True` was passed")
warnings.filterwarnings("ignore", message=r"Your input ran out of data")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np

SHARED = REPO.parent / "shared"
DEFAULT_FLICKR8K = SHARED / "data" / "flickr8k"
DEFAULT_WEIGHTS = SHARED / "models" / "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"
DEFAULT_CACHE = REPO / ".cache" / "features"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flickr8k", default=str(DEFAULT_FLICKR8K), help="Flickr8k root (token file, split lists)")
    p.add_argument(
        "--encoder-weights",
        default=str(DEFAULT_WEIGHTS),
        help="Xception weights file the features were extracted with (only hashed, for the cache key)",
    )
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="feature cache directory of training.train")
    p.add_argument("--encoder", default="xception")
    p.add_argument("--image-size", type=int, default=299)
    p.add_argument("--captions", type=int, default=3000, help="training captions per epoch (speed table)")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per formulation; the median is shown")
    p.add_argument("--batch-size", type=int, default=64, help="captions per batch (both formulations)")
    p.add_argument("--embedding-dim", type=int, default=256)
    p.add_argument("--units", type=int, default=256)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--min-count", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--memory-captions",
        type=int,
        nargs="*",
        default=[2000, 10000],
        help="caption counts of the peak-memory runs (each in its own subprocess); none to skip",
    )
    p.add_argument(
        "--memory-images",
        type=int,
        default=None,
        help="use at most this many images in the memory runs (their captions are repeated), to "
        "keep the feature table fixed and vary only the number of captions",
    )
    p.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def proc_status_mb(field: str) -> float | None:
    """``VmRSS`` (current) or ``VmHWM`` (peak) resident set size of this process in MB, from
    /proc/self/status. Unlike ``getrusage().ru_maxrss``, which Linux carries over from the
    parent through fork and exec (a child of a big parent reports the parent's size), VmHWM
    belongs to this process's own address space."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_mb() -> float:
    value = proc_status_mb("VmRSS")
    return value if value is not None else float("nan")


def peak_rss_mb() -> float:
    value = proc_status_mb("VmHWM")
    if value is None:  # not Linux: getrusage (KiB on Linux, bytes on macOS)
        value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)
    return value


class Data:
    """Training captions of the split with their image features (cached, or random stand-ins)."""

    def __init__(self, args: argparse.Namespace, n_captions: int, max_images: int | None = None) -> None:
        from model.vocabulary import Vocabulary
        from training.datasets import read_flickr8k
        from training.features import FeatureCache, feature_cache_key
        from training.train import caption_arrays, choose_max_length

        items = read_flickr8k(args.flickr8k, "train")
        self.source = "random 2048-d stand-ins (feature cache empty)"
        feats = None
        weights = args.encoder_weights
        if os.path.isdir(args.cache_dir) and weights and os.path.isfile(weights):
            from model.encoder import weights_fingerprint

            key = feature_cache_key(args.encoder, (args.image_size, args.image_size), weights_fingerprint(weights))
            if os.path.isdir(os.path.join(args.cache_dir, key)):
                cache = FeatureCache(args.cache_dir, key)
                cached = [it for it in items if it.image_id in cache]
                if cached:
                    items = cached
                    feats = np.stack([cache.get(it.image_id) for it in items]).astype(np.float32)
                    self.source = f"cached {args.encoder} features ({args.cache_dir}/{key})"
        if feats is None:
            feats = np.random.default_rng(args.seed).normal(0, 0.3, (len(items), 2048)).astype(np.float32)
        # Enough images for n_captions (5 captions each in Flickr8k), all of them if too few.
        need, total = [], 0
        for it in items:
            need.append(it)
            total += len(it.captions)
            if total >= n_captions or len(need) == max_images:
                break
        self.items = need
        self.features = feats[: len(need)]
        self.vocab = Vocabulary.build((c for it in need for c in it.captions), min_count=args.min_count)
        self.max_length = choose_max_length(need)
        index, caps = caption_arrays(need, self.vocab, self.max_length)
        self.distinct_captions = len(index)
        reps = -(-n_captions // len(index))  # repeat the captions when the split has too few
        self.index = np.tile(index, reps)[:n_captions]
        self.captions = np.tile(caps, (reps, 1))[:n_captions]
        self.prefixes = int((self.captions[:, 1:] > 0).sum())  # one per predicted token (words + <end>)

    def decoder_config(self, args: argparse.Namespace):
        from model.artifact_config import DecoderConfig

        return DecoderConfig(
            vocab_size=len(self.vocab),
            max_length=self.max_length,
            feature_dim=self.features.shape[1],
            embedding_dim=args.embedding_dim,
            units=args.units,
            image_dense=(args.units,),
            dropout=args.dropout,
        )


def compile_model(model, args: argparse.Namespace) -> None:
    import keras

    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy())


def whole_caption_dataset(data: Data, args: argparse.Namespace, n: int | None = None):
    from training.fit import make_dataset

    n = len(data.index) if n is None else n
    return make_dataset(data.features, data.index[:n], data.captions[:n], args.batch_size, True, args.seed)


def prefix_dataset(data: Data, args: argparse.Namespace, n: int | None = None):
    """Streams the tutorials' per-prefix examples: for every caption word t, the image features
    and the caption prefix [<start> .. w_{t-1}] pre-padded to max_length, target w_t.

    One batch = every prefix of ``batch_size`` captions; only that batch exists in memory."""
    import tensorflow as tf

    n = len(data.index) if n is None else n
    L, fdim = data.max_length, data.features.shape[1]
    index, captions = data.index[:n], data.captions[:n]
    lengths = (captions > 0).sum(axis=1)  # tokens incl. <start> and <end>
    epoch = [0]

    def batches():
        order = np.random.default_rng(args.seed + epoch[0]).permutation(n)
        epoch[0] += 1
        for start in range(0, n, args.batch_size):
            rows = order[start : start + args.batch_size]
            count = int((lengths[rows] - 1).sum())
            prefixes = np.zeros((count, L), np.int32)
            targets = np.empty(count, np.int32)
            image_of = np.empty(count, np.int64)
            k = 0
            for r in rows:
                ids = captions[r]
                for t in range(1, lengths[r]):
                    prefixes[k, L - t :] = ids[:t]  # pre-padding, as keras pad_sequences does
                    targets[k] = ids[t]
                    image_of[k] = index[r]
                    k += 1
            yield (data.features[image_of], prefixes), targets

    signature = (
        (tf.TensorSpec((None, fdim), tf.float32), tf.TensorSpec((None, L), tf.int32)),
        tf.TensorSpec((None,), tf.int32),
    )
    return tf.data.Dataset.from_generator(batches, output_signature=signature).prefetch(2)


def time_epochs(model, dataset, warmup, repeats: int) -> tuple[list[float], float]:
    model.fit(warmup, epochs=1, verbose=0)  # traces the train step (full and partial batches)
    seconds, loss = [], float("nan")
    for _ in range(repeats):
        started = time.perf_counter()
        history = model.fit(dataset, epochs=1, verbose=0)
        seconds.append(time.perf_counter() - started)
        loss = float(history.history["loss"][-1])
    return seconds, loss


def speed(args: argparse.Namespace) -> None:
    import keras
    import tensorflow as tf

    from model.lstm_decoder import MergeDecoder, build_prefix_model

    data = Data(args, args.captions)
    cfg = data.decoder_config(args)
    print(f"features: {data.source}")
    print(
        f"captions: {len(data.index)} ({data.distinct_captions} distinct) of {len(data.items)} images; "
        f"vocabulary {len(data.vocab)} (min count {args.min_count}); max_length {data.max_length}; "
        f"batch {args.batch_size} captions; decoder embedding {cfg.embedding_dim}, units {cfg.units}"
    )
    print(
        f"machine: {os.cpu_count()} CPUs, TensorFlow {tf.__version__}, Keras {keras.__version__}; "
        f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    warm_n = args.batch_size * 2 + args.batch_size // 2  # two full batches and a partial one
    keras.utils.set_random_seed(args.seed)
    whole = MergeDecoder(cfg).training_model
    compile_model(whole, args)
    w_times, w_loss = time_epochs(
        whole, whole_caption_dataset(data, args), whole_caption_dataset(data, args, warm_n), args.repeats
    )
    keras.utils.set_random_seed(args.seed)
    prefix = build_prefix_model(cfg)
    compile_model(prefix, args)
    p_times, p_loss = time_epochs(prefix, prefix_dataset(data, args), prefix_dataset(data, args, warm_n), args.repeats)
    steps = -(-len(data.index) // args.batch_size)
    w, p = statistics.median(w_times), statistics.median(p_times)
    rows = [
        ("whole caption (make_dataset)", len(data.index), steps, w, w_times, w_loss, 1.0),
        ("per prefix, streamed (tutorial)", data.prefixes, steps, p, p_times, p_loss, p / w),
    ]
    print()
    print(
        f"{'formulation':<34}{'examples/epoch':>15}{'steps':>7}{'s/epoch (median)':>18}"
        f"{'runs (s)':>22}{'loss':>8}{'ratio':>8}"
    )
    for name, examples, st, med, runs, loss, ratio in rows:
        runs_text = " ".join(f"{x:.2f}" for x in runs)
        print(f"{name:<34}{examples:>15,}{st:>7}{med:>18.2f}{runs_text:>22}{loss:>8.3f}{ratio:>7.2f}x")
    print(f"(ratio = per-prefix time / whole-caption time; both predict the same {data.prefixes:,} tokens)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def memory_child(args: argparse.Namespace) -> None:
    """One whole-caption epoch over ``args.memory_child`` captions; prints a JSON line."""
    import keras

    from model.lstm_decoder import MergeDecoder

    data = Data(args, args.memory_child, args.memory_images)
    keras.utils.set_random_seed(args.seed)
    model = MergeDecoder(data.decoder_config(args)).training_model
    compile_model(model, args)
    setup_peak = peak_rss_mb()  # imports, feature cache, model building
    before = rss_mb()
    reset = reset_peak_rss()
    started = time.perf_counter()
    model.fit(whole_caption_dataset(data, args), epochs=1, verbose=0)
    seconds = time.perf_counter() - started
    L, fdim = data.max_length, data.features.shape[1]
    print(
        json.dumps(
            {
                "captions": len(data.index),
                "distinct": data.distinct_captions,
                "images": len(data.items),
                "features_mb": data.features.nbytes / 2**20,
                "caption_arrays_mb": (data.index.nbytes + data.captions.nbytes) / 2**20,
                "setup_peak_mb": setup_peak,
                "rss_before_fit_mb": before,
                "peak_reset": reset,
                "peak_rss_mb": peak_rss_mb(),  # during the fit when the reset worked, else whole process
                "seconds": seconds,
                "source": data.source,
                # The tutorials' materialised arrays: per prefix a padded prefix (int32) and a copy of
                # the image features (float32); the one-hot targets of some versions would add more.
                "materialised_prefix_mb": data.prefixes * (L * 4 + fdim * 4 + 4) / 2**20,
            }
        )
    )


def run_memory_child(args: argparse.Namespace, n: int, max_images: int | None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", str(n)]
    for flag in (
        "flickr8k",
        "encoder_weights",
        "cache_dir",
        "encoder",
        "image_size",
        "batch_size",
        "embedding_dim",
        "units",
        "dropout",
        "min_count",
        "seed",
    ):
        cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    if max_images is not None:
        cmd += ["--memory-images", str(max_images)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(args: argparse.Namespace) -> None:
    results = [run_memory_child(args, n, args.memory_images) for n in args.memory_captions]
    if args.memory_images is None and len(results) >= 2:
        # The largest run again on the first run's images only: same feature table, captions repeated.
        results.append(run_memory_child(args, results[-1]["captions"], results[0]["images"]))
    print()
    during = "during the fit" if all(r["peak_reset"] for r in results) else "of the whole process"
    print(f"Peak memory of one whole-caption epoch (fresh process per row; MB; peak RSS = VmHWM {during}):")
    print(
        f"{'captions':>9}{'distinct':>9}{'images':>8}{'features':>10}{'caption arrays':>16}"
        f"{'RSS before fit':>16}{'peak RSS':>10}{'fit adds':>10}{'epoch s':>9}{'tutorial arrays':>17}"
    )
    for r in results:
        print(
            f"{r['captions']:>9,}{r['distinct']:>9,}{r['images']:>8,}{r['features_mb']:>10.1f}"
            f"{r['caption_arrays_mb']:>16.2f}{r['rss_before_fit_mb']:>16.0f}{r['peak_rss_mb']:>10.0f}"
            f"{r['peak_rss_mb'] - r['rss_before_fit_mb']:>10.0f}{r['seconds']:>9.1f}"
            f"{r['materialised_prefix_mb']:>17.0f}"
        )
    print(
        "(features: feature table of the captions' images, held as numpy and again as a tf.constant; "
        "tutorial arrays: every prefix materialised with a copy of its image features, as the tutorials do)"
    )
    a = results[0]
    for b in results[1:]:
        print(
            f"{b['captions'] / a['captions']:.1f}x the captions on {b['images']:,} images: peak RSS "
            f"{b['peak_rss_mb'] - a['peak_rss_mb']:+.0f} MB (features {b['features_mb'] - a['features_mb']:+.1f} MB, "
            f"caption arrays {b['caption_arrays_mb'] - a['caption_arrays_mb']:+.2f} MB); the tutorial's arrays "
            f"would grow by {b['materialised_prefix_mb'] - a['materialised_prefix_mb']:+.0f} MB"
        )
    if results:
        print(f"features: {results[0]['source']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_child is not None:
        memory_child(args)
        return 0
    started = time.perf_counter()
    speed(args)
    if args.memory_captions:
        memory(args)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
