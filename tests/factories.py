"""Builders of small real models and images for tests (no mocks: real Keras layers, real files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

TINY_CAPTIONS = [
    "a red circle on a white background",
    "a blue square on a white background",
    "a green triangle on a white background",
    "a dog runs on the grass",
    "a man rides a bike",
    "two children play in the water",
    "a black dog jumps over a log",
    "a woman in a red shirt",
]


def make_tiny_decoder(*, seed: int = 0, feature_dim: int = 24, max_length: int = 12, captions: list[str] | None = None):
    """A small random-initialised (seeded) merge decoder and the vocabulary of ``captions``."""
    import keras

    from model.artifact_config import DecoderConfig
    from model.lstm_decoder import MergeDecoder
    from model.vocabulary import Vocabulary

    keras.utils.set_random_seed(seed)
    vocab = Vocabulary.build(captions or TINY_CAPTIONS, min_count=1)
    cfg = DecoderConfig(
        vocab_size=len(vocab),
        max_length=max_length,
        feature_dim=feature_dim,
        embedding_dim=16,
        units=32,
        image_dense=(64, 32),
        dropout=0.1,
    )
    return MergeDecoder(cfg), vocab


def make_tiny_artifact(
    uri: str, *, seed: int = 0, image_size: int = 64, max_length: int = 12, captions: list[str] | None = None
) -> str:
    """Write an artifact with a random-initialised (seeded) MobileNetV3Small encoder embedded and a
    small random merge decoder; returns its model_id."""
    import keras

    from model.artifact_config import DecoderConfig, EncoderConfig
    from model.artifact_writer import save_artifact
    from model.caption_search import DecodeSettings
    from model.encoder import ImageEncoder
    from model.lstm_decoder import MergeDecoder
    from model.vocabulary import Vocabulary

    keras.utils.set_random_seed(seed)
    vocab = Vocabulary.build(captions or TINY_CAPTIONS, min_count=1)
    encoder = ImageEncoder("mobilenet_v3_small", None, (image_size, image_size))
    cfg = DecoderConfig(
        vocab_size=len(vocab),
        max_length=max_length,
        feature_dim=encoder.feature_dim,
        embedding_dim=16,
        units=32,
        image_dense=(64, 32),
        dropout=0.1,
    )
    decoder = MergeDecoder(cfg)
    return save_artifact(
        uri,
        decoder=decoder,
        vocab=vocab,
        encoder=EncoderConfig("mobilenet_v3_small", (image_size, image_size)),
        decoding=DecodeSettings("beam", 2, 0.7, max_length),
        encoder_model=encoder,
        training={"note": "random weights, for tests"},
    )


def make_tiny_attention_artifact(
    uri: str,
    *,
    kinds: tuple[str, ...] = ("soft",),
    seed: int = 0,
    image_size: int = 64,
    max_length: int = 12,
    captions: list[str] | None = None,
    decoding: tuple[str, int, float] = ("beam", 2, 0.5),
) -> str:
    """Write an attention artifact (format 3): a random-initialised (seeded) MobileNetV3Small
    encoder embedded (its last map: 2x2x576 at 64 px) and small random attention decoders, one
    per kind; returns its model_id."""
    import keras

    from model.artifact_config import AttentionConfig, EncoderConfig
    from model.artifact_writer import save_artifact
    from model.attention_decoder import AttentionDecoder
    from model.caption_search import DecodeSettings
    from model.encoder import ImageEncoder
    from model.vocabulary import Vocabulary

    keras.utils.set_random_seed(seed)
    vocab = Vocabulary.build(captions or TINY_CAPTIONS, min_count=1)
    encoder = ImageEncoder("mobilenet_v3_small", None, (image_size, image_size), spatial=True)
    side = encoder.model.output_shape[1]
    members = [
        AttentionDecoder(
            AttentionConfig(
                vocab_size=len(vocab),
                max_length=max_length,
                feature_dim=encoder.feature_dim,
                regions=side * side,
                embedding_dim=16,
                units=32,
                attention_dim=16,
                dropout=0.1,
                kind=kind,
            )
        )
        for kind in kinds
    ]
    method, width, alpha = decoding
    return save_artifact(
        uri,
        decoder=members,
        vocab=vocab,
        encoder=EncoderConfig("mobilenet_v3_small", (image_size, image_size)),
        decoding=DecodeSettings(method, width, alpha, max_length),
        encoder_model=encoder,
        training={"note": "random weights, for tests"},
    )


def write_jpeg(
    path: Path, size: tuple[int, int] = (96, 80), seed: int = 0, colour: tuple[int, int, int] | None = None
) -> Path:
    """A small valid JPEG with smooth random content (or a flat colour)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    if colour is not None:
        arr = np.empty((h, w, 3), np.uint8)
        arr[:] = colour
    else:
        base = rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        arr = np.asarray(Image.fromarray(base).resize((w, h), Image.BILINEAR))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, "JPEG", quality=90)
    return path


def timed_caption_row(uri: str, when: Any, text: str) -> dict:
    """A minimal caption row (the columns a caption needs; the rest are null) of ``uri``
    processed at ``when``: for tests of the latest-row rule and the Iceberg sync."""
    return {
        "image_uri": uri,
        "image_id": uri,
        "caption": text,
        "score": -1.0,
        "decode": "g",
        "model_id": "m",
        "encoder": "e",
        "width": 1,
        "height": 1,
        "processed_at": when,
    }
