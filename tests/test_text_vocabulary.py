"""Text cleaning and vocabulary: pure Python, no TensorFlow."""

import json

import pytest

from model.text import clean_caption, clean_tokens
from model.vocabulary import END, PAD, SPECIAL_TOKENS, START, UNK, Vocabulary, VocabularyError


def test_clean_tokens_rules():
    assert clean_tokens("A Dog's 2 toys, in the PARK!") == ["a", "dogs", "toys", "in", "the", "park"]
    assert clean_tokens("I see a b c dog") == ["see", "a", "dog"]  # one-letter words dropped except "a"
    assert clean_tokens("t-shirt 3rd") == ["tshirt", "rd"]
    assert clean_caption("  Two\tdogs\nplay .") == "two dogs play"


@pytest.mark.parametrize("text", ["", None, "   ", "!!! ... ,,,", "123 456", "- . ?"])
def test_empty_and_punctuation_only(text):
    assert clean_tokens(text) == []


def test_build_min_count_and_order():
    vocab = Vocabulary.build(["a dog runs", "a dog sits", "a cat", "the dog"], min_count=2)
    assert vocab.tokens[:4] == list(SPECIAL_TOKENS)
    assert vocab.tokens[4:] == ["a", "dog"]  # both seen 3 times: ties broken alphabetically
    # min_count drops words seen once
    assert "cat" not in vocab and "runs" not in vocab


def test_build_is_deterministic_and_sorted_by_frequency():
    vocab = Vocabulary.build(["b1 zz zz yy", "zz yy xx"], min_count=1)
    assert vocab.tokens[4:] == ["zz", "yy", "xx"]  # counts 3, 2, 1; "b1" cleans to "b" and is dropped


def test_encode_decode_unknown_and_truncation():
    vocab = Vocabulary.build(["a dog runs"] * 3, min_count=1)
    ids = vocab.encode("A zebra runs!")
    assert ids[0] == vocab.start_id and ids[-1] == vocab.end_id
    assert ids[2] == vocab.unk_id
    assert vocab.decode(ids) == ["a", UNK, "runs"]
    assert vocab.encode("", max_length=5) == [vocab.start_id, vocab.end_id]
    long_ids = vocab.encode("a dog runs a dog runs", max_length=4)
    assert len(long_ids) == 4 and long_ids[-1] == vocab.end_id
    assert vocab.decode([vocab.start_id, vocab.id_of("dog"), vocab.end_id, vocab.id_of("runs")]) == ["dog"]
    assert vocab.decode([vocab.pad_id, vocab.id_of("dog")]) == ["dog"]


def test_json_round_trip_and_refusals():
    vocab = Vocabulary.build(["a dog runs", "a cat"], min_count=1)
    again = Vocabulary.from_json(vocab.to_json())
    assert again.tokens == vocab.tokens and again.min_count == 1
    with pytest.raises(VocabularyError, match="JSON"):
        Vocabulary.from_json("{not json")
    with pytest.raises(VocabularyError, match="format"):
        Vocabulary.from_json(json.dumps({"tokens": vocab.tokens}))
    with pytest.raises(VocabularyError, match="start with"):
        Vocabulary([START, PAD, END, UNK, "dog"])
    with pytest.raises(VocabularyError, match="duplicate"):
        Vocabulary(list(SPECIAL_TOKENS) + ["dog", "dog"])


def test_max_size():
    vocab = Vocabulary.build(["a b c dd ee ff gg"] * 2, min_count=1, max_size=6)
    assert len(vocab) == 6
