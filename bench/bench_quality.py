"""Caption quality ablation on the dev split: ensembles of 1..N members of a trained artifact,
the searches compared, and what each costs to decode (docs/QUALITY.md).

    python -m bench.bench_quality --model models/flickr8k-xception

Reads dev features from training's feature cache (``python -m training.train`` fills it) and
the members from the artifact itself (``decoder.weights.h5``, ``decoder-2.weights.h5`` …), so
every row uses exactly the shipped weights. Prints Markdown tables. Dev only: the test split is
held back, and the decoding was chosen on dev, so these numbers are optimistic for unseen data.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from bench.common import FLICKR8K, XCEPTION_WEIGHTS, machine, median_time, table


def main(argv: list[str] | None = None) -> int:
    from model.artifact import read_artifact
    from model.captioner import build_decoders
    from model.lstm_decoder import make_step_model
    from model.caption_search import DecodeSettings
    from training.evaluate import bleu_on, generate_captions
    from training.splits import add_data_arguments, load_split_features

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/flickr8k-xception")
    p.add_argument("--batch-size", type=int, default=16, help="images per decoding call (the pipeline's batch)")
    p.add_argument("--timing-images", type=int, default=320)
    p.add_argument("--repeats", type=int, default=3)
    add_data_arguments(p, with_dev=False)
    args = p.parse_args(argv)
    args.flickr8k = args.flickr8k or str(FLICKR8K)
    args.no_progress = True
    weights = args.encoder_weights or str(XCEPTION_WEIGHTS)

    contents = read_artifact(args.model, encoder_weights=weights)
    enc = contents.config.encoder
    items, feats, _ = load_split_features(args, "dev", enc.name, contents.encoder_weights, enc.image_size)
    decoders = build_decoders(contents)
    shipped = contents.decode_settings()
    max_len = shipped.max_length
    searches = [DecodeSettings("greedy", max_length=max_len), DecodeSettings("beam", 3, 0.7, max_len)]
    if shipped not in searches:
        searches.append(shipped)
    members = contents.config.training.get("members") or [{}]
    print(f"machine: {machine()}; model {contents.model_id}; dev images {len(items)}\n")

    rows = []
    timing = feats[: args.timing_images]
    for k in range(1, len(decoders) + 1):
        step = make_step_model(decoders[:k], "openvino", None, "none", contents.ensemble_combine)
        for settings in searches:
            scores = bleu_on(step, contents.vocab, items, feats, settings, extended=True)

            def once(step=step, settings=settings) -> None:
                for i in range(0, len(timing), args.batch_size):
                    generate_captions(step, contents.vocab, timing[i:i + args.batch_size], settings, args.batch_size)

            once()
            med, _ = median_time(once, args.repeats)
            fit_s = sum(m.get("fit_seconds", 0) for m in members[:k])
            rows.append([f"{k} member{'s' if k > 1 else ''}", settings.describe(), round(scores["bleu1"], 4),
                         round(scores["bleu4"], 4), round(scores["cider_d"], 4), round(scores["rouge_l"], 4),
                         round(1000 * med / len(timing), 2), round(fit_s / 60, 1)])
            print(" | ".join(str(c) for c in rows[-1]), flush=True)
    print()
    print(table(["decoders", "search", "BLEU-1", "BLEU-4", "CIDEr-D", "ROUGE-L", "decode ms/image (OpenVINO, batch %d)"
                 % args.batch_size, "fit minutes"], rows))
    return 0


if __name__ == "__main__":
    started = time.time()
    code = main()
    print(f"\n({time.time() - started:.0f} s)", file=sys.stderr)
    sys.exit(code)
