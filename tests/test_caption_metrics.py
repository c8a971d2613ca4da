"""CIDEr-D and ROUGE-L against the COCO caption evaluation code (pycocoevalcap), the field's
reference, on real Flickr8k captions and on generated ones; plus hand-worked small cases."""

from __future__ import annotations

import random

import pytest

from model.bleu import bleu_tokens
from model.caption_metrics import cider_d, cider_d_segments, rouge_l, rouge_l_segment

coco_cider = pytest.importorskip("pycocoevalcap.cider.cider")
coco_rouge = pytest.importorskip("pycocoevalcap.rouge.rouge")


def reference_scores(hyps: list[list[str]], refs: list[list[list[str]]]) -> tuple[float, list[float], float]:
    gts = {i: [" ".join(r) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [" ".join(h)] for i, h in enumerate(hyps)}
    cider, per_image = coco_cider.Cider().compute_score(gts, res)
    rouge, _ = coco_rouge.Rouge().compute_score(gts, res)
    return float(cider), [float(x) for x in per_image], float(rouge)


def test_equal_to_pycocoevalcap_on_flickr8k_captions(flickr8k):
    """Hold out each image's first reference as the 'hypothesis' and score it against the other four."""
    from model.flickr8k import parse_token_file

    captions = parse_token_file((flickr8k / "Flickr8k.token.txt").read_text())
    ids = sorted(captions)[:300]
    hyps = [bleu_tokens(captions[i][0]) for i in ids]
    refs = [[bleu_tokens(c) for c in captions[i][1:]] for i in ids]
    cider, per_image, rouge = reference_scores(hyps, refs)
    assert cider_d(hyps, refs) == pytest.approx(cider, rel=1e-9, abs=1e-12)
    assert cider_d_segments(hyps, refs) == pytest.approx(per_image, rel=1e-9, abs=1e-12)
    assert rouge_l(hyps, refs) == pytest.approx(rouge, rel=1e-9, abs=1e-12)
    assert 0.3 < cider < 1.5 and 0.3 < rouge < 0.7  # human captions score like good systems


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equal_to_pycocoevalcap_on_random_captions(seed: int):
    rng = random.Random(seed)
    words = "a the dog man woman runs on grass in red shirt two children play ball water beach".split()
    hyps = [[rng.choice(words) for _ in range(rng.randint(1, 12))] for _ in range(60)]
    refs = [
        [[rng.choice(words) for _ in range(rng.randint(1, 14))] for _ in range(rng.randint(1, 5))] for _ in range(60)
    ]
    cider, per_image, rouge = reference_scores(hyps, refs)
    assert cider_d(hyps, refs) == pytest.approx(cider, rel=1e-9, abs=1e-12)
    assert cider_d_segments(hyps, refs) == pytest.approx(per_image, rel=1e-9, abs=1e-12)
    assert rouge_l(hyps, refs) == pytest.approx(rouge, rel=1e-9, abs=1e-12)


def test_rouge_l_by_hand():
    # LCS("a dog runs fast", "a brown dog runs") = "a dog runs" = 3: P = 3/4, R = 3/4 -> F = 0.75.
    assert rouge_l_segment("a dog runs fast".split(), ["a brown dog runs".split()]) == pytest.approx(0.75)
    # Best precision and best recall may come from different references.
    p, r = 2 / 2, 2 / 5  # "a dog" vs ["a dog", ...]: P 1, R 1 for the first ref -> F 1
    assert rouge_l_segment(["a", "dog"], [["a", "dog"], ["a", "big", "dog", "is", "here"]]) == pytest.approx(1.0)
    beta2 = 1.2**2
    assert rouge_l_segment(["a", "dog"], [["a", "big", "dog", "is", "here"]]) == pytest.approx(
        (1 + beta2) * p * r / (r + beta2 * p)
    )
    assert rouge_l_segment(["cat"], [["a", "dog"]]) == 0.0
    assert rouge_l_segment([], [["a", "dog"]]) == 0.0


def test_cider_d_basic_properties():
    refs = [
        ["a dog runs on the grass".split(), "a brown dog runs".split()],
        ["two children play in the water".split(), "kids splash in a lake".split()],
    ]
    perfect = cider_d([refs[0][0], refs[1][0]], refs)
    wrong = cider_d([refs[1][0], refs[0][0]], refs)  # captions swapped between the images
    assert perfect > wrong >= 0.0
    # An identical hypothesis and reference differ only by the other reference's similarity.
    assert cider_d_segments([refs[0][0]], [[refs[0][0]]]) == [0.0]  # one image: idf = log(1) - log(1) = 0
    with pytest.raises(ValueError):
        cider_d([], [])
    with pytest.raises(ValueError):
        cider_d([["a"]], [[]])
