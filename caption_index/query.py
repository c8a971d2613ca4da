"""Text search and look-alike search over a caption index (``beam_pipeline.search_index``).

Text search is LanceDB's BM25 over ``caption`` (the words of the query OR-ed, as a match query,
so quotes and other punctuation in a query are text, not syntax); best first, the hit's ``score``
is the BM25 score. Look-alike search (``like``) puts byte-identical copies first (the same
``image_sha256``, score 1.0) and then the nearest rows by cosine distance of the model's encoder
embedding (score = cosine similarity, 1 - distance): exact below ``VECTOR_INDEX_MIN_ROWS`` rows,
IVF-PQ with re-ranking of the candidates on the full vectors above.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from beam_pipeline.preflight import PreflightError
from beam_pipeline.schemas import EMBEDDING_COLUMN
from beam_pipeline.search_index import DISTANCE, open_table

SHOWN_COLUMNS = ["image_uri", "image_id", "caption", "score", "flags", "width", "height"]
REFINE_FACTOR = 10  # IVF-PQ candidates re-ranked on the full vectors: k * this


@dataclass(frozen=True)
class Hit:
    """One result: the image, its caption, the search score (BM25, or cosine similarity for
    look-alikes; higher is better) and the caption's own confidence (``caption_score``)."""

    image_uri: str
    caption: str
    score: float
    caption_score: float | None = None
    image_id: str | None = None
    flags: tuple[str, ...] | None = None
    width: int | None = None
    height: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "image_uri": self.image_uri,
            "caption": self.caption,
            "score": round(self.score, 6),
            "caption_score": self.caption_score,
            "image_id": self.image_id,
            "flags": list(self.flags) if self.flags is not None else None,
        }


def open_index(uri: str) -> Any:
    """The index's table; PreflightError when there is none at ``uri``."""
    table = open_table(uri)
    if table is None:
        raise PreflightError(f"no caption index at {uri} (make one with run_pipeline.py --search_index {uri})")
    return table


def _hits(rows: list[dict[str, Any]], score_of: Callable[[dict[str, Any]], float]) -> list[Hit]:
    return [
        Hit(
            r["image_uri"],
            r["caption"],
            float(score_of(r)),
            r.get("score"),
            r.get("image_id"),
            tuple(r["flags"]) if r.get("flags") is not None else None,
            r.get("width"),
            r.get("height"),
        )
        for r in rows
    ]


def text_search(table: Any, query: str, k: int = 10) -> list[Hit]:
    """The ``k`` best captions for ``query`` by BM25, best first (none for an empty query)."""
    from lancedb.query import MatchQuery

    if not query.strip():
        return []
    rows = (
        table.search(MatchQuery(query, "caption"), query_type="fts")
        .select(SHOWN_COLUMNS + ["_score"])
        .limit(k)
        .to_list()
    )
    return _hits(rows, lambda r: r["_score"])


def model_id_of(table: Any) -> str | None:
    """The model that captioned the index (one index, one model), None when it is empty."""
    rows = table.search().select(["model_id"]).limit(1).to_list()
    return rows[0]["model_id"] if rows else None


def has_embeddings(table: Any) -> bool:
    return EMBEDDING_COLUMN in table.schema.names


def embed_image(
    data: bytes,
    model_uri: str,
    *,
    encoder_weights: str | None = None,
    precision: str = "float32",
    runtime: str = "auto",
) -> tuple[np.ndarray, str]:
    """(the encoder feature vector of the image ``data``, decoded as the pipeline does; the
    artifact's model_id): compare the id with the index's before comparing vectors."""
    from model.captioner import load_caption_model
    from model.image_loading import decode_image

    model = load_caption_model(model_uri, encoder_weights=encoder_weights, precision=precision, runtime=runtime)
    pixels = decode_image(data, model.image_size).pixels
    return np.asarray(model.encode(np.stack([pixels]))[0], np.float32), model.model_id


def like_search(table: Any, data: bytes, vector: np.ndarray | None, k: int = 10) -> list[Hit]:
    """Images like ``data``: byte-identical copies first (score 1.0), then the nearest by
    embedding (``vector``; None = copies only, for an index without embeddings)."""
    sha = hashlib.sha256(data).hexdigest()
    exact = table.search().where(f"image_sha256 = '{sha}'").select(SHOWN_COLUMNS).limit(k).to_list()
    hits = _hits(sorted(exact, key=lambda r: r["image_uri"]), lambda r: 1.0)
    if vector is None or len(hits) >= k:
        return hits[:k]
    search = (
        table.search(np.asarray(vector, np.float32), vector_column_name=EMBEDDING_COLUMN)
        .distance_type(DISTANCE)
        .select(SHOWN_COLUMNS + ["_distance"])
        .limit(k + len(hits))
    )
    if any(tuple(ix.columns) == (EMBEDDING_COLUMN,) for ix in table.list_indices()):
        search = search.refine_factor(REFINE_FACTOR)
    seen = {h.image_uri for h in hits}
    near = [r for r in search.to_list() if r["image_uri"] not in seen]
    return (hits + _hits(near, lambda r: 1.0 - r["_distance"]))[:k]


def read_queries(path: str) -> list[str]:
    """Queries of a file, one per line (blank lines skipped)."""
    from model.storage import read_text

    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


def result_line(query: str, hits: Sequence[Hit]) -> dict[str, Any]:
    """One ``--json`` / ``--queries`` output line: the query and its hits, best first."""
    return {"query": query, "results": [h.as_json() for h in hits]}
