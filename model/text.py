"""Caption text cleaning shared by vocabulary building, training targets and BLEU scoring.

The rules follow the classic Flickr8k merge-model recipe: lowercase, strip punctuation and
digits, and drop one-letter tokens except "a".
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# The decoder's special tokens (one definition: the vocabulary and BLEU both use these).
PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNK)  # vocabulary ids 0..3, in this order

_NON_LETTERS = re.compile(r"[^a-z\s]+")
KEEP_SINGLE_LETTERS = frozenset({"a"})


def clean_tokens(text: str | None) -> list[str]:
    """Return the cleaned word tokens of a caption (may be empty).

    Punctuation and digits are removed rather than turned into spaces inside words, so
    "dog's" becomes "dogs" and "t-shirt" becomes "tshirt", as the seed recipe does.
    """
    if not text:
        return []
    lowered = text.lower()
    letters_only = _NON_LETTERS.sub("", lowered.replace("\t", " ").replace("\n", " "))
    return [tok for tok in letters_only.split() if len(tok) > 1 or tok in KEEP_SINGLE_LETTERS]


def clean_caption(text: str | None) -> str:
    """Return the cleaned caption as one space-joined string."""
    return " ".join(clean_tokens(text))


def strip_special(tokens: Iterable[str], special: Iterable[str]) -> list[str]:
    """Drop special tokens (start, end, padding) from a token sequence."""
    drop = set(special)
    return [tok for tok in tokens if tok not in drop]
