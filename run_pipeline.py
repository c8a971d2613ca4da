"""Caption images to Parquet with Apache Beam.

    python run_pipeline.py --input 'images/*.jpg' --output out/ [--references tokens.txt] \\
        [--encoder_weights PATH_OR_URI] [--runner DataflowRunner ...]

Every standard Beam flag works too. See README "Command line".
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

import model  # noqa: F401 - quiets TensorFlow's start-up logging before it is imported


def print_help() -> None:
    """Our flags (Beam's own PipelineOptions parser does not print them)."""
    from beam_pipeline.options import CaptionOptions

    parser = argparse.ArgumentParser(
        prog="run_pipeline.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every standard Beam flag is accepted too: --runner, --direct_running_mode, "
               "--direct_num_workers, --setup_file, Dataflow's --project/--region/--temp_location ...")
    CaptionOptions._add_argparse_args(parser)
    parser.print_help()


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipeline.options import CaptionOptions
    from beam_pipeline.pipeline import run
    from beam_pipeline.preflight import PreflightError
    from model.artifact import ArtifactError
    from model.encoder import EncoderError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or any(a in ("-h", "--help") for a in argv):
        print_help()
        return 0 if argv else 2
    try:
        summary = run(argv)
    except (PreflightError, ArtifactError, EncoderError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    options = PipelineOptions(argv).view_as(CaptionOptions)
    if options.report:  # the report reads the committed output; the pipeline does not depend on it
        from caption_report import write_report

        summary["report"] = write_report(summary["output"], sample=options.report_sample)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
