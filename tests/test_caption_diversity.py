"""Diversity and findability of caption sets, on hand-made captions whose answers are known."""

from __future__ import annotations

import pytest

from model.caption_diversity import (
    caption_findability,
    caption_set_report,
    distinct_share,
    distinct_words,
    human_anchor,
    novel_share,
    reference_queries,
)


def test_distinct_share_and_words_use_cleaned_captions():
    captions = ["A dog runs.", "a dog runs", ["a", "cat", "sleeps"], "two dogs"]
    assert distinct_share(captions) == 0.75
    assert distinct_words(captions) == 7  # a dog runs cat sleeps two dogs ("dogs" is its own word)
    assert distinct_share([]) == 0.0


def test_novel_share():
    training = ["A dog runs!", "A cat sleeps on a bed."]
    assert novel_share(["a dog runs", "a cat sleeps", "a cat sleeps on a bed"], training) == pytest.approx(1 / 3)
    assert novel_share([], training) == 0.0


def test_queries_are_references_two_to_five():
    refs = [("r1", "q1", "q2", "q3", "q4"), ("only one",), ("s1", "p1")]
    assert reference_queries(refs) == [(0, "q1"), (0, "q2"), (0, "q3"), (0, "q4"), (2, "p1")]
    with pytest.raises(ValueError, match="two reference"):
        reference_queries([("alone",)])


def references() -> list[tuple[str, ...]]:
    return [
        ("a red car", "a red car parked", "red car on a street"),
        ("a dog on grass", "a brown dog on the grass", "dog playing on grass"),
        ("a girl in pink", "little girl in a pink dress", "a girl wearing pink"),
    ]


def test_specific_captions_find_their_images_and_generic_ones_tie():
    specific = caption_findability(["a red car", "a dog on the grass", "a girl in pink"], references())
    assert specific.r_at_1 == 1.0 and specific.median_rank == 1.0 and specific.queries == 6
    # One caption for every image: all queries tie three ways (positions 1..3).
    generic = caption_findability(["a thing"] * 3, references())
    assert generic.r_at_1 == pytest.approx(1 / 3)
    assert generic.median_rank == 2.0
    with pytest.raises(ValueError, match="captions for"):
        caption_findability(["a red car"], references())


def test_human_anchor_indexes_reference_one():
    anchor = human_anchor(references())
    assert anchor == caption_findability([r[0] for r in references()], references())
    assert anchor.r_at_1 == 1.0


def test_report_has_every_column():
    report = caption_set_report(["a red car", "a red car", "a girl in pink"], references(), ["a red car"])
    assert report["distinct_captions"] == 2 and report["distinct_share"] == pytest.approx(2 / 3)
    assert report["words"] == 6 and report["novel_share"] == pytest.approx(1 / 3)
    assert report["queries"] == 6
    # Nothing indexes the dog image's words: its 2 queries score 0 everywhere and tie three ways.
    assert 0 < report["r_at_1"] < 1 and report["r_at_10"] == 1.0
    assert "novel_share" not in caption_set_report(["a", "b", "c"], references(), None)
