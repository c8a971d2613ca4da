"""Moderation: a watch-list of phrases per category flags captions (``--watchlist FILE``), and flagged
or low-confidence captions go to a review queue (``OUTPUT/review/*.parquet``, ``--review_below``).

Pure Python (no Beam): the pipeline maps ``add_flags`` over its caption rows and ``review_rows``
over them into the review writer.

The watch-list is a UTF-8 CSV file, one ``category,phrase`` per line::

    # lines starting with # and blank lines are skipped; an optional first line "category,phrase"
    weapons,gun
    weapons,knife
    alcohol,beer bottle
    "people, young",child

A category is lower-case letters, digits, ``_`` or ``-``; a phrase is one or more words (quote
it when it holds a comma). Captions and phrases are compared as cleaned word tokens (the
cleaning of ``model.text``: lower case, punctuation and digits removed), with simple English
plurals folded on both sides (``dogs`` -> ``dog``, ``boxes`` -> ``box``, ``puppies`` -> ``puppy``;
irregular plurals such as ``knives`` or ``men`` are not folded: list them). A phrase matches where
its words occur consecutively in the caption. Anything else is refused with its line number.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from beam_pipeline.preflight import PreflightError
from beam_pipeline.schemas import FLAGS_COLUMN
from model.text import clean_tokens

REASON_FLAGGED, REASON_LOW_SCORE = "flagged", "low_score"
_CATEGORY = re.compile(r"^[a-z0-9_-]+$")

REVIEW_SCHEMA = pa.schema(
    [
        pa.field("image_uri", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field(FLAGS_COLUMN, pa.list_(pa.string()), nullable=True),  # null without --watchlist
        pa.field("reason", pa.string(), nullable=False),  # "flagged", "low_score" or "flagged,low_score"
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("processed_at", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("image_sha256", pa.string(), nullable=True),
    ]
)


def singular(token: str) -> str:
    """A simple English singular: ``puppies`` -> ``puppy``, ``boxes`` -> ``box``, ``dogs`` -> ``dog``."""
    if len(token) > 4 and token.endswith("ies"):
        return token[:-3] + "y"
    if len(token) > 3 and token.endswith(("ses", "xes", "zes", "ches", "shes")):
        return token[:-2]
    if len(token) > 3 and token.endswith("s") and not token.endswith(("ss", "us", "is")):
        return token[:-1]
    return token


def _words(text: str) -> tuple[str, ...]:
    return tuple(singular(t) for t in clean_tokens(text))


@dataclass(frozen=True)
class Watchlist:
    """(category, phrase words) pairs, phrase words already folded to singular."""

    entries: tuple[tuple[str, tuple[str, ...]], ...]

    def flags(self, caption: str) -> list[str]:
        """The sorted categories whose phrases occur in ``caption`` (empty when none)."""
        words = _words(caption)
        found = set()
        for category, phrase in self.entries:
            if category in found:
                continue
            n = len(phrase)
            if any(words[i : i + n] == phrase for i in range(len(words) - n + 1)):
                found.add(category)
        return sorted(found)


def parse_watchlist(text: str, source: str = "watch-list") -> Watchlist:
    """The watch-list in ``text``; PreflightError naming ``source`` and the line of the first bad entry."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"--watchlist {source} line {number}"
        try:
            fields = next(csv.reader(io.StringIO(line), strict=True))
        except csv.Error as exc:
            raise PreflightError(f"{where}: not a CSV line ({exc}): {line!r}") from exc
        if len(fields) != 2:
            raise PreflightError(f"{where}: expected 'category,phrase' (2 fields), got {len(fields)}: {line!r}")
        category, phrase = fields[0].strip(), fields[1].strip()
        if number == 1 and (category.lower(), phrase.lower()) == ("category", "phrase"):
            continue
        if not _CATEGORY.match(category):
            raise PreflightError(f"{where}: category {category!r} must be lower-case letters, digits, _ or -")
        words = _words(phrase)
        if not words:
            raise PreflightError(f"{where}: phrase {phrase!r} has no words")
        entries.append((category, words))
    if not entries:
        raise PreflightError(f"--watchlist {source}: no 'category,phrase' lines")
    return Watchlist(tuple(entries))


def load_watchlist(uri: str) -> Watchlist:
    """Read and parse the watch-list at ``uri`` (any fsspec URI); PreflightError when unreadable."""
    from model.storage import read_text

    try:
        text = read_text(uri)
    except (OSError, UnicodeDecodeError) as exc:
        raise PreflightError(f"--watchlist {uri}: cannot read it: {exc}") from exc
    return parse_watchlist(text, uri)


def add_flags(row: dict[str, Any], watchlist: Watchlist) -> dict[str, Any]:
    """The caption row with its ``flags`` (a list of categories, empty when none matched)."""
    return {**row, FLAGS_COLUMN: watchlist.flags(row["caption"])}


def review_reason(row: dict[str, Any], review_below: float | None) -> str | None:
    """Why the row needs a person's look ("flagged", "low_score", both joined by ","), or None."""
    reasons = []
    if row.get(FLAGS_COLUMN):
        reasons.append(REASON_FLAGGED)
    if review_below is not None and row["score"] < review_below:
        reasons.append(REASON_LOW_SCORE)
    return ",".join(reasons) or None


def review_rows(row: dict[str, Any], review_below: float | None) -> Iterator[dict[str, Any]]:
    """The review-queue row of a caption row that needs review (nothing otherwise)."""
    reason = review_reason(row, review_below)
    if reason is not None:
        yield {**{f.name: row.get(f.name) for f in REVIEW_SCHEMA}, "reason": reason}
