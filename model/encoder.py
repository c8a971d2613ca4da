"""Image encoder: a Keras applications backbone with global average pooling.

Xception (2048-d features at 299x299) is the default; other backbones can be named in the model
config. Weights are ``"imagenet"`` (Keras downloads them; needs internet), a local path or any
fsspec URI to an HDF5 weights file, or ``None`` for random initialisation (tests only).

The Keras model is the source of truth (weights, layer names); on CPUs it is converted to OpenVINO,
which runs Xception 1.2x faster than TensorFlow in float32 and about 2x faster again in bf16 on
AVX-512 BF16 CPUs (docs/PERFORMANCE.md). TensorFlow executes it when it sees a GPU or on request.
"""
from __future__ import annotations

import hashlib
import os
import threading
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
    # Under bfloat16, layers before this one's input stay float32: the first blocks are where
    # bf16 rounding costs most caption agreement (docs/PERFORMANCE.md, section 2).
    float32_stem_end: str | None = None


BACKBONES: dict[str, Backbone] = {
    "xception": Backbone("Xception", "xception", 299, 2048, min_size=71,
                         float32_stem_end="block4_sepconv1_act"),
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


RUNTIMES = ("auto", "openvino", "tensorflow")


def choose_runtime(runtime: str) -> str:
    """``auto``: TensorFlow when it sees a GPU, else OpenVINO (faster on CPUs), else TensorFlow."""
    if runtime not in RUNTIMES:
        raise EncoderError(f"encoder runtime must be one of {RUNTIMES}, not {runtime!r}")
    if runtime != "auto":
        return runtime
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "tensorflow"
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "tensorflow"
    return "openvino"


def openvino_cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin has bf16 kernels here (AVX-512 BF16 or AMX); else it runs f32."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class _OpenVinoStages:
    """tf.functions converted to OpenVINO and compiled for the CPU, each at its own precision.

    One infer request per thread (a request is not thread-safe; the compiled model is)."""

    def __init__(self, stages: list[tuple[Any, str]]) -> None:
        import openvino as ov

        core = ov.Core()
        if any(p == "bfloat16" for _, p in stages) and not openvino_cpu_has_bf16():
            import logging

            logging.getLogger(__name__).warning("this CPU has no bf16 instructions; OpenVINO runs bfloat16 "
                                                "stages in float32")
        self._compiled = [core.compile_model(ov.convert_model(fn.get_concrete_function()), "CPU",
                                             {"INFERENCE_PRECISION_HINT": "bf16" if p == "bfloat16" else "f32"})
                          for fn, p in stages]
        self._local = threading.local()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        requests = getattr(self._local, "requests", None)
        if requests is None:
            requests = self._local.requests = [c.create_infer_request() for c in self._compiled]
        x = images
        for request in requests:
            x = request.infer({0: x})[0]
        return np.asarray(x, dtype=np.float32)


class ImageEncoder:
    """Compiled batch feature extractor: uint8 RGB images -> pooled feature vectors."""

    def __init__(self, name: str = "xception", weights: str | None = "imagenet",
                 image_size: tuple[int, int] | None = None, precision: str = "float32",
                 runtime: str = "auto", float32_stem: bool = True) -> None:
        """``precision="bfloat16"`` runs the backbone in bf16 except its float32 stem (see
        ``Backbone.float32_stem_end``; ``float32_stem=False`` makes it all bf16, for benchmarks).
        ``runtime`` picks who executes the graph: OpenVINO or TensorFlow (see ``choose_runtime``)."""
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
        self.runtime = choose_runtime(runtime)
        resolved = resolve_weights(weights)
        constructor: Callable[..., Any] = getattr(keras.applications, self.backbone.constructor)
        shape = (*self.image_size, 3)
        try:
            self.model = constructor(include_top=False, weights=resolved, pooling="avg", input_shape=shape)
        except (ValueError, OSError) as exc:
            raise EncoderError(f"could not load {name} weights from {weights}: {exc}") from exc
        preprocess = getattr(keras.applications, self.backbone.preprocessing).preprocess_input
        self.float32_stem_end = self.backbone.float32_stem_end \
            if float32_stem and precision == "bfloat16" else None
        uint8_images = tf.TensorSpec([None, *shape], tf.uint8)
        cut = stem = None
        if self.float32_stem_end is not None:
            cut = self.model.get_layer(self.float32_stem_end).input
            stem = keras.Model(self.model.input, cut)

        def stage(graph: Any, spec: tf.TensorSpec, with_preprocessing: bool) -> Any:
            def forward(x: tf.Tensor) -> tf.Tensor:
                if with_preprocessing:
                    x = preprocess(tf.cast(x, tf.float32))
                return tf.cast(graph(x, training=False), tf.float32)
            return tf.function(forward, input_signature=[spec])

        if self.runtime == "openvino":
            # OpenVINO sets precision per compiled model, so a float32 stem is its own stage.
            if stem is None:
                stages = [(stage(self.model, uint8_images, True), precision)]
            else:
                rest = keras.Model(cut, self.model.output)
                stages = [(stage(stem, uint8_images, True), "float32"),
                          (stage(rest, tf.TensorSpec([None, *cut.shape[1:]], tf.float32), False), precision)]
            self._forward = _OpenVinoStages(stages)
            return
        graph = self.model
        if precision == "bfloat16":
            # Keras mixed precision: a bf16 twin with the same weights; the stem stays float32.
            previous_policy = keras.config.dtype_policy()
            try:
                keras.config.set_dtype_policy("mixed_bfloat16")
                twin = constructor(include_top=False, weights=None, pooling="avg", input_shape=shape)
            finally:
                keras.config.set_dtype_policy(previous_policy)
            twin.set_weights(self.model.get_weights())
            graph = twin
            if stem is not None:
                twin_cut = twin.get_layer(self.float32_stem_end).input
                rest = keras.Model(twin_cut, twin.output)
                graph = lambda x, training: rest(stem(x, training=training), training=training)  # noqa: E731
        compiled = stage(graph, uint8_images, True)
        self._forward = lambda images: compiled(images).numpy()

    @property
    def feature_dim(self) -> int:
        return int(self.model.output_shape[-1])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Encode a batch ``(n, h, w, 3)`` of uint8 RGB images already at ``image_size``."""
        return self._forward(np.asarray(images, dtype=np.uint8))

    def save_weights(self, path: str) -> None:
        self.model.save_weights(path)
