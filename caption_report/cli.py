"""``python -m caption_report OUT_DIR [--sample N] [--seed S] [--output PATH]`` (also installed
as ``caption-report``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from caption_report.data import DEFAULT_MAX_ERRORS, DEFAULT_SAMPLE
from caption_report.thumbnails import DEFAULT_THUMBNAIL_PX
from caption_report.writer import write_report
from model.cli import StrictArgumentParser


def build_parser() -> argparse.ArgumentParser:
    """The command line's argument parser."""
    parser = StrictArgumentParser(
        prog="python -m caption_report",
        description="Write a self-contained HTML caption gallery (summary, sampled captions with "
        "thumbnails, error rows) for a pipeline output directory.",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="pipeline output directory (local path or fsspec URL)")
    parser.add_argument(
        "--sample",
        type=int,
        default=DEFAULT_SAMPLE,
        help=f"caption rows to show, sampled deterministically (default {DEFAULT_SAMPLE})",
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument(
        "--thumbnail-px",
        type=int,
        default=DEFAULT_THUMBNAIL_PX,
        help=f"thumbnail size in pixels (default {DEFAULT_THUMBNAIL_PX})",
    )
    parser.add_argument(
        "--max-errors",
        type=int,
        default=DEFAULT_MAX_ERRORS,
        help=f"error rows to list at most (default {DEFAULT_MAX_ERRORS})",
    )
    parser.add_argument("--output", default=None, help="where to write the page (default OUT_DIR/report.html)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("sample", "max_errors"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.thumbnail_px <= 0:
        parser.error("--thumbnail-px must be positive")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        path = write_report(
            args.out_dir,
            sample=args.sample,
            seed=args.seed,
            thumbnail_px=args.thumbnail_px,
            output=args.output,
            max_errors=args.max_errors,
        )
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0
