"""Findability and speed of the product's search (``--search_index`` + ``caption_index``) next to a
plain BM25 over the same captions (``model.retrieval_metrics``).

Reproduce::

    python bench/bench_search.py --encoder_weights ../shared/models/xception_weights_tf_dim_ordering_tf_kernels_notop.h5
    python bench/bench_search.py --precision int8 --work /tmp/bench-search --latency_rows 1000 100000

1. Captions the Flickr8k dev split (1,000 photos) with the shipped model into WORK/out and the
   LanceDB index WORK/index (``run_pipeline.py --input_manifest ... --search_index ...
   --emit_embeddings``; skipped when the index already holds every photo, ``--resume`` adds the
   missing ones).
2. Queries: the reference captions #2-#5 of each photo (token ids ``#1``..``#4`` of
   Flickr8k.token.txt; 4,000 queries), each looking for its own photo.
3. Findability: the product (LanceDB's BM25 on the index, ranks as returned, top ``--depth``;
   and, as a check on tie order, each rank moved to the middle of its group of equal LanceDB
   scores, passed as is to ``findability_of_ranks``) and the plain BM25 (k1 1.2, b 0.75, ties
   broken in expectation) over the same captions: R@1/5/10, MRR, median rank. A query whose
   photo is not in LanceDB's top ``--depth`` gets the
   rank midway between ``depth`` + 1 and the number of photos (it counts in no R@k).
4. Speed: queries/s in batch mode (one process, one query after another, top 10), for the
   product on the dev index and on synthetic indexes of ``--latency_rows`` rows (the Flickr8k
   reference captions repeated under new URIs), and for the plain BM25 (NumPy) on the dev
   captions. Also ``--like`` look-alike queries/s (exact cosine search over the 2048-d
   embeddings) on the dev index, and on synthetic indexes of ``--like_rows`` random 2048-d
   vectors (IVF-PQ). Text queries/s are medians of ``--repeats`` passes; --like rates one pass.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pyarrow as pa

from bench.common import FLICKR8K, REPO, machine, table

QUERY_TOKENS = ("#1", "#2", "#3", "#4")  # references #2-#5 (Flickr8k numbers them #0..#4)


def dev_photos() -> list[Path]:
    names = (FLICKR8K / "Flickr_8k.devImages.txt").read_text().split()
    return [FLICKR8K / "images" / n for n in names if (FLICKR8K / "images" / n).exists()]


def caption_dev(work: Path, photos: list[Path], precision: str, encoder_weights: str | None) -> None:
    """Caption the photos into WORK/out and WORK/index (resuming what is there)."""
    from beam_pipeline.search_index import open_table

    index = work / "index"
    if index.exists() and (t := open_table(str(index))) is not None and t.count_rows() >= len(photos):
        print(f"index {index} holds {t.count_rows()} rows: not captioning again", file=sys.stderr)
        return
    manifest = work / "manifest.csv"
    manifest.write_text("image_uri\n" + "\n".join(str(p) for p in photos) + "\n")
    cmd = [
        sys.executable,
        str(REPO / "run_pipeline.py"),
        "--input_manifest",
        str(manifest),
        "--output",
        str(work / "out"),
        "--search_index",
        str(index),
        "--emit_embeddings",
        "--precision",
        precision,
        "--progress_seconds",
        "30",
    ]
    if encoder_weights:
        cmd += ["--encoder_weights", encoder_weights]
    if (work / "out").exists():
        cmd.append("--resume")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def queries_of(photos: list[Path]) -> list[tuple[str, str]]:
    """(photo file name, query text) for references #2-#5 of each photo."""
    wanted = {p.name for p in photos}
    out = []
    for line in (FLICKR8K / "Flickr8k.token.txt").read_text().splitlines():
        key, _, text = line.partition("\t")
        name, _, number = key.partition("#")
        if name in wanted and "#" + number in QUERY_TOKENS and text.strip():
            out.append((name, text.strip()))
    return out


def lance_ranks(
    tbl: Any, queries: list[tuple[int, str]], uris: list[str], depth: int
) -> tuple[list[float], list[float]]:
    """Per query: the rank as returned, and the expected rank within its tie group of equal
    LanceDB scores (g above, t tied: g + (t + 1) / 2), both from the top ``depth`` hits."""
    from caption_index.query import text_search

    returned, tied = [], []
    for target, text in queries:
        hits = text_search(tbl, text, depth)
        found = [i for i, h in enumerate(hits) if h.image_uri == uris[target]]
        if found:
            score = hits[found[0]].score
            above = sum(h.score > score for h in hits)
            ties = sum(h.score == score for h in hits)
            returned.append(float(found[0] + 1))
            tied.append(above + (ties + 1) / 2.0)
        else:
            returned.append((depth + 1 + len(uris)) / 2.0)
            tied.append(returned[-1])
    return returned, tied


def queries_per_second(fn: Callable[[str], Any], texts: list[str], repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for text in texts:
            fn(text)
        rates.append(len(texts) / (time.perf_counter() - start))
    return statistics.median(rates)


def synthetic_index(path: Path, rows: int) -> object:
    """An index of ``rows`` rows: the Flickr8k reference captions repeated under new URIs."""
    import lancedb

    from beam_pipeline.search_index import ensure_indexes, index_schema

    captions = [line.partition("\t")[2].strip() for line in (FLICKR8K / "Flickr8k.token.txt").read_text().splitlines()]
    captions = [c for c in captions if c]
    now = dt.datetime.now(dt.UTC)
    batch = {
        "image_uri": [f"s3://synthetic/{i:07d}.jpg" for i in range(rows)],
        "image_id": [f"{i:07d}.jpg" for i in range(rows)],
        "caption": [captions[i % len(captions)] for i in range(rows)],
        "score": [-1.0] * rows,
        "model_id": ["synthetic"] * rows,
        "image_sha256": [None] * rows,
        "processed_at": [now] * rows,
        "width": [500] * rows,
        "height": [375] * rows,
        "flags": [None] * rows,
    }
    tbl = lancedb.connect(str(path)).create_table(
        "captions", pa.Table.from_pydict(batch, schema=index_schema(None)), mode="overwrite"
    )
    ensure_indexes(tbl)
    return tbl


def synthetic_vectors(path: Path, rows: int, dim: int) -> object:
    """An index of ``rows`` rows with random ``dim``-d embeddings (IVF-PQ from VECTOR_INDEX_MIN_ROWS)."""
    import lancedb

    from beam_pipeline.search_index import ensure_indexes, index_schema

    rng = np.random.default_rng(0)
    db = lancedb.connect(str(path))
    schema = index_schema(dim)
    now = dt.datetime.now(dt.UTC)
    tbl = None
    for start in range(0, rows, 10_000):
        n = min(10_000, rows - start)
        vectors = rng.random((n, dim), dtype=np.float32)
        batch = pa.Table.from_pydict(
            {
                "image_uri": [f"s3://synthetic/{i:07d}.jpg" for i in range(start, start + n)],
                "image_id": [f"{i:07d}.jpg" for i in range(start, start + n)],
                "caption": ["a photo"] * n,
                "score": [-1.0] * n,
                "model_id": ["synthetic"] * n,
                "image_sha256": [None] * n,
                "processed_at": [now] * n,
                "width": [500] * n,
                "height": [375] * n,
                "flags": [None] * n,
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
            },
            schema=schema,
        )
        if tbl is None:
            tbl = db.create_table("captions", batch, mode="overwrite")
        else:
            tbl.add(batch)
    started = time.perf_counter()
    ensure_indexes(tbl)
    print(f"indexes of {rows} x {dim}-d rows built in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return tbl, rng.random((200, dim), dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-search"))
    parser.add_argument("--precision", default="int8", choices=["float32", "int8"])
    parser.add_argument("--encoder_weights", default=None, help="needed for --precision float32")
    parser.add_argument("--depth", type=int, default=100, help="LanceDB hits read per query for the ranks")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency_rows", type=int, nargs="*", default=[1000, 100000])
    parser.add_argument("--like_queries", type=int, default=200)
    parser.add_argument(
        "--like_rows",
        type=int,
        nargs="*",
        default=[100000],
        help="synthetic indexes of random 2048-d vectors for --like latency (IVF-PQ from 10,000 rows)",
    )
    args = parser.parse_args()

    from beam_pipeline.search_index import open_table
    from caption_index.query import like_search, text_search
    from model.retrieval_metrics import BM25Index, findability, findability_of_ranks

    args.work.mkdir(parents=True, exist_ok=True)
    photos = dev_photos()
    caption_dev(args.work, photos, args.precision, args.encoder_weights)
    tbl = open_table(str(args.work / "index"))
    rows = tbl.search().select(["image_uri", "caption"]).limit(None).to_arrow().to_pylist()
    uris = [r["image_uri"] for r in rows]
    position = {Path(u).name: i for i, u in enumerate(uris)}
    captions = [r["caption"] for r in rows]
    queries = [(position[name], text) for name, text in queries_of(photos) if name in position]
    texts = [t for _, t in queries]

    plain = findability(captions, queries)
    returned, tied = lance_ranks(tbl, queries, uris, args.depth)
    product, product_tied = findability_of_ranks(returned), findability_of_ranks(tied)
    bm25 = BM25Index(captions)
    plain_qps = queries_per_second(lambda t: np.argpartition(-bm25.scores(t), 10)[:10], texts, args.repeats)
    product_qps = queries_per_second(lambda t: text_search(tbl, t, 10), texts, args.repeats)
    print(
        f"\nmachine: {machine()}\n{len(rows)} photos captioned ({args.precision}), {len(queries)} queries "
        f"(references #2-#5)\n"
    )
    print(
        table(
            ["search", "R@1", "R@5", "R@10", "MRR", "median rank", "queries/s"],
            [
                [
                    "product: LanceDB BM25 (--search_index)",
                    product.r_at_1,
                    product.r_at_5,
                    product.r_at_10,
                    product.mrr,
                    product.median_rank,
                    round(product_qps),
                ],
                [
                    "product, ranks at the middle of LanceDB's score ties",
                    product_tied.r_at_1,
                    product_tied.r_at_5,
                    product_tied.r_at_10,
                    product_tied.mrr,
                    product_tied.median_rank,
                    "",
                ],
                [
                    "plain BM25 (model.retrieval_metrics)",
                    plain.r_at_1,
                    plain.r_at_5,
                    plain.r_at_10,
                    plain.mrr,
                    plain.median_rank,
                    round(plain_qps),
                ],
            ],
        )
    )

    latency = []
    for n in args.latency_rows:
        synthetic = synthetic_index(args.work / f"synthetic-{n}", n)
        qps = queries_per_second(lambda t, index=synthetic: text_search(index, t, 10), texts[:1000], args.repeats)
        latency.append([n, "text (BM25), top 10", round(qps), round(1000 / qps, 2)])
    some = [p.read_bytes() for p in photos[: args.like_queries]]
    vectors = tbl.search().select(["embedding"]).limit(len(some)).to_arrow().column("embedding").to_pylist()
    start_like = time.perf_counter()
    for data, vector in zip(some, vectors):
        like_search(tbl, data, np.asarray(vector, np.float32), 10)
    like_qps = len(some) / (time.perf_counter() - start_like)
    latency.append(
        [
            len(rows),
            "--like (sha256 + exact cosine), top 10, embedding given",
            round(like_qps),
            round(1000 / like_qps, 2),
        ]
    )
    for n in args.like_rows:
        synthetic, probes = synthetic_vectors(args.work / f"synthetic-vectors-{n}", n, 2048)
        start_like = time.perf_counter()
        for vector in probes:
            like_search(synthetic, b"", vector, 10)
        qps = len(probes) / (time.perf_counter() - start_like)
        latency.append(
            [n, "--like on synthetic vectors (IVF-PQ, refine x10), top 10", round(qps), round(1000 / qps, 2)]
        )
    print()
    print(table(["rows", "query", "queries/s", "ms/query"], latency))


if __name__ == "__main__":
    main()
