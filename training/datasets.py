"""Image/caption datasets: Flickr8k splits and plain tables (CSV, JSONL, Parquet), as
``CaptionedImage`` lists (the file formats themselves are read by ``model.flickr8k`` and
``model.tables``).

Paths and URIs go through fsspec, so a dataset can live on local disk, gs:// or s3://.
"""

from __future__ import annotations

import posixpath
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from model.flickr8k import SPLIT_FILES, TOKEN_FILE, parse_split_file, parse_token_file
from model.storage import is_local, read_text
from model.tables import read_columns


@dataclass(frozen=True)
class CaptionedImage:
    """One image and its reference captions."""

    image_id: str
    uri: str
    captions: tuple[str, ...]


def _join(base: str, name: str) -> str:
    if not is_local(name) or name.startswith("/"):  # a URI or an absolute path: as it is
        return name
    return base.rstrip("/") + "/" + name


def read_flickr8k(
    root: str, split: str | None = "train", images_dir: str = "images", token_file: str = TOKEN_FILE
) -> list[CaptionedImage]:
    """The images of one standard split (``train``/``dev``/``test``; ``None`` = all captioned
    images) with their captions. Listed images may be missing on disk: feature extraction skips
    and reports them."""
    captions = parse_token_file(read_text(_join(root, token_file)))
    if split is None:
        names: Iterable[str] = captions.keys()
    else:
        if split not in SPLIT_FILES:
            raise ValueError(f"unknown split {split!r}; known: {sorted(SPLIT_FILES)}")
        names = parse_split_file(read_text(_join(root, SPLIT_FILES[split])))
    base = _join(root, images_dir)
    out = []
    for name in names:
        if name not in captions:
            raise ValueError(f"{name} is listed in the {split} split but has no captions in {token_file}")
        out.append(CaptionedImage(name, _join(base, name), tuple(captions[name])))
    return out


def read_caption_table(
    uri: str,
    image_column: str = "image",
    caption_column: str = "caption",
    id_column: str | None = None,
    base_dir: str | None = None,
) -> list[CaptionedImage]:
    """A table with one (image, caption) pair per row; rows of the same image are grouped.
    Relative image paths are resolved against ``base_dir`` (default: the table's folder)."""
    columns = [image_column, caption_column] + ([id_column] if id_column else [])
    rows = read_columns(uri, columns).to_pylist()
    base = base_dir if base_dir is not None else posixpath.dirname(uri)
    grouped: OrderedDict[str, tuple[str, list[str]]] = OrderedDict()
    for row in rows:
        path = row[image_column]
        if not path:
            continue
        image_uri = _join(base, str(path)) if base else str(path)
        image_id = str(row[id_column]) if id_column else posixpath.basename(str(path))
        caption = row[caption_column]
        entry = grouped.setdefault(image_id, (image_uri, []))
        if caption:
            entry[1].append(str(caption))
    return [CaptionedImage(i, u, tuple(c)) for i, (u, c) in grouped.items()]
