"""Do generated captions tell images apart? Diversity and findability of a caption set
(pure Python + NumPy, no TF/Beam; BM25 findability from :mod:`model.retrieval_metrics`).

For one caption per image (in image order) and each image's reference captions:

* ``distinct_share``: distinct captions / images (1.0 when no two images share a caption);
* ``words``: distinct words over all captions;
* ``novel_share``: captions that are not verbatim (after :func:`model.text.clean_caption`) one of
  the training captions;
* findability: BM25 over the captions, one document per image, queried with references #2..#5 of
  each image (:data:`QUERY_REFERENCES`), R@1/5/10, MRR and median rank with ties broken in
  expectation. The **human anchor** runs the same queries against an index of reference #1.

Captions are compared and indexed in their cleaned form, so "A dog." and "a dog" are one caption.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict

from model.retrieval_metrics import FindabilityReport, findability
from model.text import clean_caption

QUERY_REFERENCES = slice(1, 5)  # references #2..#5 are the queries; #1 is the human anchor's index


def _as_text(caption: str | Sequence[str]) -> str:
    return clean_caption(caption if isinstance(caption, str) else " ".join(caption))


def distinct_share(captions: Sequence[str | Sequence[str]]) -> float:
    """Distinct captions / captions (0.0 for none)."""
    return len({_as_text(c) for c in captions}) / len(captions) if captions else 0.0


def distinct_words(captions: Iterable[str | Sequence[str]]) -> int:
    """How many distinct words the captions use."""
    return len({w for c in captions for w in _as_text(c).split()})


def novel_share(captions: Sequence[str | Sequence[str]], training_captions: Iterable[str]) -> float:
    """Share of captions not found verbatim among ``training_captions`` (0.0 for none)."""
    if not captions:
        return 0.0
    seen = {clean_caption(c) for c in training_captions}
    return sum(_as_text(c) not in seen for c in captions) / len(captions)


def reference_queries(references: Sequence[Sequence[str]]) -> list[tuple[int, str]]:
    """(image index, query) for references #2..#5 of every image; images with fewer references
    give fewer queries. Raises ValueError when no image has a second reference."""
    queries = [(i, q) for i, refs in enumerate(references) for q in refs[QUERY_REFERENCES]]
    if not queries:
        raise ValueError("findability needs images with at least two reference captions")
    return queries


def caption_findability(
    captions: Sequence[str | Sequence[str]], references: Sequence[Sequence[str]]
) -> FindabilityReport:
    """BM25 findability of ``captions`` (one per image) with references #2..#5 as queries."""
    if len(captions) != len(references):
        raise ValueError(f"{len(captions)} captions for {len(references)} reference sets")
    return findability([_as_text(c) for c in captions], reference_queries(references))


def human_anchor(references: Sequence[Sequence[str]]) -> FindabilityReport:
    """The same queries against an index of each image's reference #1: what human captions give."""
    return caption_findability([refs[0] if refs else "" for refs in references], references)


def caption_set_report(
    captions: Sequence[str | Sequence[str]],
    references: Sequence[Sequence[str]],
    training_captions: Iterable[str] | None,
) -> dict[str, float]:
    """All columns at once, flat (JSON-ready): distinct_share, distinct_captions, words,
    novel_share (left out when ``training_captions`` is None) and findability as r_at_1,
    r_at_5, r_at_10, mrr, median_rank, queries."""
    found = caption_findability(captions, references)
    report = {
        "distinct_share": distinct_share(captions),
        "distinct_captions": len({_as_text(c) for c in captions}),
        "words": distinct_words(captions),
    }
    if training_captions is not None:
        report["novel_share"] = novel_share(captions, training_captions)
    return {**report, **asdict(found)}
