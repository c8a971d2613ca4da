"""Decoding cost of an attention decoder (``model.attention_decoder``) against the INT8 encoder.

Reproduce (after ``python -m training.spatial_features`` and some epochs of
``python -m training.train_attention --work-dir WORK``)::

    python bench/bench_attention_decoding.py --work-dir WORK --images 256 --repeats 3

It loads the work folder's decoder (``--checkpoint``, default ``best``; ``scst``: its SCST run's
chosen epoch) with its vocabulary and sizes (``training.attention_work``), captions ``--images`` dev maps from
the spatial feature cache in batches of ``--batch-size`` with greedy and beam search on OpenVINO
and TensorFlow (median of ``--repeats`` passes after a warm-up), and times the shipped model's
INT8 encoder on the same photos (one process, the pipeline's batch), printing a Markdown table with
each search's share of the encoder's time (the issue's limit: 15 %). ``--compare-model``: a
merge-decoder artifact (e.g. the model shipped before) decodes the same images (pooled vectors =
the maps' means) for a comparison under the same load.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from bench.common import REPO, SHARED, XCEPTION_WEIGHTS, machine, median_time, table
from training.attention_work import CHECKPOINTS


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", required=True)
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="best")
    p.add_argument("--scst-run", default=None, help="the member-1/scst-* run of --checkpoint scst, when several")
    # the sizes are read from the work folder; given (as in older commands), they must agree with it
    p.add_argument("--kind", default=None)
    p.add_argument("--units", type=int, default=None)
    p.add_argument("--embedding-dim", type=int, default=None)
    p.add_argument("--attention-dim", type=int, default=None)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--searches",
        nargs="+",
        default=["greedy", "beam:2:0.5", "beam:3:0.5", "beam:2:0.5:no_repeat"],
        help="searches of the attention decoder (DecodeSettings.parse)",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", default=str(REPO / "models" / "flickr8k-xception"), help="artifact with the INT8 encoder")
    p.add_argument("--compare-model", default=None, help="a merge-decoder artifact to time on the pooled maps too")
    p.add_argument("--cache-dir", default=None, help="feature cache (default: training's)")
    args = p.parse_args()

    from model.artifact import read_artifact
    from model.attention_decoder import make_attention_step_model
    from model.caption_search import DecodeSettings, caption_features
    from model.encoder import ImageEncoder
    from model.image_loading import decode_image
    from training.attention_work import load_member, read_vocabulary
    from training.splits import DEFAULT_CACHE, load_split_features
    from training.train_attention import build_parser

    data = str(SHARED / "data" / "flickr8k")
    targs = build_parser().parse_args(
        [
            "--flickr8k",
            data,
            "--encoder-weights",
            str(XCEPTION_WEIGHTS),
            "--work-dir",
            args.work_dir,
            "--cache-dir",
            args.cache_dir or DEFAULT_CACHE,
            "--no-progress",
        ]
    )
    items, maps, _ = load_split_features(targs, "dev", "xception", str(XCEPTION_WEIGHTS), (299, 299), spatial=True)
    # float32 as the pipeline's encoder returns them (the cache holds float16: converting inside the
    # timed decode would add a cost the pipeline does not have)
    items, maps = items[: args.images], np.asarray(maps[: args.images], np.float32)
    vocab, _ = read_vocabulary(args.work_dir)
    decoder = load_member(args.work_dir, args.checkpoint, vocab, args.scst_run)
    sizes = decoder.config.to_dict()
    for flag in ("kind", "units", "embedding_dim", "attention_dim"):
        if getattr(args, flag) not in (None, sizes[flag]):
            raise SystemExit(f"--{flag.replace('_', '-')} {getattr(args, flag)}: {args.work_dir} holds {sizes[flag]}")
    max_length = decoder.config.max_length

    contents = read_artifact(args.model)
    spatial = contents.config.encoder_output == "map"  # what the pipeline runs for this artifact
    encoder = ImageEncoder(
        "xception", None, (299, 299), precision="int8", int8_ir=contents.int8_encoder, spatial=spatial
    )
    pixels = np.stack([decode_image(Path(it.uri).read_bytes(), (299, 299)).pixels for it in items])

    def encode() -> None:
        for i in range(0, len(pixels), args.batch_size):
            encoder(pixels[i : i + args.batch_size])

    encode()
    enc_ms = 1000 * median_time(encode, args.repeats)[0] / len(pixels)

    rows = []
    for runtime in ("openvino", "tensorflow"):
        step = make_attention_step_model([decoder], runtime, cache="none")
        for settings in (DecodeSettings.parse(spec, max_length) for spec in args.searches):

            def decode(step=step, settings=settings) -> None:
                for i in range(0, len(maps), args.batch_size):
                    caption_features(step, vocab, maps[i : i + args.batch_size], settings)

            decode()
            per = 1000 * median_time(decode, args.repeats)[0] / len(maps)
            rows.append(
                [f"{settings.describe()}, {runtime}", round(per, 2), round(enc_ms, 2), f"{100 * per / enc_ms:.1f} %"]
            )
    # A merge-decoder artifact (e.g. the model shipped before the attention decoder) on the same
    # images (its pooled vector is the map's mean), for a comparison under the same load.
    if args.compare_model:
        from model.captioner import build_step_model

        other = read_artifact(args.compare_model)
        pooled = maps.mean(axis=(1, 2))
        merge = build_step_model(other, "openvino", cache="none")
        for settings in (other.decode_settings(method="greedy"), other.decode_settings()):

            def decode_merge(settings=settings) -> None:
                for i in range(0, len(pooled), args.batch_size):
                    caption_features(merge, other.vocab, pooled[i : i + args.batch_size], settings)

            decode_merge()
            per = 1000 * median_time(decode_merge, args.repeats)[0] / len(pooled)
            rows.append(
                [
                    f"{other.model_id} merge ensemble ({len(other.decoder_weights_paths)} decoders), "
                    f"{settings.describe()}, openvino",
                    round(per, 2),
                    round(enc_ms, 2),
                    f"{100 * per / enc_ms:.1f} %",
                ]
            )
    print(
        f"machine: {machine()}; {decoder.config.kind} attention decoder ({decoder.count_params()} parameters), "
        f"{len(maps)} dev images, batch {args.batch_size}, median of {args.repeats}"
    )
    print(table(["decoding", "ms / image", "INT8 encoder ms / image", "share of encoder"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
