"""Caption quality ablation on the dev split: ensemble members, searches and MMI reranking, with
n-gram scores, whether the captions tell images apart, and what each costs to decode
(docs/QUALITY.md).

    python -m bench.bench_quality --model models/flickr8k-xception --precision int8 \\
        --study members search mmi

Studies: ``members`` (ensembles of the first 1..N members and every member alone, the shipped
search), ``search`` (greedy, beam widths x length alphas), ``mmi`` (MMI reranking of the shipped
ensemble's beam candidates, priors x widths x lambdas; ``--mmi-modes step`` applies the unigram
prior's word penalty inside the search instead). Columns: BLEU-1..4, CIDEr-D, ROUGE-L,
distinct captions, distinct words, novel captions (not verbatim in the training captions), BM25
findability (references #2-#5 of each image as queries: R@1/5/10, MRR, median rank), decoding
ms/image (OpenVINO decoder, ``--batch-size`` images a call, median of ``--repeats``) and its share
of the INT8 encoder's ms/image (median of the ratios, the encoder timed in the same process right
before each decoding pass; and the same ratio of process CPU time, which a busy machine distorts
less). The human anchor (the same queries
against reference #1) is printed first.

Dev features come from training's feature cache (float32; INT8 through the quality gate's cache,
keyed by the IR's hash) and the members from the artifact itself, so every row uses exactly the
shipped weights. Dev only: the test split is held back, and the shipped search was chosen on dev,
so these numbers are optimistic for unseen data.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.common import FLICKR8K, XCEPTION_WEIGHTS, machine, table

STUDIES = ("members", "search", "mmi")
HEADERS = [
    "decoders",
    "search",
    "BLEU-1",
    "BLEU-2",
    "BLEU-3",
    "BLEU-4",
    "CIDEr-D",
    "ROUGE-L",
    "distinct %",
    "words",
    "novel %",
    "R@1",
    "R@5",
    "R@10",
    "MRR",
    "median rank",
    "decode ms/image",
    "% of INT8 encoder",
    "% of INT8 encoder (CPU time)",
]


def int8_encoder(contents: Any, items: list, images: int, batch: int) -> Callable[[], tuple[float, float]]:
    """A function that encodes the first ``images`` dev photos with the INT8 encoder (batches of
    ``batch``) and returns its (wall, process CPU) milliseconds per image."""
    from model.encoder import ImageEncoder
    from model.image_loading import decode_image
    from model.storage import read_bytes

    enc = contents.config.encoder
    encoder = ImageEncoder(enc.name, None, enc.image_size, precision="int8", int8_ir=contents.int8_encoder)
    pixels = np.stack([decode_image(read_bytes(it.uri), enc.image_size).pixels for it in items[:images]])
    encoder(pixels[:batch])  # compile + warm up

    def once() -> tuple[float, float]:
        return timed(lambda: [encoder(pixels[i : i + batch]) for i in range(0, len(pixels), batch)], len(pixels))

    return once


def timed(fn: Callable[[], Any], images: int) -> tuple[float, float]:
    """(wall, process CPU time of all threads) milliseconds per image of one call of ``fn``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return 1000 * (time.perf_counter() - wall) / images, 1000 * (time.process_time() - cpu) / images


def main(argv: list[str] | None = None) -> int:
    from model.artifact import read_artifact
    from model.caption_diversity import human_anchor
    from model.caption_search import DecodeSettings
    from model.captioner import build_decoders
    from model.lstm_decoder import make_step_model
    from training.caption_priors import PRIORS, build_prior, training_captions
    from training.compare_precision import int8_split_features
    from training.evaluate import caption_scores, findability_scores, generate_captions
    from training.splits import add_data_arguments, load_split_features

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/flickr8k-xception")
    p.add_argument("--precision", choices=["float32", "int8"], default="int8", help="encoder of the dev features")
    p.add_argument("--study", nargs="+", choices=STUDIES, default=list(STUDIES))
    p.add_argument("--widths", type=int, nargs="+", default=[2, 3, 5, 8, 10])
    p.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    p.add_argument("--priors", nargs="+", choices=PRIORS, default=list(PRIORS))
    p.add_argument("--mmi-widths", type=int, nargs="+", default=[5, 10])
    p.add_argument(
        "--mmi-modes",
        nargs="+",
        choices=["rerank", "step"],
        default=["rerank"],
        help="step: the unigram prior's word penalty inside the search (other priors are skipped)",
    )
    p.add_argument("--lambdas", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.5, 0.7, 1.0])
    p.add_argument("--prior-images", type=int, default=500, help="training images averaged for the decoder prior")
    p.add_argument("--batch-size", type=int, default=16, help="images per decoding call (the pipeline's batch)")
    p.add_argument("--timing-images", type=int, default=320)
    p.add_argument(
        "--encoder-images",
        type=int,
        default=32,
        help="photos the INT8 encoder is timed on, right before every timed decoding pass",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output-json", default=None, help="append one JSON line per row here")
    add_data_arguments(p, with_dev=False)
    args = p.parse_args(argv)
    args.flickr8k = args.flickr8k or str(FLICKR8K)
    args.no_progress = True
    weights = args.encoder_weights or str(XCEPTION_WEIGHTS)

    contents = read_artifact(args.model, encoder_weights=weights)
    enc = contents.config.encoder
    items, feats, _ = load_split_features(args, "dev", enc.name, contents.encoder_weights, enc.image_size)
    if args.precision == "int8":
        by_id = int8_split_features(args, items, enc.name, enc.image_size, contents.int8_encoder)
        items = [it for it in items if it.image_id in by_id]
        feats = np.stack([by_id[it.image_id] for it in items]).astype(np.float32)
    train_captions = training_captions(args)
    decoders = build_decoders(contents)
    shipped = contents.decode_settings()
    time_encoder = int8_encoder(contents, items, args.encoder_images, args.batch_size)
    encoder_ms = float(np.median([time_encoder()[0] for _ in range(args.repeats)]))
    anchor = human_anchor([it.captions for it in items])
    print(
        f"machine: {machine()}; model {contents.model_id}; dev images {len(items)}, {args.precision} features; "
        f"INT8 encoder {encoder_ms:.1f} ms/image (batch {args.batch_size}, {args.encoder_images} photos)\n"
        f"human anchor (reference #1 indexed): R@1 {anchor.r_at_1:.3f} R@5 {anchor.r_at_5:.3f} "
        f"R@10 {anchor.r_at_10:.3f} MRR {anchor.mrr:.3f} median rank {anchor.median_rank:g}\n",
        flush=True,
    )

    steps: dict[tuple[int, ...], Any] = {}

    def step_of(members: tuple[int, ...]) -> Any:
        if members not in steps:
            steps[members] = make_step_model(
                [decoders[i] for i in members], "openvino", None, "none", contents.ensemble_combine
            )
        return steps[members]

    rows: list[list[Any]] = []
    timing = feats[: args.timing_images]

    def measure(
        label: str, members: tuple[int, ...], settings: DecodeSettings, prior: Any = None, prior_name: str = ""
    ) -> None:
        step = step_of(members)
        captions = generate_captions(step, contents.vocab, feats, settings, prior=prior)
        scores = {**caption_scores(captions, items), **findability_scores(captions, items, train_captions)}

        def decode_all() -> None:
            if hasattr(prior, "_cache"):
                prior._cache.clear()  # an n-gram prior starts cold for every timed pass
            for i in range(0, len(timing), args.batch_size):
                generate_captions(
                    step, contents.vocab, timing[i : i + args.batch_size], settings, args.batch_size, prior
                )

        decode_all()
        # Encoder and decoding timed back to back, so a busy spell on the machine hits both.
        pairs = [(time_encoder(), timed(decode_all, len(timing))) for _ in range(args.repeats)]
        ms = float(np.median([d[0] for _, d in pairs]))
        share = float(np.median([d[0] / e[0] for e, d in pairs]))
        cpu_share = float(np.median([d[1] / e[1] for e, d in pairs]))
        search = settings.describe() + (f" [{prior_name} prior]" if prior_name else "")
        rows.append(
            [label, search]
            + [f"{scores[k]:.4f}" for k in ("bleu1", "bleu2", "bleu3", "bleu4", "cider_d", "rouge_l")]
            + [f"{100 * scores['distinct_share']:.1f}", scores["words"], f"{100 * scores['novel_share']:.1f}"]
            + [f"{scores[k]:.3f}" for k in ("r_at_1", "r_at_5", "r_at_10", "mrr")]
            + [f"{scores['median_rank']:g}", f"{ms:.2f}", f"{100 * share:.1f}", f"{100 * cpu_share:.1f}"]
        )
        print(" | ".join(str(c) for c in rows[-1]), flush=True)
        if args.output_json:
            with open(args.output_json, "a") as f:
                f.write(
                    json.dumps(
                        {
                            "decoders": label,
                            "search": search,
                            "precision": args.precision,
                            "decode_ms": ms,
                            "decode_share_of_int8_encoder": share,
                            "decode_cpu_share_of_int8_encoder": cpu_share,
                            "timings_ms": [[e, d] for e, d in pairs],
                            **scores,
                        }
                    )
                    + "\n"
                )

    everyone = tuple(range(len(decoders)))
    if "members" in args.study:
        for k in range(1, len(decoders) + 1):
            measure(f"first {k}", tuple(range(k)), shipped)
        for i in range(1, len(decoders)):  # member 1 alone is "first 1"
            measure(f"member {i + 1} alone", (i,), shipped)
    if "search" in args.study:
        measure(f"{len(decoders)} (shipped)", everyone, DecodeSettings("greedy", max_length=shipped.max_length))
        for width in args.widths:
            for alpha in args.alphas:
                measure(
                    f"{len(decoders)} (shipped)", everyone, DecodeSettings("beam", width, alpha, shipped.max_length)
                )
    if "mmi" in args.study:
        for name in args.priors:
            prior = build_prior(name, args, contents, step_of(everyone), args.prior_images)
            for mode in args.mmi_modes:
                if mode == "step" and name != "unigram":
                    continue
                for width in args.mmi_widths:
                    for lam in args.lambdas:
                        settings = DecodeSettings("beam", width, shipped.length_alpha, shipped.max_length, lam, mode)
                        measure(f"{len(decoders)} (shipped)", everyone, settings, prior, name)
    print()
    print(table(HEADERS, rows))
    return 0


if __name__ == "__main__":
    started = time.time()
    code = main()
    print(f"\n({time.time() - started:.0f} s)", file=sys.stderr)
    sys.exit(code)
