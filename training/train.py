"""Train the merge caption decoder(s) on cached encoder features and export a model artifact.

Example (the shipped default model: see docs/MODEL.md "Training" for the exact command)::

    python -m training.train --flickr8k ../shared/data/flickr8k \\
        --encoder-weights ../shared/models/xception_weights_tf_dim_ordering_tf_kernels_notop.h5 \\
        --ensemble 4 --tune-decoding --output models/flickr8k-xception

One caption is one training example (teacher forcing over the whole caption); early stopping
on dev loss keeps the best weights; per epoch the dev BLEU of a sample is logged; a PNG of the
curves is stored in the artifact. ``--ensemble N`` trains N decoders with seeds seed..seed+N-1
whose log-probabilities are combined in every search step. Every finished epoch is saved in
``--work-dir``, so an interrupted run continues where it stopped when started again.
``--scst-epochs N`` then fine-tunes every member with self-critical sequence training (CIDEr-D
reward, ``training.scst``), keeping per member the epoch (0 = none) with the best dev score;
its epochs are saved in the member's work folder too. ``CAPTION_TF_THREADS=N`` limits
TensorFlow to N threads (a shared machine).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from model.text import clean_tokens
from model.vocabulary import Vocabulary
from training.datasets import CaptionedImage
from training.splits import load_split_features
from training.train_options import build_parser as _build_parser
from training.train_options import default_work_dir

log = logging.getLogger("training")


def caption_arrays(
    items: Sequence[CaptionedImage], vocab: Vocabulary, max_length: int
) -> tuple[np.ndarray, np.ndarray]:
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


def choose_max_length(items: Sequence[CaptionedImage], percentile: float = 99.0, cap: int = 40) -> int:
    """Caption length (incl. start/end) covering ``percentile`` % of training captions."""
    lengths = [len(clean_tokens(c)) + 2 for it in items for c in it.captions if clean_tokens(c)]
    return int(min(cap, max(4, np.ceil(np.percentile(lengths, percentile)))))


def plot_curves(histories: Sequence[dict[str, list[float]]], path: str) -> None:
    """Loss and dev BLEU per epoch of every ensemble member as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for m, history in enumerate(histories):
        epochs = range(1, len(history["loss"]) + 1)
        tag = f" (member {m + 1})" if len(histories) > 1 else ""
        ax1.plot(epochs, history["loss"], label="train loss" + tag)
        ax1.plot(epochs, history["val_loss"], label="dev loss" + tag)
        for n in (1, 4) if len(histories) > 1 else range(1, 5):
            key = f"dev_bleu{n}"
            if key in history:
                ax2.plot(epochs, history[key], label=f"BLEU-{n}" + tag)
    ax1.set_xlabel("epoch"), ax1.set_ylabel("cross-entropy per token"), ax1.legend(fontsize=7), ax1.grid(alpha=0.3)
    ax2.set_xlabel("epoch"), ax2.set_ylabel("dev BLEU (greedy, sample)"), ax2.legend(fontsize=7), ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    """The flags of this command, with this module's help text."""
    return _build_parser(__doc__)


def train(args: argparse.Namespace, argv: Sequence[str] = ()) -> dict[str, Any]:
    """Run one training job end to end and return the summary written into the artifact."""
    import keras

    from model.artifact_config import DecoderConfig, EncoderConfig
    from model.artifact_writer import save_artifact
    from model.caption_search import DecodeSettings
    from model.encoder import get_backbone
    from model.lstm_decoder import MergeDecoder, make_step_model
    from training.embeddings import embedding_matrix, load_text_vectors, train_word2vec
    from training.evaluate import bleu_on, tune_decoding
    from training.fit import FitSettings, fit_member, make_dataset
    from training.scst import ScstSettings, scst_member

    started = time.time()
    work_dir = args.work_dir or default_work_dir(args)
    log.info("work folder (resume state): %s", work_dir)
    backbone = get_backbone(args.encoder)
    size = args.image_size or backbone.default_size
    image_size = (size, size)
    weights = args.encoder_weights or "imagenet"
    train_items, train_feats, train_report = load_split_features(
        args, args.train_split, args.encoder, weights, image_size
    )
    dev_items, dev_feats, dev_report = load_split_features(args, args.dev_split, args.encoder, weights, image_size)
    features_done = time.time()

    vocab = Vocabulary.build((c for it in train_items for c in it.captions), min_count=args.min_count)
    max_length = args.max_length or choose_max_length(train_items)
    log.info("vocabulary: %d tokens (min count %d); max caption length %d", len(vocab), args.min_count, max_length)
    cfg = DecoderConfig(
        vocab_size=len(vocab),
        max_length=max_length,
        feature_dim=train_feats.shape[1],
        embedding_dim=args.embedding_dim,
        units=args.units,
        image_dense=tuple(args.image_dense or (args.units,)),
        dropout=args.dropout,
    )
    tr_index, tr_caps = caption_arrays(train_items, vocab, max_length)
    dv_index, dv_caps = caption_arrays(dev_items, vocab, max_length)
    dev_ds = make_dataset(dev_feats, dv_index, dv_caps, 256, False, args.seed)
    greedy = DecodeSettings("greedy", max_length=max_length)
    rng = np.random.default_rng(args.seed)
    sample = np.sort(rng.choice(len(dev_items), size=min(args.bleu_sample, len(dev_items)), replace=False))

    scst = None
    if args.scst_epochs > 0:
        scst = ScstSettings.from_flags(args)
        scst_tag = scst.run_folder()
    members, records, scst_records = [], [], []
    embedding_info: dict[str, Any] = {"source": args.embedding}
    for i in range(args.ensemble):
        seed = args.seed + i
        keras.utils.set_random_seed(seed)
        decoder = MergeDecoder(cfg)
        if args.embedding != "learned":
            if args.embedding == "word2vec":
                vectors = train_word2vec(
                    (clean_tokens(c) for it in train_items for c in it.captions), args.embedding_dim, seed=seed
                )
            else:
                vectors = load_text_vectors(args.embedding, vocab)
            matrix, coverage = embedding_matrix(vocab, vectors, args.embedding_dim, seed=seed)
            decoder.embedding.set_weights([matrix])
            embedding_info["coverage"] = round(coverage, 4)
        step_model = decoder.step_model()

        def dev_bleu(epoch: int, logs: dict, step_model=step_model, member=i) -> None:
            if not len(sample):
                return
            scores = bleu_on(step_model, vocab, [dev_items[j] for j in sample], dev_feats[sample], greedy)
            for k, v in scores.items():
                logs[f"dev_{k}"] = v
            log.info(
                "member %d epoch %d: loss %.4f dev loss %.4f dev BLEU-1 %.3f BLEU-4 %.3f",
                member + 1,
                epoch + 1,
                logs["loss"],
                logs["val_loss"],
                scores["bleu1"],
                scores["bleu4"],
            )

        settings = FitSettings(
            args.epochs, args.patience, args.batch_size, args.learning_rate, args.label_smoothing, seed
        )
        train_ds = make_dataset(train_feats, tr_index, tr_caps, args.batch_size, True, seed)
        record = fit_member(
            decoder,
            train_ds,
            dev_ds,
            settings,
            os.path.join(work_dir, f"member-{i + 1}"),
            on_epoch=dev_bleu,
            verbose=0 if args.no_progress else 2,
        )
        members.append(decoder)
        records.append(
            {
                "seed": seed,
                "epochs_run": record["epoch"],
                "best_epoch": record["best_epoch"],
                "best_dev_loss": record["best_loss"],
                "fit_seconds": record["seconds"],
                "history": record["history"],
            }
        )
        if scst is not None:
            run = scst_member(
                decoder,
                vocab,
                train_items,
                train_feats,
                dev_items,
                dev_feats,
                ScstSettings(**{**asdict(scst), "seed": seed}),
                os.path.join(work_dir, f"member-{i + 1}", scst_tag),
            )
            scst_records.append(
                {"seed": seed, "best_epoch": run["best_epoch"], "seconds": run["seconds"], "history": run["history"]}
            )
    trained = time.time()

    ensemble = make_step_model(members, combine=args.ensemble_combine)
    beam = DecodeSettings("beam", args.beam_width, args.length_alpha, max_length)
    tuning = None
    if args.tune_decoding:
        beam, grid = tune_decoding(
            ensemble, vocab, dev_items, dev_feats, max_length, args.tune_widths, args.tune_alphas, args.tune_metric
        )
        tuning = {"split": args.dev_split, "metric": args.tune_metric, "chosen": beam.describe(), "grid": grid}
        log.info("decoding chosen on %s by %s: %s", args.dev_split, args.tune_metric, beam.describe())
    dev_metrics = {
        s.describe(): bleu_on(ensemble, vocab, dev_items, dev_feats, s, extended=True) for s in (greedy, beam)
    }
    for name, scores in dev_metrics.items():
        log.info("dev %s: %s", name, " ".join(f"{k}={v:.4f}" for k, v in scores.items()))
    bleu_keys = ("bleu1", "bleu2", "bleu3", "bleu4")
    history = records[0]["history"]
    summary = {
        "command": "python -m training.train " + shlex.join(argv),
        "data": {
            "source": args.flickr8k or args.table,
            "train_split": args.train_split,
            "dev_split": args.dev_split,
            "train_images": len(train_items),
            "train_captions": int(len(tr_caps)),
            "dev_images": len(dev_items),
            "dev_captions": int(len(dv_caps)),
            "skipped": {"train": train_report.summary(), "dev": dev_report.summary()},
        },
        "embedding": embedding_info,
        "hyperparameters": {
            k: getattr(args, k)
            for k in (
                "epochs",
                "patience",
                "batch_size",
                "learning_rate",
                "min_count",
                "seed",
                "dropout",
                "label_smoothing",
                "ensemble",
                "ensemble_combine",
            )
        },
        "scst": {"settings": asdict(scst), "members": scst_records} if scst is not None else None,
        "epochs_run": records[0]["epochs_run"],
        "best_epoch": records[0]["best_epoch"],
        "best_dev_loss": records[0]["best_dev_loss"],
        "dev_bleu": {name: {k: scores[k] for k in bleu_keys} for name, scores in dev_metrics.items()},
        "dev_metrics": dev_metrics,
        "decoding_tuning": tuning,
        "history": history,
        "members": records if len(records) > 1 else None,
        "seconds": {
            "features": round(features_done - started, 1),
            "fit": round(trained - features_done, 1),
            "fit_members": [r["fit_seconds"] for r in records],
            "scst_members": [r["seconds"] for r in scst_records] or None,
            "total": round(time.time() - started, 1),
        },
    }
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        png = os.path.join(tmp, "training_curves.png")
        plot_curves([r["history"] for r in records], png)
        with open(png, "rb") as f:
            curves = f.read()
    model_id = save_artifact(
        args.output,
        decoder=members,
        vocab=vocab,
        encoder=EncoderConfig(args.encoder, image_size, args.artifact_encoder_weights),
        decoding=beam,
        training=summary,
        extra_files={"training_curves.png": curves},
        combine=args.ensemble_combine,
    )
    summary["model_id"] = model_id
    log.info("wrote %s (model_id %s) in %.0f s", args.output, model_id, time.time() - started)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from training.scst import limit_threads_from_env

    limit_threads_from_env()
    summary = train(args, argv)
    print(
        json.dumps(
            {
                "model_id": summary["model_id"],
                "dev_bleu": summary["dev_bleu"],
                "best_epoch": summary["best_epoch"],
                "seconds": summary["seconds"],
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
