"""Caption images to Parquet with Apache Beam.

    python run_pipeline.py --input 'images/*.jpg' --output out/ [--references tokens.txt] \\
        [--encoder_weights PATH_OR_URI] [--runner DataflowRunner ...]

Every standard Beam flag works too. See README "Command line".
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import model  # noqa: F401 - quiets TensorFlow's start-up logging before it is imported


def print_help() -> None:
    """Our flags (Beam's own PipelineOptions parser does not print them)."""
    from beam_pipeline.options import CaptionOptions

    parser = argparse.ArgumentParser(
        prog="run_pipeline.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every standard Beam flag is accepted too: --runner, --direct_running_mode, "
        "--direct_num_workers, --setup_file, Dataflow's --project/--region/--temp_location ...",
    )
    CaptionOptions._add_argparse_args(parser)
    parser.print_help()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the pipeline; quiet unless ``--verbose`` (see ``beam_pipeline.console``). Exit status: 0
    done, 2 refused (unknown flag, bad input or model, before anything is read), 1 failed."""
    from beam_pipeline.console import Terminal

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or any(a in ("-h", "--help") for a in argv):
        print_help()
        return 0 if argv else 2
    with Terminal(verbose="--verbose" in argv) as terminal:
        from apache_beam.options.pipeline_options import PipelineOptions

        from beam_pipeline.console import errors_by_type, human_summary
        from beam_pipeline.options import CaptionOptions, UsageError
        from beam_pipeline.pipeline import run
        from beam_pipeline.preflight import PreflightError
        from model.artifact import ArtifactError
        from model.encoder import EncoderError

        try:
            summary = run(argv)
        except UsageError as exc:
            terminal.say(f"run_pipeline.py: error: {exc}; see run_pipeline.py --help")
            return 2
        except (PreflightError, ArtifactError, EncoderError) as exc:
            terminal.say(f"refused: {exc}")
            return 2
        except Exception as exc:  # noqa: BLE001 - shown in full, loudly
            terminal.fail(exc)
            return 1
        if summary.get("dry_run"):
            terminal.say(
                f"Dry run: the {summary['runner']} job was built and not submitted; nothing was read or written"
            )
            return 0
        options = PipelineOptions(argv).view_as(CaptionOptions)
        if options.report:  # the report reads the committed output; the pipeline does not depend on it
            from caption_report import write_report

            summary["report"] = write_report(summary["output"], sample=options.report_sample)
        if options.json:
            print(json.dumps(summary, indent=2))
        else:
            print("\n".join(human_summary(summary, errors_by_type(summary["output"], summary["run_id"]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
