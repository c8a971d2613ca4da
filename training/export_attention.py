"""Build a model artifact (format 3, ``model.artifact``) from attention training work folders.

CLI (the work folders of ``python -m training.train_attention``)::

    python -m training.export_attention --work-dir ~/.cache/image-captioning/attention/soft-512 \\
        [--checkpoint best|last|selected|scst] [--ensemble-with OTHER_WORK_DIR ...] \\
        --out models/NAME [--decode auto|greedy|beam:WIDTH:ALPHA] \\
        [--int8 --flickr8k ../shared/data/flickr8k \\
         --encoder-weights ../shared/models/xception_weights_tf_dim_ordering_tf_kernels_notop.h5]

Members: the work folder's decoder (``--checkpoint``: ``best`` dev loss, ``last`` epoch, the
``selected`` epoch of the dev objective, or ``scst``: the chosen epoch of its SCST run in
``member-1/scst-*/``, named by ``--scst-run`` when there are several), then each ``--ensemble-with``
folder's (``--ensemble-checkpoint``; a path ``WORK/member-1/scst-HASH`` names that SCST run's chosen
epoch). They must
share the vocabulary and the decoder sizes (kinds may differ).

Decoding (``--decode auto``, the default): the search chosen on dev. For ``scst``, the search the
SCST run scored its dev epochs with; else the best record of the work folder's
``evaluations.jsonl`` (written by ``train_attention --evaluate-only``) for exactly these members and
checkpoint, by ``--select`` (default ``cider_d+r_at_5``). The chosen search and its dev scores are
recorded in ``config.json`` (``training.dev``). No record: name the search with ``--decode``.

``--int8``: then builds the INT8 encoder for the spatial map with ``training.quantize`` (its flags
after the data flags: calibration, ignored scope, preset, quality gate); the artifact is only
changed when the gate passes (exit 3 otherwise, the float32 artifact stays).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from model.cli import StrictArgumentParser
from model.vocabulary import Vocabulary
from training.attention_work import (
    CHECKPOINTS,
    MemberRef,
    checkpoint_epoch,
    load_member,
    member_ref,
    read_json,
    read_vocabulary,
    scst_folder,
)

log = logging.getLogger(__name__)

DEFAULT_SELECT = "cider_d+r_at_5"


def parse_decode(spec: str, max_length: int) -> Any:
    """``--decode``'s search as DecodeSettings (``DecodeSettings.parse``; SystemExit naming the form)."""
    from model.caption_search import DecodeSettings

    try:
        return DecodeSettings.parse(spec, max_length)
    except ValueError:
        raise SystemExit(f"--decode must be auto, greedy or beam:WIDTH:ALPHA[:no_repeat], not {spec!r}") from None


def chosen_on_dev(args: argparse.Namespace, max_length: int) -> tuple[Any, dict[str, Any]]:
    """(search, the dev record it was chosen by) for ``--decode auto`` (see the module docstring)."""
    from model.caption_search import DecodeSettings
    from training.evaluate import objective

    if args.checkpoint == "scst":
        folder = scst_folder(args.work_dir, args.scst_run)
        state = read_json(os.path.join(folder, "state.json"))
        settings = state["settings"]
        best = next(h for h in state["history"] if h["epoch"] == state["best_epoch"])
        search = DecodeSettings("beam", int(settings["beam_width"]), float(settings["length_alpha"]), max_length)
        return search, {
            "source": folder,
            "epoch": state["best_epoch"],
            "select": settings.get("select"),
            "decode": search.describe(),
            **best["dev"],
        }
    members = [os.path.abspath(d) for d in (args.work_dir, *args.ensemble_with)]
    path = os.path.join(args.work_dir, "evaluations.jsonl")
    records = []
    if os.path.exists(path):
        with open(path) as f:
            records = [json.loads(line) for line in f if line.strip()]
    refs = [member_ref(d, args.ensemble_checkpoint) for d in args.ensemble_with]
    epochs = [
        checkpoint_epoch(args.work_dir, args.checkpoint, args.scst_run),
        *(checkpoint_epoch(r.work_dir, r.checkpoint, r.scst_run) for r in refs),
    ]
    matching = [
        r
        for r in records
        if [os.path.abspath(m) for m in r.get("members", [])] == members
        and r.get("checkpoint") == args.checkpoint
        and r.get("epoch") == epochs[0]
        and r.get("member_epochs", epochs) == epochs
        and r.get("combine", "mean_logprob") == args.ensemble_combine
        and "mmi" not in r.get("decode", "mmi")
    ]  # an artifact's search has no caption prior
    if len(members) > 1 and any("member_epochs" not in r for r in matching):
        log.warning("older dev records do not name the other members' epochs: taken to be of their current weights")
    if not matching:
        raise SystemExit(
            f"{path} has no dev evaluation of members {members} at checkpoint {args.checkpoint} "
            f"(epochs {epochs}): "
            f"run python -m training.train_attention ... --evaluate-only --decode SEARCH first, or "
            f"name the search with --decode"
        )
    best = max(matching, key=lambda r: objective(r, args.select))
    return _settings_of(best["decode"], max_length), {"source": path, "select": args.select, **best}


def scored_on_dev(
    args: argparse.Namespace, members: Sequence[Any], vocab: Vocabulary, search: Any, image_size: tuple[int, int]
) -> dict[str, Any]:
    """The dev record of a search named with ``--decode``: the members scored with it on the dev
    split's cached maps (``training.attention_data.dev_quality``), or only its source when no
    data is given (``--flickr8k`` or ``--table``/``--dev-table``)."""
    if not (args.flickr8k or args.dev_table or args.table):
        return {"source": "--decode (not scored: no data flags)", "decode": search.describe()}
    from model.attention_decoder import make_attention_step_model
    from training.attention_data import dev_quality
    from training.evaluate import generate_captions
    from training.splits import load_split_features

    items, maps, _ = load_split_features(args, "dev", args.encoder, args.encoder_weights, image_size, spatial=True)
    step = make_attention_step_model(members, "openvino", args.ensemble_combine, cache="none")
    captions = generate_captions(step, vocab, maps, search)
    epoch = checkpoint_epoch(args.work_dir, args.checkpoint, args.scst_run)
    return {
        "source": "dev, scored at export (--decode)",
        "epoch": epoch,
        "decode": search.describe(),
        **dev_quality(captions, items),
    }


def _settings_of(described: str, max_length: int) -> Any:
    """DecodeSettings from its ``describe()`` text (``greedy(...)`` or ``beam(k=W,alpha=A,...)``)."""
    inside = described[described.index("(") + 1 : -1].split(",")
    suffix = ":no_repeat" if "no_repeat" in inside else ""
    if described.startswith("greedy"):
        return parse_decode("greedy" + suffix, max_length)
    fields = dict(part.split("=") for part in inside if "=" in part)
    return parse_decode(f"beam:{fields['k']}:{fields['alpha']}{suffix}", max_length)


def build_parser() -> argparse.ArgumentParser:
    from training.compare_precision import add_gate_arguments
    from training.splits import add_data_arguments

    p = StrictArgumentParser(
        prog="python -m training.export_attention",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--work-dir", required=True, help="training.train_attention work folder (member 1)")
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="best")
    p.add_argument(
        "--scst-run",
        default=None,
        metavar="scst-HASH",
        help="with --checkpoint scst: which SCST run of the work folder (needed when it holds several)",
    )
    p.add_argument(
        "--ensemble-with",
        action="append",
        default=[],
        metavar="WORK_DIR",
        help="another work folder whose decoder joins the ensemble (repeatable); WORK_DIR/member-1/scst-HASH: "
        "that SCST run's chosen epoch",
    )
    p.add_argument("--ensemble-checkpoint", choices=CHECKPOINTS, default="best")
    p.add_argument("--ensemble-combine", choices=["mean_logprob", "mean_prob"], default="mean_logprob")
    p.add_argument("--out", required=True, help="artifact folder or URI to write (e.g. models/NAME)")
    p.add_argument(
        "--decode", default="auto", help="auto (chosen on dev), greedy or beam:WIDTH:ALPHA, optionally + :no_repeat"
    )
    p.add_argument("--select", default=DEFAULT_SELECT, help="dev objective of --decode auto")
    p.add_argument("--encoder", default="xception")
    p.add_argument("--image-size", type=int, default=None, help="square encoder input size (default: backbone's)")
    p.add_argument(
        "--record-encoder-weights",
        default="imagenet",
        help="the encoder weights source written in the artifact (users override it with "
        "--encoder_weights / $CAPTION_ENCODER_WEIGHTS)",
    )
    p.add_argument("--int8", action="store_true", help="then build and gate the INT8 encoder (training.quantize)")
    from training.quantize import add_quantize_arguments

    add_quantize_arguments(p)
    add_gate_arguments(p)
    add_data_arguments(p, with_dev=True)
    return p


def export(args: argparse.Namespace) -> dict[str, Any]:
    """Write the float32 artifact; returns what was written."""
    from model.artifact_config import EncoderConfig
    from model.artifact_writer import save_artifact
    from model.encoder import get_backbone

    vocab, max_length = read_vocabulary(args.work_dir)
    refs = [member_ref(d, args.ensemble_checkpoint) for d in args.ensemble_with]
    members = [
        load_member(args.work_dir, args.checkpoint, vocab, args.scst_run),
        *(load_member(r.work_dir, r.checkpoint, vocab, r.scst_run) for r in refs),
    ]
    size = args.image_size or get_backbone(args.encoder).default_size
    if args.decode == "auto":
        search, dev = chosen_on_dev(args, max_length)
    else:
        search = parse_decode(args.decode, max_length)
        dev = scored_on_dev(args, members, vocab, search, (size, size))
    training = {
        "members": [
            {"work_dir": os.path.abspath(r.work_dir), "checkpoint": r.checkpoint, "scst_run": r.scst_run}
            | {"kind": m.config.kind}
            for r, m in zip([MemberRef(args.work_dir, args.checkpoint, args.scst_run), *refs], members)
        ],
        "dev": dev,
        "command": "python -m training.export_attention " + " ".join(sys.argv[1:]),
    }
    model_id = save_artifact(
        args.out,
        decoder=members,
        vocab=vocab,
        encoder=EncoderConfig(args.encoder, (size, size), args.record_encoder_weights),
        decoding=search,
        training=training,
        combine=args.ensemble_combine,
    )
    return {
        "written": args.out,
        "model_id": model_id,
        "decode": search.describe(),
        "members": len(members),
        "kinds": [m.config.kind for m in members],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    result = export(args)
    print(json.dumps(result))
    if not args.int8:
        return 0
    from training.quantize import quantize_artifact

    args.model, args.output, args.from_artifact = args.out, None, None
    return quantize_artifact(args)


if __name__ == "__main__":
    sys.exit(main())
