"""The shipped default model with the real ImageNet Xception weights on real Flickr8k photos.

Skipped (with the reason printed) only when ../shared lacks the weights or the photos.
"""

from __future__ import annotations

import pytest

from model.text import clean_tokens
from tests.pipeline_helpers import read_rows, run_pipeline

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

DOG_WORDS = {"dog", "dogs", "puppy"}


def _mentions_dog(text: str) -> bool:
    return bool(DOG_WORDS & set(clean_tokens(text)))


def test_shipped_model_captions_name_what_is_in_the_pictures(tmp_path, xception_weights, flickr8k):
    from model.flickr8k import parse_token_file

    refs = parse_token_file((flickr8k / "Flickr8k.token.txt").read_text())
    dev = [n for n in (flickr8k / "Flickr_8k.devImages.txt").read_text().split() if (flickr8k / "images" / n).exists()]
    dogs = [n for n in dev if all(_mentions_dog(c) for c in refs[n])][:25]
    others = [n for n in dev if not any(_mentions_dog(c) for c in refs[n])][:25]
    assert len(dogs) == 25 and len(others) == 25
    images = tmp_path / "images"
    images.mkdir()
    for name in dogs + others:
        (images / name).symlink_to(flickr8k / "images" / name)
    out = tmp_path / "out"
    summary = run_pipeline(
        [
            "--input",
            f"{images}/*.jpg",
            "--output",
            str(out),
            "--encoder_weights",
            str(xception_weights),
            "--references",
            str(flickr8k / "Flickr8k.token.txt"),
        ]
    )
    assert summary["captioned"] == 50 and summary["failed"] == 0
    rows = {r["image_id"]: r for r in read_rows(out, "captions")}
    dog_rate = sum(_mentions_dog(rows[n]["caption"]) for n in dogs) / len(dogs)
    other_rate = sum(_mentions_dog(rows[n]["caption"]) for n in others) / len(others)
    print(f"'dog' in captions: {dog_rate:.0%} of dog photos, {other_rate:.0%} of other photos")
    assert dog_rate >= 0.6
    assert other_rate <= 0.25
    assert dog_rate >= 3 * max(other_rate, 0.04)
    # Captions are real sentences that overlap the human references.
    assert summary["bleu"]["bleu1"] > 0.45
    assert all(3 <= len(r["caption"].split()) <= 25 for r in rows.values())


@pytest.mark.parametrize("runtime", ["openvino", "tensorflow"])
def test_bfloat16_with_float32_stem_stays_close_to_float32(runtime, xception_weights, flickr8k):
    """bf16 keeps Xception's first blocks in float32: half the feature error of all-bf16."""
    import numpy as np

    from model.encoder import ImageEncoder
    from model.image_loading import decode_image
    from model.openvino_runtime import cpu_has_bf16

    if runtime == "openvino" and not cpu_has_bf16():
        pytest.skip("this CPU has no bf16 instructions; OpenVINO would run float32")
    names = (flickr8k / "Flickr_8k.devImages.txt").read_text().split()
    paths = [p for p in (flickr8k / "images" / n for n in names) if p.exists()][:8]
    images = np.stack([decode_image(p.read_bytes(), (299, 299)).pixels for p in paths])
    ref = ImageEncoder("xception", str(xception_weights), runtime=runtime)(images)

    def error(**kw):
        feats = ImageEncoder("xception", str(xception_weights), precision="bfloat16", runtime=runtime, **kw)(images)
        assert feats.dtype == np.float32 and feats.shape == ref.shape
        return float(np.linalg.norm(feats - ref) / np.linalg.norm(ref))

    with_stem, all_bf16 = error(), error(float32_stem=False)
    assert 0 < with_stem < 0.7 * all_bf16 and all_bf16 < 0.05
