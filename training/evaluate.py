"""Corpus BLEU-1..4 of a model on a dataset split, paper style (see ``model.bleu``).

CLI: ``python -m training.evaluate --model DIR --flickr8k ROOT --split dev``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

import numpy as np

from model.bleu import bleu_tokens, corpus_bleu_scores
from model.decoding import DecodeSettings, decode_batch, strip_end
from model.vocabulary import Vocabulary
from training.datasets import CaptionedImage

log = logging.getLogger(__name__)


def generate_captions(step_decoder, vocab: Vocabulary, features: np.ndarray, settings: DecodeSettings,
                      batch_size: int = 128) -> list[list[str]]:
    """Decode captions (as word lists) for a matrix of encoder features, in batches."""
    out: list[list[str]] = []
    for start in range(0, len(features), batch_size):
        hyps = decode_batch(step_decoder, features[start:start + batch_size], vocab.start_id, vocab.end_id, settings,
                            vocab.never_generated)
        out.extend(vocab.decode(strip_end(h.token_ids, vocab.end_id)) for h in hyps)
    return out


def bleu_on(step_decoder, vocab: Vocabulary, items: Sequence[CaptionedImage], features: np.ndarray,
            settings: DecodeSettings) -> dict[str, float]:
    """Corpus BLEU-1..4 of generated captions against each image's reference captions."""
    hyps = generate_captions(step_decoder, vocab, features, settings)
    refs = [[bleu_tokens(c) for c in item.captions] for item in items]
    return corpus_bleu_scores([bleu_tokens(h) for h in hyps], refs)


def main(argv: Sequence[str] | None = None) -> int:
    from training.train import add_data_arguments, load_split_features

    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model artifact directory or URI")
    parser.add_argument("--split", default="dev", help="split to score (Flickr8k: train/dev/test)")
    parser.add_argument("--decode", nargs="+", default=["greedy", "beam"], choices=["greedy", "beam"])
    parser.add_argument("--beam-width", type=int, default=3)
    parser.add_argument("--length-alpha", type=float, default=None)
    parser.add_argument("--limit", type=int, default=None, help="score only the first N images")
    parser.add_argument("--output-json", default=None, help="also write the scores here")
    add_data_arguments(parser, with_dev=False)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    from model.artifact import read_artifact
    from model.captioner import build_decoder

    contents = read_artifact(args.model, encoder_weights=args.encoder_weights)
    enc = contents.config["encoder"]
    items, feats, report = load_split_features(args, args.split, enc["name"], contents.encoder_weights,
                                               tuple(enc["image_size"]))
    if args.limit:
        items, feats = items[: args.limit], feats[: args.limit]
    step = build_decoder(contents).stepwise()
    results = {"model_id": contents.model_id, "split": args.split, "images": len(items),
               "skipped": report.summary()}
    for method in args.decode:
        settings = contents.decode_settings(method=method, beam_width=args.beam_width if method == "beam" else None,
                                            length_alpha=args.length_alpha)
        results[settings.describe()] = bleu_on(step, contents.vocab, items, feats, settings)
    text = json.dumps(results, indent=2)
    print(text)
    if args.output_json:
        with open(args.output_json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
