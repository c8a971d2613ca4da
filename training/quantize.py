"""Build the INT8 encoder of a model artifact: NNCF post-training quantisation of its float32
OpenVINO encoder graph, calibrated on training photos, checked by the quality gate on dev
(``training.compare_precision``) and written into the artifact as OpenVINO IR
(``encoder.int8.xml`` + ``encoder.int8.bin``, listed in the manifest with SHA-256; the
calibration is recorded in ``config.json`` under ``encoder.int8``). Workers only load the IR.

The INT8 encoder depends on the encoder weights only, not on the decoder: ``--from-artifact``
copies the IR of another artifact whose encoder (name, image size, weights hash) is the same,
so a retrained decoder gets its INT8 encoder back without quantising again (the gate still
runs, with the new decoder).

``--decoder-weights int8_asym`` (attention decoders): the INT8 path also runs the decoder's two
OpenVINO graphs (per-image projection, step) with INT8 weights (NNCF's data-free weight
compression), stored in the artifact as ``decoder_image.int8.*`` and ``decoder_step.int8.*``
(workers only load them: running needs neither NNCF nor TensorFlow). The gate then judges the INT8
path as a whole: INT8 features and the INT8-weight decoder graphs against float32.

CLI::

    python -m training.quantize --model models/flickr8k-xception --flickr8k ../shared/data/flickr8k \\
      --encoder-weights ../shared/models/xception_weights_tf_dim_ordering_tf_kernels_notop.h5 \\
      --calibration-images 300 --seed 0
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from model.artifact import INT8_DECODER_FILES, ArtifactContents, read_artifact
from model.artifact_config import DECODER_WEIGHT_MODES
from model.artifact_writer import with_int8_encoder
from model.cli import StrictArgumentParser
from model.openvino_runtime import convert_traced, ir_bytes
from training.compare_precision import add_gate_arguments, compare_int8, gate_failures, gate_margins
from training.datasets import CaptionedImage
from training.features import load_image

log = logging.getLogger(__name__)

# Layers kept in float32: the first N weighted layers (convolutions) in graph order, and/or every
# node of some OpenVINO op types. The converted graph's node names do not keep the Keras layer
# names, so a scope is a count. Xception: block1 has 2 convolutions, blocks 2 and 3 have 5 each
# (two separable convolutions, each depthwise + pointwise, and the residual 1x1); "depthwise"
# keeps all depthwise (GroupConvolution) layers in float32. Chosen on dev caption agreement
# (docs/PERFORMANCE.md, "INT8"): with the "mixed" preset, block1 in float32 is the only setting
# measured to reach the gate's 90 % identical captions; "none" quantises every layer NNCF can.
IGNORED_SCOPES: dict[str, tuple[int, tuple[str, ...]]] = {
    "none": (0, ()),
    "block1": (2, ()),
    "blocks1-3": (12, ()),
    "depthwise": (0, ("GroupConvolution",)),
    "block1+depthwise": (2, ("GroupConvolution",)),
}
DEFAULT_IGNORED_SCOPE = "block1"
_WEIGHTED_OPS = ("Convolution", "GroupConvolution", "MatMul")


def first_weighted_ops(graph: Any, count: int) -> list[str]:
    """Friendly names of the first ``count`` convolution / matmul nodes in topological order."""
    names = [op.get_friendly_name() for op in graph.get_ordered_ops() if op.get_type_name() in _WEIGHTED_OPS]
    return names[:count]


def calibration_sample(
    items: Sequence[CaptionedImage], count: int, seed: int, image_size: tuple[int, int]
) -> tuple[list[str], np.ndarray, int]:
    """``count`` decoded training photos drawn at random (``seed``) from ``items``; listed
    photos that are missing or undecodable are skipped (and counted), the draw goes on."""
    order = list(items)
    random.Random(seed).shuffle(order)
    ids: list[str] = []
    pixels: list[np.ndarray] = []
    skipped = 0
    for item in order:
        if len(ids) >= count:
            break
        image_id, image, _, _ = load_image(item, image_size)
        if image is None:
            skipped += 1
            continue
        ids.append(image_id)
        pixels.append(image)
    if not ids:
        raise SystemExit("no usable calibration images")
    return ids, np.stack(pixels), skipped


# NNCF presets: "performance" = symmetric INT8 weights and activations; "mixed" = symmetric weights,
# asymmetric activations (a zero point per tensor: signed tensors whose range is lopsided, such as
# the depthwise outputs and the residual sums, keep more of their 256 levels). Same speed here.
PRESETS = {
    "performance": "performance (symmetric int8 weights and activations)",
    "mixed": "mixed (symmetric int8 weights, asymmetric int8 activations)",
}
DEFAULT_PRESET = "mixed"


def quantize_graph(
    float32_graph: Any,
    images: np.ndarray,
    ignored_names: Sequence[str],
    fast_bias_correction: bool = True,
    ignored_types: Sequence[str] = (),
    preset: str = DEFAULT_PRESET,
) -> tuple[bytes, bytes]:
    """NNCF post-training quantisation of an OpenVINO model (uint8 images in) -> IR (xml, bin);
    the nodes ``ignored_names`` and those of ``ignored_types`` stay float32."""
    import nncf

    dataset = nncf.Dataset([images[i : i + 1] for i in range(len(images))])
    scope = (
        nncf.IgnoredScope(names=list(ignored_names), types=list(ignored_types))
        if ignored_names or ignored_types
        else None
    )
    kwargs = {"ignored_scope": scope} if scope is not None else {}
    quantised = nncf.quantize(
        float32_graph,
        dataset,
        subset_size=len(images),
        preset=nncf.QuantizationPreset(preset),
        fast_bias_correction=fast_bias_correction,
        **kwargs,
    )
    return ir_bytes(quantised)


def encoder_identity(contents: ArtifactContents) -> dict[str, Any]:
    """What an INT8 encoder is derived from and gives: encoder name, image size, source weights
    hash, and its output (the pooled vector, or the spatial map an attention decoder reads)."""
    from model.encoder import weights_fingerprint

    enc = contents.config.encoder
    return {
        "encoder": enc.name,
        "image_size": list(enc.image_size),
        "source_weights_sha256_16": weights_fingerprint(contents.encoder_weights),
        "output": contents.config.encoder_output,
    }


def build_int8(
    args: argparse.Namespace, contents: ArtifactContents, identity: dict[str, Any]
) -> tuple[tuple[bytes, bytes], dict[str, Any]]:
    """Quantise the artifact's encoder; returns the IR and its config block (calibration record)."""
    import nncf
    import openvino

    from model.encoder import ImageEncoder
    from training.splits import read_split

    if identity["source_weights_sha256_16"] in ("none", "imagenet"):
        raise SystemExit("quantising needs the encoder weights as a file: pass --encoder-weights PATH_OR_URI")
    size = (identity["image_size"][0], identity["image_size"][1])
    train = read_split(args, args.calibration_split)
    ids, images, skipped = calibration_sample(train, args.calibration_images, args.seed, size)
    encoder = ImageEncoder(
        identity["encoder"],
        contents.encoder_weights,
        size,
        runtime="openvino",
        cache="none",
        spatial=identity["output"] == "map",
    )
    graph = encoder.openvino_float32_graph()
    first, types = IGNORED_SCOPES[args.ignored_scope]
    ignored = first_weighted_ops(graph, first)
    started = time.monotonic()
    ir = quantize_graph(graph, images, ignored, not args.full_bias_correction, types, args.preset)
    seconds = time.monotonic() - started
    log.info("quantised %s on %d calibration images in %.1f s", identity["encoder"], len(ids), seconds)
    block = {
        **identity,
        "method": "nncf.quantize (post-training, min-max + bias correction)",
        "preset": PRESETS[args.preset],
        "fast_bias_correction": not args.full_bias_correction,
        "ignored_scope": {
            "name": args.ignored_scope,
            "first_weighted_layers_float32": len(ignored),
            "node_names": ignored,
            "op_types": list(types),
        },
        "calibration": {
            "split": args.calibration_split,
            "count": len(ids),
            "seed": args.seed,
            "skipped_unreadable": skipped,
            "image_ids": ids,
        },
        "versions": {"nncf": nncf.__version__, "openvino": openvino.__version__},
        "quantisation_seconds": round(seconds, 1),
    }
    return ir, block


def build_int8_decoder(contents: ArtifactContents, mode: str) -> tuple[tuple[tuple[bytes, bytes], ...], dict[str, Any]]:
    """An attention decoder's two OpenVINO graphs (the per-image projection, the step) with INT8
    weights (``mode`` int8_asym: NNCF's data-free weight compression, per output channel with a
    zero point; activations stay float32), as IR, and their record."""
    import nncf
    import openvino

    from model.attention_decoder import AttentionStepModel
    from model.captioner import build_decoders

    if mode != "int8_asym":
        raise SystemExit(f"--decoder-weights {mode}: nothing to build")
    graphs = AttentionStepModel(build_decoders(contents), contents.ensemble_combine).folded_graphs()
    int8 = nncf.CompressWeightsMode.INT8_ASYM
    irs = tuple(ir_bytes(nncf.compress_weights(convert_traced(g.get_concrete_function()), mode=int8)) for g in graphs)
    record = {
        "mode": mode,
        "method": "nncf.compress_weights (data-free: weights INT8 per output channel, activations float32)",
        "files": [name for pair in INT8_DECODER_FILES for name in pair],
        "versions": {"nncf": nncf.__version__, "openvino": openvino.__version__},
    }
    return irs, record


def reuse_int8(other_uri: str, identity: dict[str, Any]) -> tuple[tuple[bytes, bytes], dict[str, Any]]:
    """The INT8 IR of another artifact, if it was built from the same encoder (else refused)."""
    other = read_artifact(other_uri)
    block = other.config.encoder.int8
    if other.int8_encoder is None or block is None:
        raise SystemExit(f"model artifact {other_uri} has no INT8 encoder to copy")
    theirs = {k: block.get(k, "pooled" if k == "output" else None) for k in identity}  # older IRs: pooled
    if theirs != identity:
        raise SystemExit(
            f"the INT8 encoder of {other_uri} was built from another encoder ({theirs}); this "
            f"artifact's is {identity}: quantise again instead"
        )
    copied = {k: v for k, v in block.items() if k != "quality_gate"}
    return other.int8_encoder, {**copied, "copied_from_model_id": other.model_id}


def add_quantize_arguments(parser: argparse.ArgumentParser) -> None:
    """Calibration and quantisation flags (shared with ``training.export_attention --int8``)."""
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=300,
        help="photos NNCF calibrates on, drawn with --seed from --calibration-split",
    )
    parser.add_argument("--calibration-split", default="train", help="split the calibration photos come from")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration draw")
    parser.add_argument(
        "--ignored-scope",
        choices=sorted(IGNORED_SCOPES),
        default=DEFAULT_IGNORED_SCOPE,
        help="layers kept in float32: none, block1 (first 2 convolutions), blocks1-3 (first 12), "
        "depthwise (every depthwise convolution), block1+depthwise",
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=DEFAULT_PRESET,
        help="NNCF preset: mixed (asymmetric activations, default) or performance (all symmetric)",
    )
    parser.add_argument("--full-bias-correction", action="store_true", help="NNCF's slower, exact bias correction")
    parser.add_argument("--gate-split", default="dev", help="split the quality gate compares on (not calibration)")
    parser.add_argument(
        "--decoder-weights",
        choices=DECODER_WEIGHT_MODES,
        default="float32",
        help="an attention decoder's graph weights on the INT8 path: as trained, or int8_asym (INT8 per "
        "output channel, NNCF's data-free weight compression); the gate judges the INT8 path as a whole",
    )


def build_parser() -> argparse.ArgumentParser:
    from training.splits import add_data_arguments

    parser = StrictArgumentParser(
        prog="python -m training.quantize", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="model artifact (float32 source) to add the INT8 encoder to")
    parser.add_argument("--output", default=None, help="where to write the artifact (default: in place)")
    parser.add_argument(
        "--from-artifact",
        default=None,
        help="copy the INT8 encoder of this artifact (same encoder weights) instead of quantising",
    )
    add_quantize_arguments(parser)
    add_gate_arguments(parser)
    add_data_arguments(parser, with_dev=True)
    return parser


def quantize_artifact(args: argparse.Namespace) -> int:
    """Build (or copy) the INT8 encoder of ``args.model``, gate it and write the artifact to
    ``args.output`` (default: in place); 0 when written, 3 when the gate refused it."""
    if args.gate_split == args.calibration_split:
        raise SystemExit("the quality gate must run on another split than the calibration (e.g. --gate-split dev)")
    contents = read_artifact(args.model, encoder_weights=args.encoder_weights)
    if args.decoder_weights != "float32" and not contents.config.is_attention:
        raise SystemExit("--decoder-weights compresses an attention decoder's graphs; this model has none")
    identity = encoder_identity(contents)
    ir, block = reuse_int8(args.from_artifact, identity) if args.from_artifact else build_int8(args, contents, identity)
    block.pop("decoder_weights", None)
    decoder_irs = None
    if args.decoder_weights != "float32":
        decoder_irs, block["decoder_weights"] = build_int8_decoder(contents, args.decoder_weights)
    report = compare_int8(args, contents, ir, args.gate_split, args.gate_images, decoder_irs)
    margins = gate_margins(args, contents.config.encoder_output)
    failures = gate_failures(report, **margins)
    report["gate"] = {"passed": not failures, "failures": failures, **margins}
    print(json.dumps(report, indent=2))
    if failures:
        log.error("INT8 encoder refused, nothing written: %s", "; ".join(failures))
        return 3
    block["quality_gate"] = report
    target = args.output or args.model
    model_id = with_int8_encoder(args.model, target, ir[0], ir[1], block, decoder_irs)
    print(json.dumps({"written": target, "model_id": model_id, "int8_bytes": len(ir[1])}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    return quantize_artifact(args)


if __name__ == "__main__":
    sys.exit(main())
