"""Reference captions (``--references``): a Flickr8k token file, or a table of image id + caption
rows, as (image id, [captions]) pairs for ``transforms.AttachReferences``."""

from __future__ import annotations

from collections.abc import Iterable

from model.flickr8k import parse_token_file
from model.storage import read_text
from model.tables import read_columns


def read_references(
    uri: str, id_column: str = "image_id", caption_column: str = "caption"
) -> Iterable[tuple[str, list[str]]]:
    """(image id, [captions]) from a Flickr8k token file or a table of image id + caption rows."""
    lower = uri.lower()
    if lower.endswith(".txt") or lower.endswith(".token"):
        return list(parse_token_file(read_text(uri)).items())
    grouped: dict[str, list[str]] = {}
    for row in read_columns(uri, [id_column, caption_column], "references table").to_pylist():
        if row[id_column] is None or not row[caption_column]:
            continue
        grouped.setdefault(str(row[id_column]), []).append(str(row[caption_column]))
    return list(grouped.items())
