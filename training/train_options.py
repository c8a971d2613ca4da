"""The command line of ``python -m training.train``: its flags (``build_parser``) and the work
folder a set of flags trains in (``default_work_dir``: a folder per training identity, so the same
flags resume the same run)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os

from model.cli import StrictArgumentParser
from training.splits import add_data_arguments

# Flags that do not change what is trained (so a resumed run may differ in them).
NOT_IDENTITY = (
    "output",
    "work_dir",
    "no_progress",
    "extract_batch_size",
    "cache_dir",
    "tune_decoding",
    "tune_widths",
    "tune_alphas",
    "tune_metric",
    "ensemble",
    "artifact_encoder_weights",
    "scst_epochs",
    "scst_learning_rate",
    "scst_samples",
    "scst_batch_images",
    "scst_baseline",
    "scst_select",
    "scst_beam_width",
    "scst_length_alpha",
    "scst_discriminability",
    "scst_findability_pool",
)


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The flags of ``python -m training.train`` (``description``: its help text)."""
    p = StrictArgumentParser(
        prog="python -m training.train", description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_data_arguments(p)
    p.add_argument("--output", required=True, help="artifact directory or URI to write")
    p.add_argument("--encoder", default="xception", help="keras.applications backbone (see model.encoder)")
    p.add_argument("--image-size", type=int, default=None, help="square encoder input size (default: backbone's)")
    p.add_argument("--train-split", default="train", help="split the decoders are fitted on")
    p.add_argument("--dev-split", default="dev", help="split for early stopping, per-epoch BLEU and decoding tuning")
    p.add_argument(
        "--epochs", type=int, default=30, help="most cross-entropy epochs per member (early stopping may end sooner)"
    )
    p.add_argument("--patience", type=int, default=3, help="early stopping patience on dev loss")
    p.add_argument("--batch-size", type=int, default=64, help="captions per training step")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="Adam learning rate of the cross-entropy fit")
    p.add_argument(
        "--embedding",
        default="learned",
        help="'learned', 'word2vec' (gensim on the training captions) or a word2vec/GloVe text file",
    )
    p.add_argument("--embedding-dim", type=int, default=256, help="word embedding size (a vectors file sets its own)")
    p.add_argument("--units", type=int, default=256, help="LSTM units")
    p.add_argument(
        "--image-dense", type=int, nargs="+", default=None, help="image branch Dense sizes (end with --units)"
    )
    p.add_argument("--dropout", type=float, default=0.5, help="dropout rate of the image and word branches")
    p.add_argument("--min-count", type=int, default=5, help="minimum word count for the vocabulary")
    p.add_argument(
        "--max-length", type=int, default=None, help="max caption tokens incl. start/end (default: 99th percentile)"
    )
    p.add_argument("--bleu-sample", type=int, default=200, help="dev images scored per epoch (0 = off)")
    p.add_argument(
        "--beam-width", type=int, default=3, help="default beam width stored in the artifact (unless --tune-decoding)"
    )
    p.add_argument(
        "--length-alpha",
        type=float,
        default=0.7,
        help="default length penalty stored in the artifact (unless --tune-decoding)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the first ensemble member (member i: seed + i)")
    p.add_argument(
        "--label-smoothing", type=float, default=0.0, help="label smoothing of the cross-entropy loss (0 = off)"
    )
    p.add_argument("--ensemble", type=int, default=1, help="number of decoders trained and combined")
    p.add_argument(
        "--ensemble-combine",
        choices=["mean_logprob", "mean_prob"],
        default="mean_logprob",
        help="how members' next-word distributions are combined: renormalised geometric mean, or mean probability",
    )
    p.add_argument(
        "--tune-decoding", action="store_true", help="choose beam width and length alpha on the dev split (grid below)"
    )
    p.add_argument(
        "--tune-widths", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="beam widths tried by --tune-decoding"
    )
    p.add_argument(
        "--tune-alphas",
        type=float,
        nargs="+",
        default=[0.0, 0.3, 0.5, 0.7, 0.9, 1.1, 1.3],
        help="length penalties tried by --tune-decoding",
    )
    p.add_argument("--tune-metric", default="bleu1+bleu4", help="metric, or sum of metrics, to maximise")
    p.add_argument(
        "--scst-epochs",
        type=int,
        default=0,
        help="self-critical sequence training epochs (CIDEr-D reward) after each member's "
        "cross-entropy fit; 0 = off (see training.scst)",
    )
    p.add_argument("--scst-learning-rate", type=float, default=5e-5, help="Adam learning rate of SCST")
    p.add_argument("--scst-samples", type=int, default=5, help="captions sampled per image and update")
    p.add_argument("--scst-batch-images", type=int, default=16, help="images per SCST update")
    p.add_argument(
        "--scst-baseline",
        choices=["mean", "greedy"],
        default="mean",
        help="reward baseline: mean of the image's other samples, or its greedy caption",
    )
    p.add_argument("--scst-select", default="bleu4", help="dev metric choosing each member's SCST epoch")
    p.add_argument("--scst-beam-width", type=int, default=4, help="dev search of the SCST epoch choice")
    p.add_argument(
        "--scst-length-alpha", type=float, default=0.5, help="length penalty of the dev search of the SCST epoch choice"
    )
    p.add_argument(
        "--scst-discriminability",
        type=float,
        default=0.0,
        help="weight of the findability reward (BM25 among the batch's captions, training.scst) added "
        "to CIDEr-D; 0 = off",
    )
    p.add_argument(
        "--scst-findability-pool",
        type=int,
        default=0,
        help="with --scst-discriminability: rank each sample among the greedy captions of this many "
        "other training images (redrawn every epoch) instead of the batch's captions; 0 = the batch",
    )
    p.add_argument(
        "--work-dir",
        default=None,
        help="where finished epochs and members are kept for resuming (default: training/ under "
        "$CAPTION_CACHE_DIR or ~/.cache/image-captioning, in a folder named by a hash of "
        "the training flags)",
    )
    p.add_argument(
        "--artifact-encoder-weights",
        default="imagenet",
        help="encoder weights source recorded in config.json (weights are not copied into the "
        "artifact); 'imagenet' lets each user resolve them (download or --encoder_weights)",
    )
    return p


def default_work_dir(args: argparse.Namespace) -> str:
    """A folder per training identity: the same flags resume the same run."""
    identity = {k: v for k, v in sorted(vars(args).items()) if k not in NOT_IDENTITY}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    root = os.environ.get("CAPTION_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "image-captioning")
    return os.path.join(root, "training", digest)
