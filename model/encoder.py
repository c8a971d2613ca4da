"""Image encoder: a Keras applications backbone with global average pooling.

Xception (2048-d features at 299x299) is the default; other backbones can be named in the model
config. Weights are ``"imagenet"`` (Keras downloads them; needs internet), a local path or any
fsspec URI to an HDF5 weights file, or ``None`` for random initialisation (tests only).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from model import storage


class EncoderError(ValueError):
    """The encoder cannot be built as configured."""


@dataclass(frozen=True)
class Backbone:
    """How to build one keras.applications backbone and preprocess its input."""

    constructor: str  # attribute of keras.applications
    preprocessing: str  # keras.applications module holding preprocess_input
    default_size: int
    feature_dim: int
    min_size: int = 32


BACKBONES: dict[str, Backbone] = {
    "xception": Backbone("Xception", "xception", 299, 2048, min_size=71),
    "inception_v3": Backbone("InceptionV3", "inception_v3", 299, 2048, min_size=75),
    "resnet50": Backbone("ResNet50", "resnet", 224, 2048),
    "efficientnet_b0": Backbone("EfficientNetB0", "efficientnet", 224, 1280),
    "mobilenet_v3_small": Backbone("MobileNetV3Small", "mobilenet_v3", 224, 576),
}


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise EncoderError(f"unknown encoder {name!r}; known: {sorted(BACKBONES)}") from None


def resolve_weights(weights: str | None) -> str | None:
    """Turn a weights setting into what keras.applications accepts: ``"imagenet"``, ``None``,
    or a local HDF5 path (remote URIs are downloaded once to a local cache)."""
    if weights is None or weights in ("none", "random"):
        return None
    if weights == "imagenet":
        return "imagenet"
    try:
        path = storage.materialise(weights)
    except FileNotFoundError:
        raise EncoderError(f"encoder weights not found: {weights}") from None
    if not os.path.isfile(path):
        raise EncoderError(f"encoder weights not found: {weights}")
    if not storage.is_hdf5(path):
        raise EncoderError(f"encoder weights file is not HDF5 (refused, nothing loaded): {weights}")
    return path


def check_weights_available(name: str, weights: str | None) -> None:
    """Fail early (in the driver, before any image is read) when the weights cannot be had:
    a missing or non-HDF5 file, or an ``imagenet`` download that does not work offline."""
    resolved = resolve_weights(weights)
    if resolved != "imagenet":
        return
    import keras

    try:
        getattr(keras.applications, get_backbone(name).constructor)(include_top=False, weights="imagenet", pooling="avg")
    except Exception as exc:  # noqa: BLE001 - network errors come in many types
        raise EncoderError(f"could not get the ImageNet weights of {name} (Keras download; no internet?): "
                           f"{type(exc).__name__}: {exc}. Pass --encoder_weights PATH_OR_URI "
                           "(or set CAPTION_ENCODER_WEIGHTS) to use a local copy.") from None


def weights_fingerprint(weights: str | None) -> str:
    """A short content hash of the weights (for feature-cache keys); ``imagenet``/``none`` as is."""
    resolved = resolve_weights(weights)
    if resolved in (None, "imagenet"):
        return str(resolved).lower()
    h = hashlib.sha256()
    with open(resolved, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()[:16]


class ImageEncoder:
    """Compiled batch feature extractor: uint8 RGB images -> pooled feature vectors."""

    def __init__(self, name: str = "xception", weights: str | None = "imagenet",
                 image_size: tuple[int, int] | None = None, precision: str = "float32") -> None:
        import keras
        import tensorflow as tf

        self.name = name
        self.backbone = get_backbone(name)
        size = image_size or (self.backbone.default_size, self.backbone.default_size)
        self.image_size = (int(size[0]), int(size[1]))
        if min(self.image_size) < self.backbone.min_size:
            raise EncoderError(f"{name} needs images of at least {self.backbone.min_size}px, got {self.image_size}")
        if precision not in ("float32", "bfloat16"):
            raise EncoderError(f"precision must be float32 or bfloat16, not {precision!r}")
        self.precision = precision
        self.weights = weights
        resolved = resolve_weights(weights)
        constructor: Callable[..., Any] = getattr(keras.applications, self.backbone.constructor)
        previous_policy = keras.config.dtype_policy()
        try:
            if precision == "bfloat16":
                keras.config.set_dtype_policy("mixed_bfloat16")
            try:
                self.model = constructor(include_top=False, weights=resolved, pooling="avg",
                                         input_shape=(*self.image_size, 3))
            except (ValueError, OSError) as exc:
                raise EncoderError(f"could not load {name} weights from {weights}: {exc}") from exc
        finally:
            keras.config.set_dtype_policy(previous_policy)
        module = getattr(keras.applications, self.backbone.preprocessing)
        preprocess = module.preprocess_input
        model = self.model

        def forward(images: tf.Tensor) -> tf.Tensor:
            x = preprocess(tf.cast(images, tf.float32))
            return tf.cast(model(x, training=False), tf.float32)

        self._forward = tf.function(forward, input_signature=[
            tf.TensorSpec([None, *self.image_size, 3], tf.uint8)])

    @property
    def feature_dim(self) -> int:
        return int(self.model.output_shape[-1])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Encode a batch ``(n, h, w, 3)`` of uint8 RGB images already at ``image_size``."""
        return self._forward(np.asarray(images, dtype=np.uint8)).numpy()

    def save_weights(self, path: str) -> None:
        self.model.save_weights(path)
