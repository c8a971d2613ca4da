"""Word vocabulary of the caption decoder, stored as JSON (never pickle).

Index 0 is padding (so Keras ``mask_zero`` works), then the start, end and unknown tokens,
then words by decreasing training frequency.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence

from model.text import END, PAD, SPECIAL_TOKENS, START, UNK, clean_tokens  # noqa: F401 - re-exported

VOCAB_FORMAT = "image-caption-vocab/1"


class VocabularyError(ValueError):
    """A vocabulary file or list that cannot be used."""


class Vocabulary:
    """Bidirectional token <-> id map with the caption special tokens."""

    def __init__(self, tokens: Sequence[str], min_count: int = 1) -> None:
        tokens = list(tokens)
        if tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise VocabularyError(f"vocabulary must start with {list(SPECIAL_TOKENS)}, got {tokens[:4]}")
        if len(set(tokens)) != len(tokens):
            raise VocabularyError("vocabulary has duplicate tokens")
        self.tokens = tokens
        self.min_count = min_count
        self._index = {tok: i for i, tok in enumerate(tokens)}
        self.pad_id, self.start_id, self.end_id, self.unk_id = range(4)

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 5, max_size: int | None = None) -> Vocabulary:
        """Build from raw captions: cleaned words seen at least ``min_count`` times."""
        counts: Counter[str] = Counter()
        for caption in captions:
            counts.update(clean_tokens(caption))
        # Sort by frequency, then alphabetically, so the result is deterministic.
        words = [w for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_count]
        words = [w for w in words if w not in SPECIAL_TOKENS]
        if max_size is not None:
            words = words[: max(0, max_size - len(SPECIAL_TOKENS))]
        return cls(list(SPECIAL_TOKENS) + words, min_count=min_count)

    @property
    def never_generated(self) -> tuple[int, int, int]:
        """Ids a caption must not contain: padding, <start> and the unknown word."""
        return (self.pad_id, self.start_id, self.unk_id)

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self._index

    def id_of(self, token: str) -> int:
        """Id of a token, the unknown-word id when it is not in the vocabulary."""
        return self._index.get(token, self.unk_id)

    def encode(self, caption: str, max_length: int | None = None) -> list[int]:
        """Clean a caption and map it to ``[start, w1 .. wn, end]``, truncated to ``max_length``
        tokens (the end token is kept when truncating)."""
        ids = [self.start_id] + [self.id_of(tok) for tok in clean_tokens(caption)] + [self.end_id]
        if max_length is not None and len(ids) > max_length:
            ids = ids[: max_length - 1] + [self.end_id]
        return ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Map ids to words, stopping at the end token and dropping start/padding."""
        words: list[str] = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.pad_id, self.start_id):
                continue
            words.append(self.tokens[i] if 0 <= i < len(self.tokens) else UNK)
        return words

    def to_json(self) -> str:
        return json.dumps(
            {"format": VOCAB_FORMAT, "min_count": self.min_count, "tokens": self.tokens}, ensure_ascii=False, indent=0
        )

    @classmethod
    def from_json(cls, text: str) -> Vocabulary:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise VocabularyError(f"not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != VOCAB_FORMAT:
            raise VocabularyError(f"not a {VOCAB_FORMAT} file (missing or wrong 'format' key)")
        tokens = data.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise VocabularyError("'tokens' must be a list of strings")
        return cls(tokens, min_count=int(data.get("min_count", 1)))
