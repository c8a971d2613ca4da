"""Caption images to Parquet with Apache Beam.

    python run_pipeline.py --input 'images/*.jpg' --output out/ [--references tokens.txt] \\
        [--encoder_weights PATH_OR_URI] [--runner DataflowRunner ...]

Every standard Beam flag works too. See README "Command line".
"""
from __future__ import annotations

import json
import logging
import sys
from typing import Sequence

import model  # noqa: F401 - quiets TensorFlow's start-up logging before it is imported


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    from beam_pipeline.pipeline import run
    from beam_pipeline.preflight import PreflightError
    from model.artifact import ArtifactError
    from model.encoder import EncoderError

    try:
        summary = run(list(sys.argv[1:] if argv is None else argv))
    except (PreflightError, ArtifactError, EncoderError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
