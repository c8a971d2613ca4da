"""Image/caption datasets: the Flickr8k format and plain tables (CSV, JSONL, Parquet).

Paths and URIs go through fsspec, so a dataset can live on local disk, gs:// or s3://.
"""
from __future__ import annotations

import posixpath
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable

from model.storage import read_table, read_text

TOKEN_FILE = "Flickr8k.token.txt"
SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "dev": "Flickr_8k.devImages.txt",
               "test": "Flickr_8k.testImages.txt"}


@dataclass(frozen=True)
class CaptionedImage:
    """One image and its reference captions."""

    image_id: str
    uri: str
    captions: tuple[str, ...]


def _join(base: str, name: str) -> str:
    if "://" in name or name.startswith("/"):
        return name
    return base.rstrip("/") + "/" + name


def parse_token_file(text: str) -> "OrderedDict[str, list[str]]":
    """Parse ``IMAGE.jpg#N<TAB>caption`` lines into ``{image_id: [captions]}`` (order kept)."""
    out: OrderedDict[str, list[str]] = OrderedDict()
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, caption = line.partition("\t")
        if not sep:
            raise ValueError(f"token file line {line_no} has no tab: {line[:80]!r}")
        image_id = key.rsplit("#", 1)[0].strip()
        out.setdefault(image_id, []).append(caption.strip())
    return out


def parse_split_file(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_flickr8k(root: str, split: str | None = "train", images_dir: str = "images",
                  token_file: str = TOKEN_FILE) -> list[CaptionedImage]:
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


def read_table_column_rows(uri: str, columns: list[str]) -> list[dict]:
    """Rows of a CSV/JSONL/Parquet table as dicts of the given columns (all must exist)."""
    table = read_table(uri)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ValueError(f"table {uri} has no column(s) {missing}; it has {table.column_names}")
    return table.select(columns).to_pylist()


def read_caption_table(uri: str, image_column: str = "image", caption_column: str = "caption",
                       id_column: str | None = None, base_dir: str | None = None) -> list[CaptionedImage]:
    """A table with one (image, caption) pair per row; rows of the same image are grouped.
    Relative image paths are resolved against ``base_dir`` (default: the table's folder)."""
    columns = [image_column, caption_column] + ([id_column] if id_column else [])
    rows = read_table_column_rows(uri, columns)
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
