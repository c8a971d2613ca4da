"""The Flickr8k text formats: the token file (``IMAGE.jpg#N<TAB>caption``) and the split lists.

Used by training (``training.datasets.read_flickr8k``) and by the pipeline (reference captions
for BLEU), so it lives in the model core that both depend on.
"""

from __future__ import annotations

from collections import OrderedDict

TOKEN_FILE = "Flickr8k.token.txt"
SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "dev": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}


def parse_token_file(text: str) -> OrderedDict[str, list[str]]:
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
    """Image names of a split list, one per line."""
    return [line.strip() for line in text.splitlines() if line.strip()]
