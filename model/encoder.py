"""Image encoder: a Keras applications backbone with global average pooling.

Xception (2048-d features at 299x299) is the default; other backbones can be named in the model
config. Weights are ``"imagenet"`` (Keras downloads them; needs internet), a local path or any
fsspec URI to an HDF5 weights file, or ``None`` for random initialisation (tests only).

The Keras model is the source of truth (weights, layer names); on CPUs it is converted to OpenVINO,
which runs Xception faster than TensorFlow on CPUs, and has real bf16 kernels on AVX-512 BF16 CPUs
(speeds in docs/PERFORMANCE.md). TensorFlow executes it when it sees a GPU or on request.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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

    @property
    def preprocessing_function(self) -> str:
        """The preprocessing the encoder runs, as an artifact's config names it."""
        return f"keras.applications.{self.preprocessing}.preprocess_input"


BACKBONES: dict[str, Backbone] = {
    "xception": Backbone("Xception", "xception", 299, 2048, min_size=71, float32_stem_end="block4_sepconv1_act"),
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
        getattr(keras.applications, get_backbone(name).constructor)(
            include_top=False, weights="imagenet", pooling="avg"
        )
    except Exception as exc:  # noqa: BLE001 - network errors come in many types
        raise EncoderError(
            f"could not get the ImageNet weights of {name} (Keras download; no internet?): "
            f"{type(exc).__name__}: {exc}. Pass --encoder_weights PATH_OR_URI "
            "(or set CAPTION_ENCODER_WEIGHTS) to use a local copy."
        ) from None


def weights_fingerprint(weights: str | None) -> str:
    """A short content hash of the weights (for feature-cache keys); ``imagenet``/``none`` as is."""
    resolved = resolve_weights(weights)
    if resolved in (None, "imagenet"):
        return str(resolved).lower()
    return storage.file_sha256(resolved)[:16]


RUNTIMES = ("auto", "openvino", "tensorflow")


PRECISIONS = ("float32", "bfloat16", "int8")

# Images per OpenVINO request: a batch runs as chunks of this size over the CPU plugin's
# throughput streams (``model.openvino_runtime.ChunkedRequests``); chosen by measurement
# (docs/PERFORMANCE.md). Overridable with $CAPTION_OPENVINO_CHUNK for experiments.
OPENVINO_CHUNK = int(os.environ.get("CAPTION_OPENVINO_CHUNK", "2"))


def may_have_gpu() -> bool:
    """False when this machine certainly has no GPU TensorFlow could use: Linux without NVIDIA
    (CUDA) or AMD (ROCm) device nodes. Saves importing TensorFlow (seconds) just to ask it."""
    import glob
    import sys

    if not sys.platform.startswith("linux"):
        return True  # ask TensorFlow (e.g. Metal on macOS)
    return bool(
        glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/kfd")
    )


def choose_runtime(runtime: str, precision: str = "float32") -> str:
    """``auto``: TensorFlow when it sees a GPU, else OpenVINO (faster on CPUs), else TensorFlow.
    INT8 exists only as an OpenVINO CPU graph: ``auto`` picks OpenVINO, ``tensorflow`` is refused."""
    if runtime not in RUNTIMES:
        raise EncoderError(f"encoder runtime must be one of {RUNTIMES}, not {runtime!r}")
    if precision == "int8":
        if runtime == "tensorflow":
            raise EncoderError(
                "--precision int8 runs only on OpenVINO (CPU): use --encoder_runtime openvino or "
                "auto, or float32/bfloat16 with TensorFlow (GPUs)"
            )
        return "openvino"
    if runtime != "auto":
        return runtime
    if may_have_gpu():
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return "tensorflow"
    try:
        import openvino  # noqa: F401 - only whether it imports matters
    except ImportError:
        return "tensorflow"
    return "openvino"


class ImageEncoder:
    """Compiled batch feature extractor: uint8 RGB images -> pooled feature vectors."""

    def __init__(
        self,
        name: str = "xception",
        weights: str | None = "imagenet",
        image_size: tuple[int, int] | None = None,
        precision: str = "float32",
        runtime: str = "auto",
        float32_stem: bool = True,
        cache: str | None = None,
        int8_ir: tuple[bytes, bytes] | None = None,
        spatial: bool = False,
    ) -> None:
        """``precision="bfloat16"`` runs the backbone in bf16 except its float32 stem (see
        ``Backbone.float32_stem_end``; ``float32_stem=False`` makes it all bf16, for benchmarks).
        ``precision="int8"`` runs ``int8_ir``, the quantised OpenVINO IR (xml, bin) of a verified
        artifact (``training.quantize`` builds it); the Keras weights are then not needed, and the
        IR's output is what it was built for (``spatial`` then only names it; the artifact checks it).
        ``runtime`` picks who executes the graph: OpenVINO or TensorFlow (see ``choose_runtime``).
        ``cache``: folder for converted OpenVINO graphs (``model.openvino_runtime.cache_dir``).
        ``spatial=True``: the last convolutional map ``(n, h', w', feature_dim)`` (10x10 for
        Xception at 299 px) instead of its global average, for attention decoders."""
        self.name = name
        self.spatial = spatial
        self.backbone = get_backbone(name)
        size = image_size or (self.backbone.default_size, self.backbone.default_size)
        self.image_size = (int(size[0]), int(size[1]))
        if min(self.image_size) < self.backbone.min_size:
            raise EncoderError(f"{name} needs images of at least {self.backbone.min_size}px, got {self.image_size}")
        if precision not in PRECISIONS:
            raise EncoderError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        self.precision = precision
        self.weights = weights
        self.runtime = choose_runtime(runtime, precision)
        self._model: Any = None
        self.float32_stem_end = self.backbone.float32_stem_end if float32_stem and precision == "bfloat16" else None
        if precision == "int8":
            if int8_ir is None:
                raise EncoderError(
                    "this model artifact has no INT8 encoder; build one with "
                    "python -m training.quantize --model ARTIFACT ..."
                )
            from model import openvino_runtime as ovr

            self._resolved_weights = None  # the IR carries its own (quantised) weights
            self._forward = ovr.ChunkedRequests([ovr.compile_ir(*int8_ir, throughput=True)], OPENVINO_CHUNK).chain
            return
        self._resolved_weights = resolve_weights(weights)
        if self.runtime == "openvino":
            self._forward = self._openvino_forward(cache)
        else:
            self._forward = self._tensorflow_forward()

    @property
    def model(self) -> Any:
        """The Keras model (built on first use: a cached OpenVINO graph does not need it)."""
        if self._model is None:
            import keras

            constructor: Callable[..., Any] = getattr(keras.applications, self.backbone.constructor)
            try:
                self._model = constructor(
                    include_top=False,
                    weights=self._resolved_weights,
                    pooling=None if self.spatial else "avg",
                    input_shape=(*self.image_size, 3),
                )
            except (ValueError, OSError) as exc:
                raise EncoderError(f"could not load {self.name} weights from {self.weights}: {exc}") from exc
        return self._model

    def _traced(self, graph: Any, input_shape: tuple, with_preprocessing: bool) -> Any:
        """A tf.function over ``graph`` (uint8 images in when ``with_preprocessing``), float32 out."""
        import keras
        import tensorflow as tf

        preprocess = getattr(keras.applications, self.backbone.preprocessing).preprocess_input

        def forward(x: tf.Tensor) -> tf.Tensor:
            if with_preprocessing:
                x = preprocess(tf.cast(x, tf.float32))
            return tf.cast(graph(x, training=False), tf.float32)

        dtype = tf.uint8 if with_preprocessing else tf.float32
        return tf.function(forward, input_signature=[tf.TensorSpec([None, *input_shape], dtype)])

    def openvino_float32_graph(self) -> Any:
        """The whole encoder (uint8 images in, features out) as an uncompiled float32 OpenVINO
        model: what ``training.quantize`` hands to NNCF."""
        from model.openvino_runtime import convert_traced

        return convert_traced(self._traced(self.model, (*self.image_size, 3), True).get_concrete_function())

    def _stem_split(self, model: Any) -> tuple[Any, Any]:
        """(stem, rest) Keras models of ``model`` cut at ``float32_stem_end``."""
        import keras

        cut = model.get_layer(self.float32_stem_end).input
        return keras.Model(model.input, cut), keras.Model(cut, model.output)

    def _openvino_forward(self, cache: str | None) -> Callable[[np.ndarray], np.ndarray]:
        from model import openvino_runtime as ovr

        if self.precision == "bfloat16" and not ovr.cpu_has_bf16():
            import logging

            logging.getLogger(__name__).warning(
                "this CPU has no bf16 instructions; OpenVINO runs bfloat16 stages in float32"
            )
        shape = (*self.image_size, 3)

        def whole() -> Any:
            return self._traced(self.model, shape, True).get_concrete_function()

        split = functools.cache(lambda: self._stem_split(self.model))  # built once, only on a cache miss

        def stem() -> Any:
            return self._traced(split()[0], shape, True).get_concrete_function()

        def rest() -> Any:
            part = split()[1]
            return self._traced(part, tuple(part.input.shape[1:]), False).get_concrete_function()

        # OpenVINO sets precision per compiled model, so a float32 stem is its own stage.
        stages = (
            [("whole", whole, self.precision)]
            if self.float32_stem_end is None
            else [("stem", stem, "float32"), ("rest", rest, self.precision)]
        )
        # Random weights differ on every build, so only real weights are cached (and hashed only
        # when there is a cache to key).
        folder = ovr.cache_dir(cache)
        fingerprint = None if self._resolved_weights is None or folder is None else weights_fingerprint(self.weights)
        compiled = [
            ovr.compile_traced(
                trace,
                precision,
                None
                if fingerprint is None
                else ovr.compiled_graph_key(
                    graph="encoder",
                    backbone=self.name,
                    image_size=self.image_size,
                    stage=stage,
                    stem_end=self.float32_stem_end,
                    weights=fingerprint,
                    **({"spatial": True} if self.spatial else {}),
                ),
                folder,
                throughput=True,
            )
            for stage, trace, precision in stages
        ]
        return ovr.ChunkedRequests(compiled, OPENVINO_CHUNK).chain

    def _tensorflow_forward(self) -> Callable[[np.ndarray], np.ndarray]:
        import keras

        graph = self.model
        if self.precision == "bfloat16":
            # Keras mixed precision: a bf16 twin with the same weights; the stem stays float32.
            constructor: Callable[..., Any] = getattr(keras.applications, self.backbone.constructor)
            previous_policy = keras.config.dtype_policy()
            try:
                keras.config.set_dtype_policy("mixed_bfloat16")
                twin = constructor(
                    include_top=False,
                    weights=None,
                    pooling=None if self.spatial else "avg",
                    input_shape=(*self.image_size, 3),
                )
            finally:
                keras.config.set_dtype_policy(previous_policy)
            twin.set_weights(self.model.get_weights())
            graph = twin
            if self.float32_stem_end is not None:
                stem = self._stem_split(self.model)[0]
                rest = self._stem_split(twin)[1]

                def graph(x: Any, training: bool) -> Any:
                    return rest(stem(x, training=training), training=training)

        compiled = self._traced(graph, (*self.image_size, 3), True)
        return lambda images: compiled(images).numpy()

    @property
    def feature_dim(self) -> int:
        return self.backbone.feature_dim

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Encode a batch ``(n, h, w, 3)`` of uint8 RGB images already at ``image_size``."""
        return self._forward(np.asarray(images, dtype=np.uint8))

    def save_weights(self, path: str) -> None:
        self.model.save_weights(path)
