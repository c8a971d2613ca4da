"""Quality gate of a quantised encoder: captions from its features against captions from its
float32 source's features, on a split the calibration never saw (dev); for an attention decoder
whose INT8 path also compresses the decoder's weights, the INT8 captions come from those graphs.

Reports identical captions, corpus BLEU-1..4, CIDEr-D, the share of distinct captions and
findability (R@5) of both and their differences, and the cosine between the two feature vectors
of each image (median, min). ``training.quantize`` runs the same comparison before it writes an
INT8 encoder and refuses one that fails the gate.

The gate refuses any loss of quality beyond its margins (each BLEU-n, CIDEr-D, R@5, distinct
captions). The identical-caption share is a second check whose default depends on what the
encoder returns: for a pooled vector, where captions of an unchanged quality stay identical, 90 %;
for a spatial map, read cell by cell by an attention decoder whose word choices turn on small
differences between cells, a floor of 50 % that catches a broken IR while the quality margins
judge the captions (docs/QUALITY.md has the measured shares).

CLI: ``python -m training.compare_precision --model DIR --flickr8k ROOT --split dev --encoder-weights W``
(exit status 1 when the gate fails).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from model.bleu import bleu_tokens, corpus_bleu_scores
from model.cli import StrictArgumentParser
from model.storage import sha256_hex
from training.datasets import CaptionedImage

log = logging.getLogger(__name__)

BLEU_KEYS = ("bleu1", "bleu2", "bleu3", "bleu4")
DEFAULT_MAX_BLEU_DROP = 0.005
DEFAULT_MAX_CIDER_DROP = 0.02
DEFAULT_MAX_R5_DROP = 0.015
DEFAULT_MAX_DISTINCT_DROP = 0.02
DEFAULT_MIN_IDENTICAL = {"pooled": 0.90, "map": 0.50}  # by the encoder's output (module docstring)
QUALITY_KEYS = ("cider_d", "r_at_5", "distinct_share")


def feature_cosines(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``other`` with the same row of ``reference``."""
    a = np.asarray(reference, np.float64)
    b = np.asarray(other, np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)


def caption_agreement(
    reference: Sequence[Sequence[str]], other: Sequence[Sequence[str]], references: Sequence[Sequence[str]]
) -> dict[str, Any]:
    """Identical-caption share, corpus BLEU-1..4 and CIDEr-D, distinct captions and findability
    (R@5) of two caption lists (word lists) against the same reference captions, with the
    ``other - reference`` differences."""
    from model.caption_diversity import caption_findability, distinct_share
    from model.caption_metrics import cider_d

    if len(reference) != len(other) or len(reference) != len(references):
        raise ValueError("caption lists and references must have one entry per image")
    refs = [[bleu_tokens(c) for c in caps] for caps in references]

    findable = any(len(r) > 1 for r in references)  # findability queries with references #2..#5

    def quality(captions: Sequence[Sequence[str]]) -> tuple[dict[str, float], dict[str, float]]:
        hyps = [bleu_tokens(" ".join(h)) for h in captions]
        scores = {"cider_d": cider_d(hyps, refs), "distinct_share": distinct_share(captions)}
        if findable:
            scores["r_at_5"] = caption_findability(captions, references).r_at_5
        return corpus_bleu_scores(hyps, refs), scores

    (bleu_ref, quality_ref), (bleu_other, quality_other) = quality(reference), quality(other)
    same = sum(list(a) == list(b) for a, b in zip(reference, other))
    return {
        "images": len(reference),
        "identical_captions": same / max(1, len(reference)),
        "bleu_float32": bleu_ref,
        "bleu_quantised": bleu_other,
        "bleu_delta": {k: bleu_other[k] - bleu_ref[k] for k in BLEU_KEYS},
        "quality_float32": quality_ref,
        "quality_quantised": quality_other,
        "quality_delta": {k: quality_other[k] - quality_ref[k] for k in QUALITY_KEYS if k in quality_ref},
    }


def gate_margins(args: argparse.Namespace, encoder_output: str) -> dict[str, float]:
    """The gate's margins from the flags; ``--min-identical`` defaults by ``encoder_output``."""
    identical = args.min_identical if args.min_identical is not None else DEFAULT_MIN_IDENTICAL[encoder_output]
    return {
        "max_bleu_drop": args.max_bleu_drop,
        "max_cider_drop": args.max_cider_drop,
        "max_r5_drop": args.max_r5_drop,
        "max_distinct_drop": args.max_distinct_drop,
        "min_identical": identical,
    }


def gate_failures(
    report: dict[str, Any],
    max_bleu_drop: float,
    min_identical: float,
    max_cider_drop: float = DEFAULT_MAX_CIDER_DROP,
    max_r5_drop: float = DEFAULT_MAX_R5_DROP,
    max_distinct_drop: float = DEFAULT_MAX_DISTINCT_DROP,
) -> list[str]:
    """Why a comparison report fails the gate (empty when it passes): any BLEU-n lower than
    float32's by more than ``max_bleu_drop``; CIDEr-D, R@5 or the distinct-caption share lower by
    more than their margins (when the report has them); fewer identical captions than
    ``min_identical``."""
    failures = [
        f"{k} drops by {-delta:.4f} (> {max_bleu_drop})"
        for k, delta in report["bleu_delta"].items()
        if -delta > max_bleu_drop
    ]
    margins = {"cider_d": max_cider_drop, "r_at_5": max_r5_drop, "distinct_share": max_distinct_drop}
    for k, delta in report.get("quality_delta", {}).items():
        if -delta > margins[k]:
            failures.append(f"{k} drops by {-delta:.4f} (> {margins[k]})")
    if report["identical_captions"] < min_identical:
        failures.append(
            f"identical captions {100 * report['identical_captions']:.1f} % (< {100 * min_identical:.1f} %)"
        )
    return failures


def ir_fingerprint(xml: bytes, weights: bytes) -> str:
    """Content hash of an OpenVINO IR (keys its features in the feature cache)."""
    return sha256_hex(sha256_hex(xml).encode() + sha256_hex(weights).encode())[:16]


def int8_split_features(
    args: argparse.Namespace,
    items: Sequence[CaptionedImage],
    encoder_name: str,
    image_size: tuple[int, int],
    ir: tuple[bytes, bytes],
    spatial: bool = False,
) -> dict[str, np.ndarray]:
    """Features of ``items`` from the INT8 IR, through the feature cache (keyed by the IR's hash,
    so a re-run of the gate on the same IR does not run the encoder again); ``spatial``: the IR
    outputs the map (kept in float16, as the float32 encoder's maps)."""
    from model.encoder import ImageEncoder
    from training.features import FeatureCache, extract_features, feature_cache_key

    cache = FeatureCache(
        args.cache_dir,
        feature_cache_key(f"{encoder_name}-int8", image_size, ir_fingerprint(*ir), spatial=spatial),
        dtype=np.float16 if spatial else np.float32,
    )
    built: list[ImageEncoder] = []

    def encode(images: np.ndarray) -> np.ndarray:
        if not built:
            built.append(ImageEncoder(encoder_name, None, image_size, precision="int8", int8_ir=ir, spatial=spatial))
        return built[0](images)

    extract_features(items, encode, image_size, cache, batch_size=16, progress=not args.no_progress)
    return {it.image_id: cache.get(it.image_id) for it in items if it.image_id in cache}


def compare_int8(
    args: argparse.Namespace,
    contents: Any,
    ir: tuple[bytes, bytes],
    split: str,
    limit: int | None = None,
    decoder_irs: tuple[tuple[bytes, bytes], ...] | None = None,
) -> dict[str, Any]:
    """Compare the float32 path (float32 features, the decoder as trained) with the INT8 path on
    ``split``: INT8 features, and an attention decoder's INT8 graphs ``decoder_irs`` when given
    (their weights in INT8: ``training.quantize --decoder-weights``)."""
    from model.captioner import build_step_model
    from training.evaluate import generate_captions
    from training.splits import load_split_features

    enc = contents.config.encoder
    size = enc.image_size
    spatial = contents.config.encoder_output == "map"  # maps stay float16 (the step model casts each batch)
    items, feats32, report = load_split_features(args, split, enc.name, contents.encoder_weights, size, spatial=spatial)
    if limit:
        items, feats32 = items[:limit], feats32[:limit]
    by_id = int8_split_features(args, items, enc.name, size, ir, spatial)
    keep = [i for i, it in enumerate(items) if it.image_id in by_id]
    items = [items[i] for i in keep]
    feats32 = feats32[keep]
    feats8 = np.stack([by_id[it.image_id] for it in items]).astype(np.float16 if spatial else np.float32)
    settings = contents.decode_settings()
    step = build_step_model(contents)
    step8 = step if decoder_irs is None else build_step_model(contents, "openvino", "none", decoder_irs)
    captions32 = generate_captions(step, contents.vocab, feats32, settings)
    captions8 = generate_captions(step8, contents.vocab, feats8, settings)
    pooled = (lambda f: f.reshape(len(f), -1, f.shape[-1]).mean(axis=1, dtype=np.float32)) if spatial else (lambda f: f)
    cos = feature_cosines(pooled(feats32), pooled(feats8))  # of the embeddings the pipeline emits
    result = {
        "split": split,
        "decode": settings.describe(),
        "int8_decoder_graphs": decoder_irs is not None,
        "model_id": contents.model_id,
        **caption_agreement(captions32, captions8, [it.captions for it in items]),
        "feature_cosine": {"median": float(np.median(cos)), "min": float(np.min(cos)), "mean": float(np.mean(cos))},
        "skipped": report.summary()["missing"] + report.summary()["undecodable"],
    }
    return result


def add_gate_arguments(parser: argparse.ArgumentParser) -> None:
    """The gate's margins (shared with ``training.quantize``)."""
    g = parser.add_argument_group("quality gate")
    g.add_argument(
        "--max-bleu-drop",
        type=float,
        default=DEFAULT_MAX_BLEU_DROP,
        help="refuse when any corpus BLEU-1..4 is lower than float32's by more than this",
    )
    g.add_argument(
        "--max-cider-drop", type=float, default=DEFAULT_MAX_CIDER_DROP, help="refuse when CIDEr-D drops by more"
    )
    g.add_argument(
        "--max-r5-drop", type=float, default=DEFAULT_MAX_R5_DROP, help="refuse when findability R@5 drops by more"
    )
    g.add_argument(
        "--max-distinct-drop",
        type=float,
        default=DEFAULT_MAX_DISTINCT_DROP,
        help="refuse when the share of distinct captions drops by more",
    )
    g.add_argument(
        "--min-identical",
        type=float,
        default=None,
        help="refuse when fewer captions than this share are identical to float32's (default: "
        f"{DEFAULT_MIN_IDENTICAL['pooled']} for a pooled encoder, {DEFAULT_MIN_IDENTICAL['map']} for a "
        "spatial map read by an attention decoder)",
    )
    g.add_argument("--gate-images", type=int, default=None, help="compare only the first N images of the split")


def main(argv: Sequence[str] | None = None) -> int:
    from model.artifact import read_artifact
    from training.splits import add_data_arguments

    parser = StrictArgumentParser(
        prog="python -m training.compare_precision",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="model artifact holding an INT8 encoder")
    parser.add_argument("--split", default="dev", help="split to compare on (never the calibration split)")
    parser.add_argument("--output-json", default=None, help="also write the report here")
    add_gate_arguments(parser)
    add_data_arguments(parser, with_dev=False)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    contents = read_artifact(args.model, encoder_weights=args.encoder_weights)
    if contents.int8_encoder is None:
        print(f"model artifact {args.model} has no INT8 encoder (build one with training.quantize)", file=sys.stderr)
        return 2
    decoder_irs = contents.int8_decoder
    report = compare_int8(args, contents, contents.int8_encoder, args.split, args.gate_images, decoder_irs)
    margins = gate_margins(args, contents.config.encoder_output)
    failures = gate_failures(report, **margins)
    report["gate"] = {"passed": not failures, "failures": failures, **margins}
    text = json.dumps(report, indent=2)
    print(text)
    if args.output_json:
        with open(args.output_json, "w") as f:
            f.write(text + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
