"""``python -m caption_index search|export ...`` (also installed as ``caption-index``).

    search URI "QUERY" [--k 10] [--json] [--html OUT.html]
    search URI --queries FILE [--k 10] [--html OUT.html]   # one JSON line per query
    search URI --like IMAGE [--model DIR] [--encoder_weights W] [--precision P] [--k 10] [--json]
    export URI --format bulk-ndjson OUT_DIR [--max_mb 10] [--index_name captions]

Exit status: 0 done, 2 refused (bad arguments, no index, an image or model that does not fit).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from beam_pipeline.preflight import PreflightError


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (unknown flags are errors: exit 2 with argparse's message)."""
    parser = argparse.ArgumentParser(
        prog="python -m caption_index",
        description="Search a caption index made by run_pipeline.py --search_index, "
        "or export it for Elasticsearch / OpenSearch.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("search", help="BM25 over the captions, or look-alikes of an image")
    s.add_argument("index", metavar="URI", help="the index (the --search_index URI of the runs)")
    s.add_argument("query", nargs="?", default=None, help="words to look for in the captions")
    s.add_argument(
        "--queries",
        default=None,
        metavar="FILE",
        help="a file of queries, one per line; prints one JSON line per query",
    )
    s.add_argument(
        "--like",
        default=None,
        metavar="IMAGE",
        help="an image (path or URI): byte-identical copies first, then the nearest by embedding",
    )
    s.add_argument("--k", type=int, default=10, help="hits per query (default 10)")
    s.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    s.add_argument("--html", default=None, metavar="OUT.html", help="also write the hits as a page with thumbnails")
    s.add_argument("--model", default=None, help="--like: the index's model artifact (default: shipped model)")
    s.add_argument(
        "--encoder_weights",
        default=os.environ.get("CAPTION_ENCODER_WEIGHTS"),
        help="--like: encoder weights path/URI (as run_pipeline.py)",
    )
    s.add_argument(
        "--precision",
        choices=["float32", "bfloat16", "int8"],
        default="float32",
        help="--like: encoder precision (use the runs' for the closest distances)",
    )
    s.add_argument(
        "--encoder_runtime",
        choices=["auto", "openvino", "tensorflow"],
        default="auto",
        help="--like: who runs the encoder (as run_pipeline.py)",
    )
    e = sub.add_parser("export", help="write Elasticsearch / OpenSearch _bulk files")
    e.add_argument("index", metavar="URI")
    e.add_argument("out_dir", metavar="OUT_DIR", help="folder for the bulk-NNNNN.ndjson files")
    e.add_argument("--format", choices=["bulk-ndjson"], required=True)
    e.add_argument("--max_mb", type=float, default=10.0, help="largest file in MB (default 10)")
    e.add_argument("--index_name", default="captions", help="the _index of the action lines (default captions)")
    return parser


def _search(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from caption_index import query as q

    modes = [m for m in (args.query is not None, args.queries, args.like) if m]
    if len(modes) != 1:
        parser.error("search: give exactly one of QUERY, --queries FILE or --like IMAGE")
    if args.k < 1:
        parser.error("--k must be >= 1")
    if args.like:
        results = [(args.like, _like(args))]
    else:
        table = q.open_index(args.index)
        queries = q.read_queries(args.queries) if args.queries else [args.query]
        results = [(text, q.text_search(table, text, args.k)) for text in queries]
    for text, hits in results:
        if args.json or args.queries:
            print(json.dumps(q.result_line(text, hits)))
        else:
            print(f"# {text}: {len(hits)} hits")
            for rank, hit in enumerate(hits, 1):
                print(f"{rank:3d}  {hit.score:8.3f}  {hit.image_uri}  {hit.caption}")
    if args.html:
        from caption_index.html import render_results
        from model.storage import write_bytes

        title = f"Look-alikes of {args.like}" if args.like else f"Search of {args.index}"
        write_bytes(args.html, render_results(results, title).encode("utf-8"))
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def _like(args: argparse.Namespace) -> list:
    """Look-alikes of --like. The model is loaded (and the image embedded) before LanceDB is opened:
    OpenVINO forks a process when it converts a graph, and lancedb's runtime is not fork-safe."""
    from beam_pipeline.options import default_model_uri
    from caption_index import query as q
    from model.image_loading import DEFAULT_MAX_BYTES
    from model.storage import read_prefix

    try:
        data = read_prefix(args.like, DEFAULT_MAX_BYTES)
    except (OSError, ValueError) as exc:
        raise PreflightError(f"--like {args.like}: cannot read it: {exc}") from exc
    model_uri = args.model or default_model_uri()
    vector, model_id = q.embed_image(
        data, model_uri, encoder_weights=args.encoder_weights, precision=args.precision, runtime=args.encoder_runtime
    )
    table = q.open_index(args.index)
    if not q.has_embeddings(table):
        print(
            "note: the index has no embeddings (built without --emit_embeddings): byte-identical copies only",
            file=sys.stderr,
        )
        vector = None
    indexed_by = q.model_id_of(table)
    if vector is not None and indexed_by not in (None, model_id):
        raise PreflightError(
            f"--like: the index was built by model {indexed_by}, --model {model_uri} is {model_id}; "
            "embeddings of different models cannot be compared"
        )
    return q.like_search(table, data, vector, args.k)


def _export(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from caption_index.bulk import export_bulk
    from caption_index.query import open_index

    if args.max_mb <= 0:
        parser.error("--max_mb must be > 0")
    files = export_bulk(
        open_index(args.index), args.out_dir, index_name=args.index_name, max_bytes=int(args.max_mb * 1_000_000)
    )
    for path in files:
        print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    from model.artifact import ArtifactError
    from model.image_loading import ImageDecodeError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return (_search if args.command == "search" else _export)(args, parser)
    except (PreflightError, ArtifactError, ImageDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
