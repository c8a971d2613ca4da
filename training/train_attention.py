"""Train an attention decoder (``model.attention_decoder``) on cached spatial features, resumably.

Example (extract the maps first with ``python -m training.spatial_features``; this command does it
too, but slower to resume)::

    CAPTION_TF_THREADS=2 nice -n 15 python -m training.train_attention --flickr8k ../shared/data/flickr8k \\
        --encoder-weights ../shared/models/xception_weights_tf_dim_ordering_tf_kernels_notop.h5 \\
        --kind adaptive --work-dir ~/.cache/image-captioning/attention/adaptive-512

A batch is ``--batch-images`` images with all their captions (the map is projected once per image).
Every finished epoch is saved in ``--work-dir`` by ``training.fit.fit_member`` (last and best
weights, weights-only HDF5; optimizer state; JSON history), so a rerun of the same command continues
after the last finished epoch (the shuffling order of a resumed run differs from an uninterrupted
one). Run it from a copy of the code that is not edited meanwhile: TensorFlow's autograph re-reads
the source of the step graphs each time they are traced. After each epoch the whole dev split is
captioned greedily and scored: BLEU-1..4, CIDEr-D,
ROUGE-L, the share of distinct captions and findability (``model.retrieval_metrics``: BM25 over the
captions, queried with references #2-#5). ``--evaluate-only`` scores the best (or ``--checkpoint
last``) weights of a work folder with the given search instead of training (optionally as an
ensemble with other runs' best weights, ``--ensemble-with``), and appends the scores to the work
folder's ``evaluations.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from model.vocabulary import Vocabulary
from training.attention_data import caption_table, dev_quality, make_image_dataset
from training.attention_work import (
    CONFIG_FILE,
    SELECTED,
    SELECTION,
    checkpoint_epoch,
    checkpoint_file,
    has_vocabulary,
    load_member,
    member_ref,
    read_config,
    read_json,
    read_vocabulary,
    write_vocabulary,
)
from training.datasets import CaptionedImage
from training.splits import add_data_arguments, load_split_features

log = logging.getLogger("training")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.train_attention",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data_arguments(p)
    p.add_argument("--work-dir", required=True, help="resume folder (weights, optimizer, history, vocabulary)")
    p.add_argument("--encoder", default="xception")
    p.add_argument("--image-size", type=int, default=None, help="square encoder input size (default: backbone's)")
    p.add_argument("--kind", choices=["soft", "adaptive"], default="adaptive")
    p.add_argument("--units", type=int, default=512)
    p.add_argument("--embedding-dim", type=int, default=256)
    p.add_argument("--attention-dim", type=int, default=256)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--patience", type=int, default=3, help="early stopping patience on dev loss")
    p.add_argument("--batch-images", type=int, default=16, help="images per batch (with all their captions)")
    p.add_argument("--learning-rate", type=float, default=5e-4)
    p.add_argument("--min-count", type=int, default=5)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dev-eval", type=int, default=1000, help="dev images captioned (greedy) after each epoch")
    g = p.add_argument_group("self-critical sequence training after the cross-entropy fit (training.scst)")
    g.add_argument("--scst-epochs", type=int, default=0, help="0 = off")
    g.add_argument("--scst-learning-rate", type=float, default=5e-5)
    g.add_argument("--scst-samples", type=int, default=5)
    g.add_argument("--scst-batch-images", type=int, default=16)
    g.add_argument("--scst-baseline", choices=["mean", "greedy"], default="mean")
    g.add_argument(
        "--scst-discriminability",
        type=float,
        default=0.0,
        help="weight of the findability reward (BM25 among the batch's captions) added to CIDEr-D",
    )
    g.add_argument(
        "--scst-findability-pool",
        type=int,
        default=0,
        help="with --scst-discriminability: rank each sample among the greedy captions of this many "
        "other training images (redrawn every epoch) instead of the batch's captions; 0 = the batch",
    )
    g.add_argument(
        "--scst-select",
        default="cider_d+r_at_5",
        help="dev metric (or sum) choosing the SCST epoch (0 = the cross-entropy weights)",
    )
    g.add_argument("--scst-beam-width", type=int, default=3)
    g.add_argument("--scst-length-alpha", type=float, default=0.5)
    p.add_argument(
        "--init-from-model",
        default=None,
        metavar="ARTIFACT",
        help="start from a released artifact's attention decoder (training.attention_seed): its vocabulary "
        "and weights become the work folder's finished cross-entropy fit, so --scst-* continues from them",
    )
    p.add_argument("--evaluate-only", action="store_true", help="score a work folder's weights, do not train")
    p.add_argument(
        "--select",
        default="cider_d+r_at_5",
        help="dev metric (or sum of metrics) of the greedy evaluation whose best epoch is also kept "
        "as the 'selected' checkpoint (early stopping stays on dev loss)",
    )
    p.add_argument(
        "--checkpoint",
        choices=["best", "last", "selected"],
        default="best",
        help="with --evaluate-only: best dev loss, last epoch, or best --select score",
    )
    p.add_argument(
        "--ensemble-with",
        action="append",
        default=[],
        metavar="WORK_DIR",
        help="with --evaluate-only: also the best weights of another run, or an SCST run's chosen epoch "
        "(WORK_DIR/member-1/scst-HASH); same vocabulary and sizes, the kind may differ; all members "
        "combined in one step graph",
    )
    p.add_argument("--ensemble-combine", choices=["mean_logprob", "mean_prob"], default="mean_logprob")
    p.add_argument(
        "--decode", default="greedy", help="with --evaluate-only: greedy or beam:WIDTH:ALPHA, optionally + :no_repeat"
    )
    return p


def _settings(spec: str, max_length: int) -> Any:
    from model.caption_search import DecodeSettings

    return DecodeSettings.parse(spec, max_length)


def _vocabulary(
    args: argparse.Namespace, train_items: Sequence[CaptionedImage], released: Any = None
) -> tuple[Vocabulary, int]:
    """The run's vocabulary and max length, fixed in the work folder on the first run: built from
    the training captions, or the ``released`` artifact's (``--init-from-model``)."""
    from training.train import choose_max_length

    if has_vocabulary(args.work_dir):
        return read_vocabulary(args.work_dir)
    if released is not None:
        vocab, max_length = released.vocab, released.config.decoder.max_length
    else:
        vocab = Vocabulary.build((c for it in train_items for c in it.captions), min_count=args.min_count)
        max_length = args.max_length or choose_max_length(train_items)
    write_vocabulary(args.work_dir, vocab, max_length)
    return vocab, max_length


def _keep_selected(decoder: Any, member_dir: str, epoch: int, metric: str, scores: dict[str, float]) -> None:
    """Keep ``decoder``'s weights as the selected checkpoint when ``metric`` beats the kept one."""
    from training.evaluate import objective
    from training.fit import _atomic_json, _save_weights

    path = os.path.join(member_dir, SELECTION)
    score = objective(scores, metric)
    if os.path.exists(path):
        kept = read_json(path)
        if kept["metric"] == metric and kept["epoch"] != epoch and kept["score"] >= score:
            return
    os.makedirs(member_dir, exist_ok=True)
    _save_weights(decoder, os.path.join(member_dir, SELECTED))
    _atomic_json(path, {"metric": metric, "epoch": epoch, "score": score})


def _check_config(work_dir: str, config: Any) -> None:
    """Record the decoder's config in the work folder, or refuse flags that ask for another one."""
    from training.fit import _atomic_json

    path = os.path.join(work_dir, CONFIG_FILE)
    if not os.path.exists(path):
        _atomic_json(path, config.to_dict())
        return
    saved = read_config(work_dir)
    if saved != config:
        raise SystemExit(
            f"{work_dir} holds a decoder of config {saved.to_dict()}; these flags ask for "
            f"{config.to_dict()}: use the same flags or another --work-dir"
        )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or with ``--evaluate-only`` score) one attention decoder; returns the record."""
    import keras

    from model.artifact_config import AttentionConfig
    from model.attention_decoder import AttentionDecoder
    from model.encoder import get_backbone
    from training.evaluate import generate_captions
    from training.fit import FitSettings, fit_member

    if args.evaluate_only and not os.path.exists(os.path.join(args.work_dir, "member-1", "state.json")):
        raise SystemExit(f"{args.work_dir} holds no trained decoder yet (no finished epoch)")
    os.makedirs(args.work_dir, exist_ok=True)
    size = args.image_size or get_backbone(args.encoder).default_size
    weights = args.encoder_weights or "imagenet"
    dev_items, dev_maps, _ = load_split_features(args, "dev", args.encoder, weights, (size, size), spatial=True)
    train_items: list[CaptionedImage] = []
    if not args.evaluate_only or not has_vocabulary(args.work_dir):
        train_items, train_maps, _ = load_split_features(
            args, "train", args.encoder, weights, (size, size), spatial=True
        )
    released = None
    if args.init_from_model and not args.evaluate_only:
        from training.attention_seed import released_decoder

        released = released_decoder(args.init_from_model)  # read and verified once
    vocab, max_length = _vocabulary(args, train_items, released)
    config = AttentionConfig(
        vocab_size=len(vocab),
        max_length=max_length,
        feature_dim=dev_maps.shape[-1],
        regions=int(np.prod(dev_maps.shape[1:-1])),
        embedding_dim=args.embedding_dim,
        units=args.units,
        attention_dim=args.attention_dim,
        dropout=args.dropout,
        kind=args.kind,
    )
    member_dir = os.path.join(args.work_dir, "member-1")
    fit_settings = FitSettings(args.epochs, args.patience, args.batch_images, args.learning_rate, 0.0, args.seed)
    if released is not None:  # checks the released decoder before writing anything
        from training.attention_seed import seed_member

        if seed_member(released, member_dir, config, fit_settings, vocab.tokens):
            log.info("work folder seeded with the decoder of %s", args.init_from_model)
        else:
            log.warning("%s already holds a fit: --init-from-model is not applied again", member_dir)
    _check_config(args.work_dir, config)
    keras.utils.set_random_seed(args.seed)
    decoder = AttentionDecoder(config)

    def evaluate(settings: Any, step: Any = None) -> dict[str, float]:
        return dev_quality(
            generate_captions(step or decoder.step_model(), vocab, dev_maps[: args.dev_eval], settings, batch_size=100),
            dev_items[: args.dev_eval],
        )

    if args.evaluate_only:
        from model.attention_decoder import AttentionStepModel

        decoder.load_weights(checkpoint_file(args.work_dir, args.checkpoint))
        refs = [member_ref(d, "best") for d in args.ensemble_with]
        members = [decoder, *(load_member(r.work_dir, r.checkpoint, vocab, r.scst_run) for r in refs)]
        settings = _settings(args.decode, max_length)
        epochs = [
            checkpoint_epoch(args.work_dir, args.checkpoint),
            *(checkpoint_epoch(r.work_dir, r.checkpoint, r.scst_run) for r in refs),
        ]
        result = {
            "checkpoint": args.checkpoint,
            "epoch": epochs[0],
            "member_epochs": epochs,
            "combine": args.ensemble_combine,
            "decode": settings.describe(),
            "members": [args.work_dir, *args.ensemble_with],
            "images": len(dev_items[: args.dev_eval]),
            **evaluate(settings, AttentionStepModel(members, args.ensemble_combine)),
        }
        with open(os.path.join(args.work_dir, "evaluations.jsonl"), "a") as f:  # the record of every score
            f.write(json.dumps(result) + "\n")
        return result

    log.info(
        "%s attention decoder: %d parameters; %d train / %d dev images",
        args.kind,
        decoder.count_params(),
        len(train_items),
        len(dev_items),
    )
    greedy = _settings("greedy", max_length)

    def on_epoch(epoch: int, logs: dict) -> None:
        started = time.time()
        try:
            scores = evaluate(greedy) if args.dev_eval else {}
        except Exception:  # an evaluation bug must not cost the epoch: it is logged, the epoch is saved
            log.exception("dev evaluation after epoch %d failed", epoch + 1)
            scores = {}
        logs.update({f"dev_{k}": v for k, v in scores.items()}, dev_eval_seconds=time.time() - started)
        if scores:
            _keep_selected(decoder, member_dir, epoch + 1, args.select, scores)
        log.info(
            "epoch %d: loss %.4f dev loss %.4f | dev greedy %s (%.0f s)",
            epoch + 1,
            logs["loss"],
            logs["val_loss"],
            " ".join(f"{k}={v:.4f}" for k, v in scores.items()),
            time.time() - started,
        )

    train_ds = make_image_dataset(
        train_maps, caption_table(train_items, vocab, max_length), args.batch_images, True, args.seed
    )
    dev_ds = make_image_dataset(dev_maps, caption_table(dev_items, vocab, max_length), 50, False, args.seed)
    record = fit_member(
        decoder, train_ds, dev_ds, fit_settings, member_dir, on_epoch=on_epoch, verbose=0 if args.no_progress else 2
    )
    result = {
        "config": config.to_dict(),
        "epochs": record["epoch"],
        "best_epoch": record["best_epoch"],
        "seconds": record["seconds"],
        "history": record["history"],
    }
    if args.scst_epochs > 0:
        result["scst"] = _scst(args, decoder, vocab, train_items, train_maps, dev_items, dev_maps, member_dir)
    return result


def _scst(
    args: argparse.Namespace,
    decoder: Any,
    vocab: Vocabulary,
    train_items: Sequence[CaptionedImage],
    train_maps: np.ndarray,
    dev_items: Sequence[CaptionedImage],
    dev_maps: np.ndarray,
    member_dir: str,
) -> dict[str, Any]:
    """SCST of the fitted decoder in ``member_dir/scst-<hash of its settings>`` (resumable)."""

    from training.scst import ScstSettings, scst_member

    settings = ScstSettings.from_flags(args)
    flat = train_maps.reshape(len(train_maps), -1, train_maps.shape[-1])  # a view: (images, regions, dim)
    n = args.dev_eval
    state = scst_member(
        decoder,
        vocab,
        train_items,
        flat,
        dev_items[:n],
        dev_maps[:n],
        settings,
        os.path.join(member_dir, settings.run_folder()),
        score_captions=dev_quality,
    )
    return {
        "settings": settings.identity(),
        "best_epoch": state["best_epoch"],
        "seconds": state["seconds"],
        "history": state["history"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from training.scst import limit_threads_from_env

    limit_threads_from_env()
    result = run(args)
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
