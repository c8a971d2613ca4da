"""Command-line options of the captioning pipeline (a PipelineOptions subclass, so every
standard Beam flag such as --runner, --direct_num_workers or Dataflow's flags also works)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline.object_reads import ReadSettings
from model.cli import unknown_arguments_message
from model.image_loading import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS


class UsageError(ValueError):
    """The command line names a flag no options class knows (exit 2 before anything is read)."""


def check_flags(argv: Sequence[str]) -> None:
    """Refuse (``UsageError``) arguments that no registered ``PipelineOptions`` class knows, with a
    did-you-mean: Beam itself only warns and runs on with the default. The parser is built as
    Beam's own (every direct ``PipelineOptions`` subclass, abbreviations refused), so every flag
    Beam accepts (``--runner``, Dataflow's, the portable runner's, Dask's ...) is accepted here."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    if any(a.startswith("--dask") or "DaskRunner" in a for a in argv):  # Dask's flags (slow to import)
        with contextlib.suppress(ImportError):
            import apache_beam.runners.dask.dask_runner  # noqa: F401 - registers Dask's options
    parser = _BeamArgumentParser(allow_abbrev=False)
    classes = {str(cls): cls for cls in PipelineOptions.__subclasses__()}
    for cls in classes.values():
        cls._add_argparse_args(parser)  # noqa: SLF001 - as PipelineOptions.get_all_options does
    _, unknown = parser.parse_known_args(list(argv))
    if unknown:
        known = parser._option_string_actions  # noqa: SLF001 - argparse keeps its flags only there
        raise UsageError(unknown_arguments_message(unknown, known))


def default_model_uri() -> str:
    """The shipped default model (``models/flickr8k-xception``, installed with the package)."""
    from models import DEFAULT_MODEL_DIR

    return str(DEFAULT_MODEL_DIR)


class CaptionOptions(PipelineOptions):
    """Flags of ``run_pipeline.py``; every one is listed in docs/USAGE.md (``python -m tools.usage_doc``)."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:  # noqa: ANN001 - Beam's signature
        g = parser.add_argument_group("captioning")
        g.add_argument(
            "--input",
            action="append",
            default=None,
            help="glob of images on any Beam filesystem (local, gs://, s3://); repeatable",
        )
        g.add_argument(
            "--input_manifest", default=None, help="table (Parquet/CSV/TSV/JSONL) listing image URIs, one per row"
        )
        g.add_argument("--manifest_uri_column", default="image_uri", help="column of image URIs in --input_manifest")
        g.add_argument("--manifest_id_column", default=None, help="image id column (default: file name)")
        g.add_argument(
            "--manifest_references_column",
            default=None,
            help="column of reference captions (a string or a list of strings)",
        )
        g.add_argument("--output", required=False, default=None, help="output directory (local or URI)")
        g.add_argument("--model", default=None, help="model artifact directory or URI (default: shipped model)")
        g.add_argument(
            "--encoder_weights",
            default=os.environ.get("CAPTION_ENCODER_WEIGHTS"),
            help="encoder weights: 'imagenet' (Keras download), or a path/URI to an HDF5 file "
            "(default: $CAPTION_ENCODER_WEIGHTS, else what the model config names)",
        )
        g.add_argument("--expected_model_id", default=None, help="refuse to run unless the model has this id")
        g.add_argument(
            "--references",
            default=None,
            help="reference captions: a Flickr8k token file, or a table of image id + caption",
        )
        g.add_argument(
            "--references_id_column",
            default="image_id",
            help="image id column of a --references table (joined on the file name or manifest id)",
        )
        g.add_argument("--references_caption_column", default="caption", help="caption column of a --references table")
        g.add_argument("--decode", choices=["greedy", "beam"], default=None, help="default: the model config's")
        g.add_argument("--beam_width", type=int, default=None, help="beam search width (default: the model config's)")
        g.add_argument(
            "--length_alpha",
            type=float,
            default=None,
            help="beam search length penalty exponent, 0 = none (default: the model config's)",
        )
        g.add_argument(
            "--batch_size",
            type=int,
            default=32,
            help="images per inference batch: the beam search runs the whole batch at once (cheaper "
            "per image on larger batches); on CPUs the OpenVINO encoder runs it as requests of "
            "2 images, so the batch does not grow its memory",
        )
        g.add_argument("--min_batch_size", type=int, default=None, help="smallest batch (default: batch_size)")
        g.add_argument(
            "--precision",
            choices=["float32", "bfloat16", "int8"],
            default="float32",
            help="encoder precision; bfloat16 (the first blocks stay float32) needs AMX/AVX-512 "
            "BF16 CPUs or a GPU to pay off; int8 runs the artifact's INT8 encoder (NNCF "
            "post-training quantisation, built by training.quantize) on OpenVINO CPUs",
        )
        g.add_argument(
            "--encoder_runtime",
            choices=["auto", "openvino", "tensorflow"],
            default="auto",
            help="who runs the encoder: auto = TensorFlow when it sees a GPU, else OpenVINO",
        )
        g.add_argument(
            "--model_cache_dir",
            default=None,
            help="folder for converted OpenVINO graphs: a worker's first start converts them, later "
            "starts read them back (default: openvino/ under $CAPTION_CACHE_DIR or the temp "
            "dir's image-captioning-cache; 'none' turns it off)",
        )
        g.add_argument(
            "--share_model_across_processes",
            action="store_true",
            help="one model copy per machine, shared by all its SDK worker processes "
            "(Beam's MultiProcessShared, as RunInference's share_model_across_processes): for "
            "GPU workers that need many processes to decode JPEGs but have room for one model",
        )
        g.add_argument(
            "--resume",
            action="store_true",
            help="skip images already in OUTPUT/captions or OUTPUT/errors; add the rest",
        )
        g.add_argument(
            "--commit_every",
            type=int,
            default=1000,
            help="commit caption and error rows as a Parquet file at least every N rows per worker",
        )
        g.add_argument(
            "--commit_seconds",
            type=float,
            default=300.0,
            help="... and at least every T seconds (checked as rows arrive; 0 = only by count)",
        )
        g.add_argument(
            "--commit_attempts",
            type=int,
            default=5,
            help="tries per commit (exponential backoff from 0.5 s) before the job fails",
        )
        g.add_argument("--emit_embeddings", action="store_true", help="add the encoder feature vector to each row")
        g.add_argument(
            "--max_image_bytes",
            type=int,
            default=DEFAULT_MAX_BYTES,
            help="larger inputs become TooLarge error rows (checked from the listing and while reading)",
        )
        g.add_argument(
            "--max_image_pixels",
            type=int,
            default=DEFAULT_MAX_PIXELS,
            help="images whose header declares more pixels become DecompressionBomb error rows",
        )
        r = parser.add_argument_group("reading images (see docs/RUNNING.md 'Reading from object stores')")
        r.add_argument(
            "--read_concurrency",
            type=int,
            default=16,
            help="images read (and decoded) at once per DoFn instance; hides object-store latency",
        )
        r.add_argument(
            "--read_bytes_in_flight",
            type=int,
            default=256 << 20,
            help="bound on the bytes of images being read at once per DoFn instance (a size "
            "unknown before reading counts as --max_image_bytes)",
        )
        r.add_argument(
            "--read_retries",
            type=int,
            default=4,
            help="retries of a throttled / timed-out / reset read (503 SlowDown, 429, 5xx), "
            "with exponential backoff and jitter; 403 and 404 are never retried",
        )
        r.add_argument(
            "--read_backoff_seconds",
            type=float,
            default=0.2,
            help="backoff before the first retry (doubles each retry, full jitter, at most 10 s)",
        )
        r.add_argument(
            "--read_timeout_seconds",
            type=float,
            default=60.0,
            help="connect and read timeout of one object-store request",
        )
        g.add_argument(
            "--progress_seconds",
            type=float,
            default=10.0,
            help="log a progress line with images/s this often (per worker process)",
        )
        g.add_argument(
            "--iceberg_table",
            default=None,
            help="also commit the run's caption rows to this Apache Iceberg table (NAMESPACE.TABLE; "
            "error rows go to NAMESPACE.TABLE_errors); needs the 'iceberg' extra",
        )
        g.add_argument(
            "--iceberg_catalog",
            default="default",
            help="pyiceberg catalog name; its settings come from ~/.pyiceberg.yaml or "
            "PYICEBERG_CATALOG__NAME__* environment variables",
        )
        g.add_argument(
            "--search_index",
            default=None,
            help="also keep the captions in this LanceDB search index (a folder, s3:// or gs:// URI): "
            "BM25 on caption, vectors with --emit_embeddings; read by python -m caption_index",
        )
        g.add_argument(
            "--watchlist",
            default=None,
            help="CSV of category,phrase lines: captions containing a phrase get that category "
            "in a flags column and go to OUTPUT/review (docs/SEARCH.md 'Moderation')",
        )
        g.add_argument(
            "--review_below",
            type=float,
            default=None,
            help="captions scoring below SCORE (mean token log-probability) also go to OUTPUT/review",
        )
        g.add_argument(
            "--skip_known_content",
            action="store_true",
            help="images whose bytes (SHA-256) already have a caption of this model in OUTPUT or the "
            "Iceberg table, or appear twice in this run, are captioned once; copies get "
            "caption_source=same_content",
        )
        g.add_argument(
            "--inventory",
            action="store_true",
            help="no captioning, no model: match, dedupe, read, SHA-256 and header-check every input, "
            "write OUTPUT/inventory/*.parquet and OUTPUT/inventory_summary.json (counts, "
            "estimated captioning core-hours per precision)",
        )
        g.add_argument("--report", action="store_true", help="write OUTPUT/report.html at the end")
        g.add_argument(
            "--report_sample",
            type=int,
            default=500,
            help="caption rows the --report page shows, sampled deterministically",
        )
        c = parser.add_argument_group("terminal output (run_pipeline.py)")
        c.add_argument(
            "--verbose",
            action="store_true",
            help="show the libraries' log lines and warnings (TensorFlow, Beam, ...) and ours at INFO",
        )
        c.add_argument(
            "--json", action="store_true", help="print summary.json's content at the end instead of the human summary"
        )


def read_settings(options: CaptionOptions) -> ReadSettings:
    """The ``--read_*`` flags as the readers' settings (refuses nonsense values)."""
    if (
        options.read_concurrency < 1
        or options.read_bytes_in_flight < 1
        or options.read_retries < 0
        or options.read_backoff_seconds < 0
        or options.read_timeout_seconds <= 0
    ):
        raise ValueError(
            "--read_concurrency and --read_bytes_in_flight must be >= 1, --read_retries and "
            "--read_backoff_seconds >= 0, --read_timeout_seconds > 0"
        )
    return ReadSettings(
        concurrency=options.read_concurrency,
        bytes_in_flight=options.read_bytes_in_flight,
        tries=options.read_retries + 1,
        backoff_seconds=options.read_backoff_seconds,
        timeout_seconds=options.read_timeout_seconds,
    )
