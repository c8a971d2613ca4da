"""Throughput, decoding cost, bf16 and memory of the captioning pipeline on real Flickr8k photos.

Reproduce (on an otherwise idle machine)::

    python bench/bench_throughput.py --images 480 --repeats 3            # all but memory
    python bench/bench_throughput.py --images 2000 --repeats 3 --only encoder pipeline seed decoding
    python bench/bench_throughput.py --only memory --memory-sizes 500 5000
    python bench/bench_throughput.py --images 2000 --only pipeline seed --precision bfloat16 --seed-images 60

Sections (each prints a Markdown table):
  encoder   (1) bare Xception forward pass, compiled, on pre-decoded 299x299 batches, in the
                runtime the pipeline uses (--runtime) and, for reference, in the other one
  pipeline  (2) run_pipeline.py end to end on the DirectRunner (read, decode, resize, encode,
                beam-3 captions, Parquet), timed from its own summary: one cold start (converts
                the graphs to OpenVINO and caches them, as a fresh worker does) and --repeats
                warm starts (graphs read from the cache); (2) is the median of the warm runs
  seed      (3) the seed-style loop of the tutorials -- COMPARISON BASELINE written here, not
                project code: one image at a time, model.predict for the features, then one
                model.predict per generated word over the padded prefix
  decoding  greedy and beam-3 decode time per image as a share of encoder time
  bf16      the encoder in bfloat16 (float32 stem, as shipped, and all-bf16) vs float32:
                speed, caption agreement, BLEU
  memory    peak RSS of a pipeline run over N images for several N
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from bench.common import FLICKR8K, REPO, XCEPTION_WEIGHTS, machine, median_time, python, run_with_rss, table


def dev_images(n: int) -> list[Path]:
    """The first n images of the Flickr8k dev split that are present (then train, if needed)."""
    names = (FLICKR8K / "Flickr_8k.devImages.txt").read_text().split() + (
        FLICKR8K / "Flickr_8k.trainImages.txt"
    ).read_text().split()
    paths = [FLICKR8K / "images" / name for name in names]
    present = [p for p in paths if p.exists()]
    if not present:
        raise SystemExit(f"no Flickr8k images under {FLICKR8K}")
    return [present[i % len(present)] for i in range(n)]


def link_dir(paths: list[Path], root: Path) -> Path:
    """A folder of uniquely named symlinks (so N may exceed the number of distinct photos)."""
    root.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(paths):
        (root / f"{i:06d}_{p.name}").symlink_to(p)
    return root


def decode_all(paths: list[Path], size: tuple[int, int]) -> np.ndarray:
    from model.image_loading import decode_image

    return np.stack([decode_image(p.read_bytes(), size).pixels for p in paths])


def bench_encoder(enc, pixels: np.ndarray, batch: int, repeats: int) -> float:
    enc(pixels[:batch])  # trace + warm up

    def once():
        for i in range(0, len(pixels), batch):
            enc(pixels[i : i + batch])

    med, _ = median_time(once, repeats)
    return len(pixels) / med


def pipeline_command(image_dir: Path, out: str, args, extra=()) -> list[str]:
    """run_pipeline.py over the images of ``image_dir`` with the benchmark's settings."""
    return [
        python(),
        str(REPO / "run_pipeline.py"),
        "--json",
        "--input",
        f"{image_dir}/*.jpg",
        "--output",
        out,
        "--encoder_weights",
        str(args.encoder_weights),
        "--batch_size",
        str(args.batch_size),
        "--model_cache_dir",
        str(args.model_cache_dir),
        "--progress_seconds",
        "0",
        *extra,
    ]


def pipeline_summary(res: subprocess.CompletedProcess) -> dict:
    if res.returncode != 0:
        raise SystemExit(f"pipeline failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout[res.stdout.index("{") :])


def run_pipeline_once(image_dir: Path, args, extra=()) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return pipeline_summary(
            subprocess.run(
                pipeline_command(image_dir, f"{tmp}/out", args, extra), capture_output=True, text=True, cwd=REPO
            )
        )


def seed_style_loop(paths: list[Path], model_dir: str, weights: str) -> float:
    """COMPARISON BASELINE (the tutorials' loop), not how the project captions images."""
    import keras
    from keras.applications.xception import preprocess_input
    from keras.utils import img_to_array, load_img, pad_sequences

    from model.artifact import read_artifact
    from model.captioner import build_decoder
    from model.lstm_decoder import build_prefix_model, copy_weights

    contents = read_artifact(model_dir)
    decoder = build_decoder(contents)
    prefix_model = build_prefix_model(decoder.config)
    copy_weights(decoder.training_model, prefix_model)
    cnn = keras.applications.Xception(weights=weights, include_top=False, pooling="avg")
    vocab, max_len = contents.vocab, decoder.config.max_length
    started = time.perf_counter()
    for path in paths:
        image = img_to_array(load_img(path, target_size=(299, 299)))
        photo = cnn.predict(preprocess_input(image[None]), verbose=0)
        seq = [vocab.start_id]
        for _ in range(max_len - 1):
            padded = pad_sequences([seq], maxlen=max_len)
            word = int(np.argmax(prefix_model.predict([photo, padded], verbose=0)))
            if word == vocab.end_id:
                break
            seq.append(word)
    return len(paths) / (time.perf_counter() - started)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=480)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16, help="encoder batch, of (1) and of the pipeline")
    ap.add_argument("--seed-images", type=int, default=20, help="images for the (slow) seed-style loop")
    ap.add_argument("--bf16-images", type=int, default=480)
    ap.add_argument("--memory-sizes", type=int, nargs="+", default=[500, 5000])
    ap.add_argument(
        "--precision",
        default="float32",
        choices=["float32", "bfloat16"],
        help="encoder precision of the pipeline runs (section pipeline)",
    )
    ap.add_argument(
        "--runtime",
        default="openvino",
        choices=["openvino", "tensorflow"],
        help="encoder runtime of the pipeline runs and of (1)",
    )
    ap.add_argument("--model", default=str(REPO / "models" / "flickr8k-xception"))
    ap.add_argument("--encoder-weights", default=str(XCEPTION_WEIGHTS))
    ap.add_argument(
        "--only",
        nargs="+",
        default=["encoder", "pipeline", "seed", "decoding", "bf16"],
        choices=["encoder", "pipeline", "seed", "decoding", "bf16", "memory"],
    )
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print(f"command: {' '.join(sys.argv)}\n")
    results: dict[str, float] = {}
    paths = dev_images(args.images)
    work = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    atexit.register(shutil.rmtree, work, True)
    args.model_cache_dir = work / "model-cache"  # starts empty: the first pipeline run is a cold start
    # Pipeline runs first, in child processes, before this process holds any encoder.
    if "pipeline" in args.only:
        image_dir = link_dir(paths, work / "pipeline")
        extra = ["--precision", args.precision, "--encoder_runtime", args.runtime]
        cold = run_pipeline_once(image_dir, args, extra)
        runs = [run_pipeline_once(image_dir, args, extra) for _ in range(args.repeats)]

        def excl_load(r: dict) -> float:
            return r["captioned"] / (r["wall_seconds"] - (r.get("model_load_seconds") or 0))

        results["pipeline"] = statistics.median(r["images_per_second"] for r in runs)
        results["pipeline_excl_load"] = statistics.median(excl_load(r) for r in runs)
        results["pipeline_cold"] = cold["images_per_second"]
        print(
            table(
                ["run", "captioned", "wall s", "model load s", "images/s", "images/s excl. load"],
                [
                    [
                        label,
                        r["captioned"],
                        r["wall_seconds"],
                        r.get("model_load_seconds"),
                        r["images_per_second"],
                        excl_load(r),
                    ]
                    for label, r in [("cold start", cold)] + [(f"warm start {i + 1}", r) for i, r in enumerate(runs)]
                ],
            )
        )
        print()
    enc = None
    pixels = None
    if {"encoder", "decoding", "bf16"} & set(args.only):
        from model.encoder import ImageEncoder

        enc = ImageEncoder("xception", args.encoder_weights, runtime=args.runtime, cache=str(args.model_cache_dir))
        pixels = decode_all(paths, enc.image_size)

    if "encoder" in args.only:
        results["encoder"] = bench_encoder(enc, pixels, args.batch_size, args.repeats)
        other = "tensorflow" if args.runtime == "openvino" else "openvino"
        results["encoder_other"] = bench_encoder(
            ImageEncoder("xception", args.encoder_weights, runtime=other, cache=str(args.model_cache_dir)),
            pixels,
            args.batch_size,
            args.repeats,
        )
    if "seed" in args.only:
        rates = [
            seed_style_loop(paths[: args.seed_images], args.model, args.encoder_weights) for _ in range(args.repeats)
        ]
        results["seed"] = statistics.median(rates)
    if {"encoder", "pipeline", "seed"} & set(args.only):
        rows = []
        other = "tensorflow" if args.runtime == "openvino" else "openvino"
        labels = {
            "encoder": f"(1) bare encoder ({args.runtime}, compiled, batch {args.batch_size})",
            "encoder_other": f"(1, for reference) bare encoder in {other}",
            "pipeline": "(2) pipeline end to end (DirectRunner, beam-3), warm start",
            "pipeline_excl_load": "(2') pipeline, warm start, model load excluded",
            "pipeline_cold": "(2c) pipeline end to end, cold start (graphs converted)",
            "seed": f"(3) seed-style loop (baseline, {args.seed_images} images)",
        }
        for key in ("encoder", "encoder_other", "pipeline", "pipeline_excl_load", "pipeline_cold", "seed"):
            if key in results:
                rows.append([labels[key], round(results[key], 2)])
        print(table([f"what (median of {args.repeats} runs, {args.images} images)", "images/s"], rows))
        ratios = []
        if "pipeline" in results and "encoder" in results:
            ratios.append(["(2)/(1)", round(results["pipeline"] / results["encoder"], 3), ">= 0.90"])
            ratios.append(["(2')/(1)", round(results["pipeline_excl_load"] / results["encoder"], 3), ""])
            ratios.append(["(2c)/(1)", round(results["pipeline_cold"] / results["encoder"], 3), ""])
        if "pipeline" in results and "seed" in results:
            ratios.append(["(2)/(3)", round(results["pipeline"] / results["seed"], 1), ">= 15"])
        if ratios:
            print()
            print(table(["ratio", "value", "goal"], ratios))
        print()

    if "decoding" in args.only:
        from model.caption_search import DecodeSettings
        from model.captioner import load_caption_model

        model = load_caption_model(args.model, encoder_weights=args.encoder_weights, with_encoder=False)
        feats = np.concatenate([enc(pixels[i : i + args.batch_size]) for i in range(0, len(pixels), args.batch_size)])
        enc_rate = results.get("encoder") or bench_encoder(enc, pixels, args.batch_size, 1)
        enc_ms = 1000 / enc_rate
        rows = []
        from model.lstm_decoder import make_step_model

        step_models = {
            "tensorflow": model.step_model,
            "openvino": make_step_model(
                model.decoders, "openvino", model.model_id, str(args.model_cache_dir), model.step_model.combine
            ),
        }
        # Greedy, and the model's default search (what the pipeline runs without flags).
        for runtime, settings in [
            (r, s)
            for r in ("openvino", "tensorflow")
            for s in (DecodeSettings("greedy", max_length=model.default_settings.max_length), model.default_settings)
        ]:
            model.step_model = step_models[runtime]

            def once(settings=settings):
                for i in range(0, len(feats), args.batch_size):
                    model.caption_features(feats[i : i + args.batch_size], settings)

            once()
            med, _ = median_time(once, args.repeats)
            per = 1000 * med / len(feats)
            rows.append(
                [f"{settings.describe()}, {runtime}", round(per, 3), round(enc_ms, 2), f"{100 * per / enc_ms:.1f} %"]
            )
        print(
            table([f"decoding (batch {args.batch_size})", "ms / image", "encoder ms / image", "share of encoder"], rows)
        )
        print()

    if "bf16" in args.only:
        from model.bleu import bleu_tokens, corpus_bleu_scores
        from model.captioner import load_caption_model
        from model.encoder import ImageEncoder
        from model.flickr8k import parse_token_file

        n = min(args.bf16_images, len(pixels))
        px = pixels[:n]
        model = load_caption_model(args.model, encoder_weights=args.encoder_weights, with_encoder=False)
        refs_by_id = parse_token_file((FLICKR8K / "Flickr8k.token.txt").read_text())
        refs = [[bleu_tokens(c) for c in refs_by_id[p.name]] for p in paths[:n]]
        variants = [
            ("float32", "tensorflow", True),
            ("float32", "openvino", True),
            ("bfloat16", "tensorflow", True),
            ("bfloat16", "tensorflow", False),
            ("bfloat16", "openvino", True),
            ("bfloat16", "openvino", False),
        ]
        rows, base_caps, base_rate = [], None, {}
        for precision, runtime, stem in variants:
            e = (
                enc
                if (precision, runtime) == ("float32", args.runtime)
                else ImageEncoder(
                    "xception",
                    args.encoder_weights,
                    precision=precision,
                    runtime=runtime,
                    float32_stem=stem,
                    cache=str(args.model_cache_dir),
                )
            )
            rate = bench_encoder(e, px, args.batch_size, args.repeats)
            feats = np.concatenate([e(px[i : i + args.batch_size]) for i in range(0, n, args.batch_size)])
            caps = [r.caption for r in model.caption_features(feats)]
            if base_caps is None:
                base_caps = caps  # float32 TensorFlow: the reference captions
            if precision == "float32":
                base_rate[runtime] = rate
            bleu = corpus_bleu_scores([bleu_tokens(c) for c in caps], refs)
            same = sum(a == b for a, b in zip(base_caps, caps)) / n
            label = (
                precision
                if precision == "float32"
                else "bfloat16, " + ("float32 stem (shipped)" if stem else "all layers (not offered)")
            )
            rows.append(
                [
                    runtime,
                    label,
                    round(rate, 2),
                    round(rate / base_rate["tensorflow"], 3),
                    round(rate / base_rate.get(runtime, rate), 3),
                    f"{100 * same:.1f} %",
                    round(bleu["bleu1"], 4),
                    round(bleu["bleu4"], 4),
                ]
            )
        print(
            table(
                [
                    "runtime",
                    "encoder precision",
                    f"images/s (median of {args.repeats})",
                    "speed-up vs TF float32",
                    "speed-up vs same runtime float32",
                    f"captions identical to TF float32 ({n} images)",
                    "BLEU-1",
                    "BLEU-4",
                ],
                rows,
            )
        )
        print("\ngoals: speed-up >= 1.8, identical captions >= 95 %, BLEU-4 within 0.005 of float32\n")

    if "memory" in args.only:
        rows = []
        run_pipeline_once(link_dir(paths[:16], work / "memory-warm-up"), args)  # every N starts warm
        for n in args.memory_sizes:
            image_dir = link_dir(dev_images(n), work / f"memory-{n}")
            with tempfile.TemporaryDirectory() as tmp:
                res, peak, samples = run_with_rss(pipeline_command(image_dir, f"{tmp}/out", args), cwd=REPO)
                summary = pipeline_summary(res)
                rows.append(
                    [n, summary["captioned"], summary["wall_seconds"], summary["images_per_second"], int(round(peak))]
                )
        print(table(["images", "captioned", "wall s", "images/s", "peak RSS MiB (process tree)"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
