"""Corpus BLEU-1..4, CIDEr-D and ROUGE-L of a model on a dataset split, paper style
(``model.bleu``, ``model.caption_metrics``; one tokenisation for all of them), and whether the
captions tell images apart (``model.caption_diversity``: distinct and novel captions, words, BM25
findability with references #2-#5 as queries, beside the reference-#1 human anchor).

CLI: ``python -m training.evaluate --model DIR --flickr8k ROOT --split dev``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

import numpy as np

from model.bleu import bleu_tokens, corpus_bleu_scores
from model.caption_diversity import caption_set_report
from model.caption_metrics import cider_d, rouge_l
from model.caption_search import CaptionPrior, DecodeSettings, StepModel, caption_features
from model.cli import StrictArgumentParser
from model.vocabulary import Vocabulary
from training.datasets import CaptionedImage

log = logging.getLogger(__name__)


def generate_captions(
    step_model: StepModel,
    vocab: Vocabulary,
    features: np.ndarray,
    settings: DecodeSettings,
    batch_size: int = 128,
    prior: CaptionPrior | None = None,
) -> list[list[str]]:
    """Captions (as word lists) for a matrix of encoder features, in batches, through the model
    core's caption path (``model.caption_search.caption_features``, as ``CaptionModel``);
    ``prior`` serves MMI reranking (``settings.mmi_lambda``)."""
    out: list[list[str]] = []
    for start in range(0, len(features), batch_size):
        batch = caption_features(step_model, vocab, features[start : start + batch_size], settings, prior)
        out.extend(list(r.tokens) for r in batch)
    return out


def caption_scores(
    hypotheses: Sequence[Sequence[str]], items: Sequence[CaptionedImage], extended: bool = True
) -> dict[str, float]:
    """Corpus BLEU-1..4 (and with ``extended`` CIDEr-D and ROUGE-L) of captions (word lists)
    against each image's reference captions."""
    hyps = [bleu_tokens(h) for h in hypotheses]
    refs = [[bleu_tokens(c) for c in item.captions] for item in items]
    scores = corpus_bleu_scores(hyps, refs)
    if extended:
        scores["cider_d"] = cider_d(hyps, refs)
        scores["rouge_l"] = rouge_l(hyps, refs)
    return scores


def findability_scores(
    hypotheses: Sequence[Sequence[str]], items: Sequence[CaptionedImage], training_captions: Sequence[str] | None = None
) -> dict[str, float]:
    """Distinct captions, words, novel captions (with ``training_captions``) and BM25 findability
    of captions (word lists), queried with each image's references #2-#5."""
    return caption_set_report(hypotheses, [item.captions for item in items], training_captions)


def bleu_on(
    step_model: StepModel,
    vocab: Vocabulary,
    items: Sequence[CaptionedImage],
    features: np.ndarray,
    settings: DecodeSettings,
    extended: bool = False,
) -> dict[str, float]:
    """Corpus BLEU-1..4 (and with ``extended`` CIDEr-D and ROUGE-L) of generated captions."""
    return caption_scores(generate_captions(step_model, vocab, features, settings), items, extended)


def objective(scores: dict[str, float], metric: str) -> float:
    """Value of a tuning metric such as ``bleu4``, ``cider_d`` or a sum like ``bleu1+bleu4``."""
    return sum(scores[name.strip()] for name in metric.split("+"))


def tune_decoding(
    step_model: StepModel,
    vocab: Vocabulary,
    items: Sequence[CaptionedImage],
    features: np.ndarray,
    max_length: int,
    widths: Sequence[int],
    alphas: Sequence[float],
    metric: str = "bleu4",
) -> tuple[DecodeSettings, list[dict]]:
    """Score every beam width x length alpha on ``items`` (a dev split: never the test split)
    and return the best settings by ``metric`` with the whole grid."""
    grid = []
    for width in widths:
        for alpha in alphas if width > 1 else alphas[:1]:  # alpha only ranks finished beams
            settings = DecodeSettings("beam", width, alpha, max_length)
            scores = bleu_on(step_model, vocab, items, features, settings, extended=True)
            grid.append({"decode": settings.describe(), "beam_width": width, "length_alpha": alpha, **scores})
            log.info("tuning %s: %s", settings.describe(), " ".join(f"{k}={v:.4f}" for k, v in scores.items()))
    best = max(grid, key=lambda row: objective(row, metric))
    return DecodeSettings("beam", best["beam_width"], best["length_alpha"], max_length), grid


def main(argv: Sequence[str] | None = None) -> int:
    from training.caption_priors import add_prior_arguments, build_prior, training_captions
    from training.splits import add_data_arguments, load_split_features

    parser = StrictArgumentParser(
        prog="python -m training.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="model artifact directory or URI")
    parser.add_argument("--split", default="dev", help="split to score (Flickr8k: train/dev/test)")
    parser.add_argument("--decode", nargs="+", default=["greedy", "beam"], choices=["greedy", "beam"])
    parser.add_argument("--beam-width", type=int, default=None, help="default: the model config's")
    parser.add_argument("--length-alpha", type=float, default=None)
    parser.add_argument("--limit", type=int, default=None, help="score only the first N images")
    parser.add_argument("--output-json", default=None, help="also write the scores here")
    parser.add_argument("--mmi-lambda", type=float, default=None, help="MMI reranking of beam candidates (0 = off)")
    parser.add_argument(
        "--mmi-mode",
        choices=["rerank", "step"],
        default=None,
        help="rerank the beam's captions, or penalise words during the search (unigram prior)",
    )
    add_data_arguments(parser, with_dev=False)
    add_prior_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    from model.artifact import read_artifact
    from model.captioner import build_step_model

    contents = read_artifact(args.model, encoder_weights=args.encoder_weights)
    enc = contents.config.encoder
    items, feats, report = load_split_features(args, args.split, enc.name, contents.encoder_weights, enc.image_size)
    if args.limit:
        items, feats = items[: args.limit], feats[: args.limit]
    step = build_step_model(contents)
    train_captions = training_captions(args)
    prior = build_prior(args.mmi_prior, args, contents, step, args.prior_images) if args.mmi_lambda else None
    results = {
        "model_id": contents.model_id,
        "split": args.split,
        "images": len(items),
        "skipped": report.summary(),
        "human_anchor": findability_scores([it.captions[0] for it in items], items, train_captions),
    }
    for method in args.decode:
        settings = contents.decode_settings(
            method=method,
            beam_width=args.beam_width if method == "beam" else None,
            length_alpha=args.length_alpha,
            mmi_lambda=args.mmi_lambda if method == "beam" else None,
            mmi_mode=args.mmi_mode,
        )
        captions = generate_captions(step, contents.vocab, feats, settings, prior=prior)
        results[settings.describe()] = {
            **caption_scores(captions, items),
            **findability_scores(captions, items, train_captions),
        }
    text = json.dumps(results, indent=2)
    print(text)
    if args.output_json:
        with open(args.output_json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
