"""Train the merge caption decoder on cached encoder features and export a model artifact.

Example (the shipped default model)::

    python -m training.train --flickr8k ../shared/data/flickr8k \\
        --encoder-weights ../shared/models/xception_weights_tf_dim_ordering_tf_kernels_notop.h5 \\
        --output models/flickr8k-xception

One caption is one training example (teacher forcing over the whole caption); early stopping
on dev loss restores the best weights; per epoch the dev BLEU of a sample is logged; a PNG of
the curves is stored next to the artifact.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from typing import Any, Sequence

import numpy as np

from model.text import clean_tokens
from model.vocabulary import Vocabulary
from training.datasets import CaptionedImage, read_caption_table, read_flickr8k
from training.features import ExtractionReport, FeatureCache, cache_key, extract_features

log = logging.getLogger("training")

DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "image-captioning", "features")


def add_data_arguments(parser: argparse.ArgumentParser, with_dev: bool = True) -> None:
    """Dataset, encoder and feature-cache flags shared by train and evaluate."""
    g = parser.add_argument_group("data")
    g.add_argument("--flickr8k", help="Flickr8k root (Flickr8k.token.txt, split lists, images/)")
    g.add_argument("--images-dir", default="images", help="image folder inside the Flickr8k root")
    g.add_argument("--table", help="caption table (CSV/TSV/JSONL/Parquet) for the split being read")
    if with_dev:
        g.add_argument("--dev-table", help="caption table of the dev split (with --table)")
    g.add_argument("--image-column", default="image")
    g.add_argument("--caption-column", default="caption")
    g.add_argument("--id-column", default=None)
    g.add_argument("--encoder-weights", default=None,
                   help="encoder weights: 'imagenet' (download), a path or fsspec URI to an HDF5 file")
    g.add_argument("--cache-dir", default=DEFAULT_CACHE, help="feature cache directory")
    g.add_argument("--extract-batch-size", type=int, default=32)
    g.add_argument("--no-progress", action="store_true")


def read_split(args: argparse.Namespace, split: str) -> list[CaptionedImage]:
    if args.flickr8k:
        return read_flickr8k(args.flickr8k, split, images_dir=args.images_dir)
    table = args.dev_table if split == "dev" and getattr(args, "dev_table", None) else args.table
    if not table:
        raise SystemExit("give --flickr8k ROOT or --table FILE (and --dev-table FILE for training)")
    return read_caption_table(table, args.image_column, args.caption_column, args.id_column)


def load_split_features(args: argparse.Namespace, split: str, encoder_name: str, weights: str | None,
                        image_size: tuple[int, int], encoder: Any = None
                        ) -> tuple[list[CaptionedImage], np.ndarray, ExtractionReport]:
    """Items of a split that have features, their feature matrix, and what was skipped."""
    from model.encoder import ImageEncoder, weights_fingerprint

    items = read_split(args, split)
    cache = FeatureCache(args.cache_dir, cache_key(encoder_name, image_size, weights_fingerprint(weights)))
    todo = [it for it in items if it.image_id not in cache]
    if todo and encoder is None:
        # Built on first use only: when every uncached image is missing or undecodable (they are
        # retried, and reported, on every run) no encoder is needed at all.
        built: list[ImageEncoder] = []

        def encoder(images: np.ndarray) -> np.ndarray:
            if not built:
                built.append(ImageEncoder(encoder_name, weights, image_size))
            return built[0](images)

    report = extract_features(items, encoder, image_size, cache, batch_size=args.extract_batch_size,
                              progress=not args.no_progress) if todo else ExtractionReport(cached=len(items))
    kept = [it for it in items if it.image_id in cache]
    skipped = len(items) - len(kept)
    log.info("%s: %d images listed, %d with features, %d skipped (missing %d, undecodable %d)", split,
             len(items), len(kept), skipped, len(report.missing), len(report.undecodable))
    if not kept:
        raise SystemExit(f"no usable images in the {split} split")
    feats = np.stack([cache.get(it.image_id) for it in kept]).astype(np.float32)
    return kept, feats, report


def caption_arrays(items: Sequence[CaptionedImage], vocab: Vocabulary, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(image index, padded token ids) for every non-empty caption: one caption, one example."""
    index, rows = [], []
    for i, item in enumerate(items):
        for caption in item.captions:
            if not clean_tokens(caption):
                continue
            ids = vocab.encode(caption, max_length)
            rows.append(ids + [vocab.pad_id] * (max_length - len(ids)))
            index.append(i)
    return np.asarray(index, np.int32), np.asarray(rows, np.int32)


def make_dataset(features: np.ndarray, index: np.ndarray, captions: np.ndarray, batch_size: int,
                 shuffle: bool, seed: int):
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


def choose_max_length(items: Sequence[CaptionedImage], percentile: float = 99.0, cap: int = 40) -> int:
    """Caption length (incl. start/end) covering ``percentile`` % of training captions."""
    lengths = [len(clean_tokens(c)) + 2 for it in items for c in it.captions if clean_tokens(c)]
    return int(min(cap, max(4, np.ceil(np.percentile(lengths, percentile)))))


def plot_curves(history: dict[str, list[float]], path: str) -> None:
    """Loss and dev BLEU per epoch as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, len(history["loss"]) + 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, history["loss"], label="train loss")
    ax1.plot(epochs, history["val_loss"], label="dev loss")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("cross-entropy per token"), ax1.legend(), ax1.grid(alpha=.3)
    for n in range(1, 5):
        key = f"dev_bleu{n}"
        if key in history:
            ax2.plot(epochs, history[key], label=f"BLEU-{n}")
    ax2.set_xlabel("epoch"), ax2.set_ylabel("dev BLEU (greedy, sample)"), ax2.legend(), ax2.grid(alpha=.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(p)
    p.add_argument("--output", required=True, help="artifact directory or URI to write")
    p.add_argument("--encoder", default="xception", help="keras.applications backbone (see model.encoder)")
    p.add_argument("--image-size", type=int, default=None, help="square encoder input size (default: backbone's)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--dev-split", default="dev")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--patience", type=int, default=3, help="early stopping patience on dev loss")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--embedding", default="learned",
                   help="'learned', 'word2vec' (gensim on the training captions) or a word2vec/GloVe text file")
    p.add_argument("--embedding-dim", type=int, default=256)
    p.add_argument("--units", type=int, default=256)
    p.add_argument("--image-dense", type=int, nargs="+", default=None, help="image branch Dense sizes (end with --units)")
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--min-count", type=int, default=5, help="minimum word count for the vocabulary")
    p.add_argument("--max-length", type=int, default=None, help="max caption tokens incl. start/end (default: 99th percentile)")
    p.add_argument("--bleu-sample", type=int, default=200, help="dev images scored per epoch (0 = off)")
    p.add_argument("--beam-width", type=int, default=3)
    p.add_argument("--length-alpha", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--artifact-encoder-weights", default="imagenet",
                   help="encoder weights source recorded in config.json (weights are not copied into the "
                        "artifact); 'imagenet' lets each user resolve them (download or --encoder_weights)")
    return p


def train(args: argparse.Namespace, argv: Sequence[str] = ()) -> dict[str, Any]:
    """Run one training job end to end and return the summary written into the artifact."""
    import keras

    from model.artifact import save_artifact
    from model.decoder import DecoderConfig, MergeDecoder
    from model.decoding import DecodeSettings
    from model.encoder import get_backbone
    from training.embeddings import embedding_matrix, load_text_vectors, train_word2vec
    from training.evaluate import bleu_on

    started = time.time()
    keras.utils.set_random_seed(args.seed)
    backbone = get_backbone(args.encoder)
    size = args.image_size or backbone.default_size
    image_size = (size, size)
    weights = args.encoder_weights or "imagenet"
    train_items, train_feats, train_report = load_split_features(args, args.train_split, args.encoder, weights, image_size)
    dev_items, dev_feats, dev_report = load_split_features(args, args.dev_split, args.encoder, weights, image_size)
    features_done = time.time()

    vocab = Vocabulary.build((c for it in train_items for c in it.captions), min_count=args.min_count)
    max_length = args.max_length or choose_max_length(train_items)
    log.info("vocabulary: %d tokens (min count %d); max caption length %d", len(vocab), args.min_count, max_length)
    cfg = DecoderConfig(vocab_size=len(vocab), max_length=max_length, feature_dim=train_feats.shape[1],
                        embedding_dim=args.embedding_dim, units=args.units,
                        image_dense=tuple(args.image_dense or (args.units,)), dropout=args.dropout)
    decoder = MergeDecoder(cfg)

    embedding_info: dict[str, Any] = {"source": args.embedding}
    if args.embedding != "learned":
        if args.embedding == "word2vec":
            vectors = train_word2vec((clean_tokens(c) for it in train_items for c in it.captions),
                                     args.embedding_dim, seed=args.seed)
        else:
            vectors = load_text_vectors(args.embedding, vocab)
        matrix, coverage = embedding_matrix(vocab, vectors, args.embedding_dim, seed=args.seed)
        decoder.embedding.set_weights([matrix])
        embedding_info["coverage"] = round(coverage, 4)
        log.info("embedding initialised from %s (%.1f%% of words covered)", args.embedding, 100 * coverage)

    tr_index, tr_caps = caption_arrays(train_items, vocab, max_length)
    dv_index, dv_caps = caption_arrays(dev_items, vocab, max_length)
    train_ds = make_dataset(train_feats, tr_index, tr_caps, args.batch_size, True, args.seed)
    dev_ds = make_dataset(dev_feats, dv_index, dv_caps, 256, False, args.seed)

    model = decoder.training_model
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy())
    step_decoder = decoder.stepwise()
    greedy = DecodeSettings("greedy", max_length=max_length)
    rng = np.random.default_rng(args.seed)
    sample = np.sort(rng.choice(len(dev_items), size=min(args.bleu_sample, len(dev_items)), replace=False))

    class DevBleu(keras.callbacks.Callback):
        """Greedy corpus BLEU of a fixed dev sample after every epoch."""

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if logs is None or not len(sample):
                return
            scores = bleu_on(step_decoder, vocab, [dev_items[i] for i in sample], dev_feats[sample], greedy)
            for k, v in scores.items():
                logs[f"dev_{k}"] = v
            log.info("epoch %d: loss %.4f dev loss %.4f dev BLEU-1 %.3f BLEU-4 %.3f", epoch + 1, logs["loss"],
                     logs["val_loss"], scores["bleu1"], scores["bleu4"])

    callbacks = [DevBleu(),
                 keras.callbacks.EarlyStopping(monitor="val_loss", patience=args.patience, restore_best_weights=True)]
    fit = model.fit(train_ds, validation_data=dev_ds, epochs=args.epochs, callbacks=callbacks,
                    verbose=0 if args.no_progress else 2)
    history = {k: [float(x) for x in v] for k, v in fit.history.items()}
    best_epoch = int(np.argmin(history["val_loss"])) + 1
    trained = time.time()

    beam = DecodeSettings("beam", args.beam_width, args.length_alpha, max_length)
    dev_bleu = {greedy.describe(): bleu_on(step_decoder, vocab, dev_items, dev_feats, greedy),
                beam.describe(): bleu_on(step_decoder, vocab, dev_items, dev_feats, beam)}
    for name, scores in dev_bleu.items():
        log.info("dev %s: %s", name, " ".join(f"{k}={v:.4f}" for k, v in scores.items()))

    summary = {
        "command": "python -m training.train " + shlex.join(argv),
        "data": {"source": args.flickr8k or args.table, "train_split": args.train_split, "dev_split": args.dev_split,
                 "train_images": len(train_items), "train_captions": int(len(tr_caps)),
                 "dev_images": len(dev_items), "dev_captions": int(len(dv_caps)),
                 "skipped": {"train": train_report.summary(), "dev": dev_report.summary()}},
        "embedding": embedding_info,
        "hyperparameters": {k: getattr(args, k) for k in ("epochs", "patience", "batch_size", "learning_rate",
                                                           "min_count", "seed", "dropout")},
        "epochs_run": len(history["loss"]), "best_epoch": best_epoch,
        "best_dev_loss": float(min(history["val_loss"])),
        "dev_bleu": dev_bleu, "history": history,
        "seconds": {"features": round(features_done - started, 1), "fit": round(trained - features_done, 1),
                    "total": round(time.time() - started, 1)},
    }
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        png = os.path.join(tmp, "training_curves.png")
        plot_curves(history, png)
        with open(png, "rb") as f:
            curves = f.read()
    model_id = save_artifact(args.output, decoder=decoder, vocab=vocab,
                             encoder={"name": args.encoder, "weights": args.artifact_encoder_weights,
                                      "image_size": list(image_size)},
                             decoding=beam, training=summary, extra_files={"training_curves.png": curves})
    summary["model_id"] = model_id
    log.info("wrote %s (model_id %s) in %.0f s", args.output, model_id, time.time() - started)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    summary = train(args, argv)
    print(json.dumps({"model_id": summary["model_id"], "dev_bleu": summary["dev_bleu"],
                      "best_epoch": summary["best_epoch"], "seconds": summary["seconds"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
