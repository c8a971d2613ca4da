"""CaptionModel: encoder + decoder + vocabulary, loaded from an artifact, captioning batches.

A merge-decoder artifact (formats 1 and 2) gets an encoder that returns the pooled vector; an
attention artifact (format 3) gets one that returns the spatial map, and its search runs on the
map. Either way ``caption_images`` returns the pooled vector as the image's embedding (for an
attention model the map's global average, which is what the pooled encoder computes)."""

from __future__ import annotations

from typing import Any

import numpy as np

from model.artifact import ArtifactContents, ArtifactError, read_artifact
from model.artifact_config import ArtifactConfig
from model.caption_search import CaptionResult, DecodeSettings, caption_features
from model.encoder import ImageEncoder
from model.lstm_decoder import STEP_GRAPHS, DecoderSource, MergeDecoder, make_step_model, step_graph_key
from model.vocabulary import Vocabulary


class CaptionModel:
    """A ready-to-run captioner; build it with ``load_caption_model``."""

    def __init__(
        self,
        encoder: ImageEncoder | None,
        decoders: list[MergeDecoder] | DecoderSource | None,
        vocab: Vocabulary,
        model_id: str,
        config: ArtifactConfig,
        default_settings: DecodeSettings,
        cache: str | None = None,
        combine: str = "mean_logprob",
        step_model: Any = None,
    ) -> None:
        """``decoders``: the merge decoders; or ``step_model``, any ready ``StepModel`` (attention)."""
        self.encoder = encoder
        # The decoder runs where the encoder runs: one runtime's thread pool per process.
        runtime = encoder.runtime if encoder is not None else "tensorflow"
        self.step_model = (
            step_model if step_model is not None else make_step_model(decoders, runtime, model_id, cache, combine)
        )
        self.vocab = vocab
        self.model_id = model_id
        self.config = config
        self.default_settings = default_settings

    @property
    def decoders(self) -> list[MergeDecoder]:
        """The Keras merge decoders (built on first use: cached OpenVINO step graphs do not need them)."""
        if self.config.is_attention:
            raise TypeError("an attention model has no merge decoders")
        return self.step_model.member_decoders()

    @property
    def image_size(self) -> tuple[int, int]:
        return self.config.encoder.image_size

    @property
    def encoder_name(self) -> str:
        return self.config.encoder.name

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Features of a batch of uint8 RGB images at ``image_size``."""
        if self.encoder is None:
            raise RuntimeError("this CaptionModel was loaded without an encoder")
        return self.encoder(images)

    def caption_features(self, features: np.ndarray, settings: DecodeSettings | None = None) -> list[CaptionResult]:
        """Captions for a batch of encoder feature vectors (``model.caption_search.caption_features``)."""
        return caption_features(self.step_model, self.vocab, features, settings or self.default_settings)

    def caption_images(
        self, images: np.ndarray, settings: DecodeSettings | None = None
    ) -> tuple[np.ndarray, list[CaptionResult]]:
        """Encode and caption a batch; returns the pooled feature vectors too (for
        ``--emit_embeddings``): an attention model's map averaged over its cells."""
        features = self.encode(images)
        results = self.caption_features(features, settings)
        if features.ndim > 2:
            features = features.reshape(len(features), -1, features.shape[-1]).mean(axis=1)
        return features, results


def build_decoders(contents: ArtifactContents) -> list[Any]:
    """The decoder(s) of a verified artifact with their weights loaded (one per ensemble member):
    ``MergeDecoder``, or ``model.attention_decoder.AttentionDecoder`` for an attention artifact."""
    import os

    if contents.config.is_attention:
        from model.attention_decoder import AttentionDecoder as make
    else:
        make = MergeDecoder
    decoders = []
    for path, config in zip(contents.decoder_weights_paths, contents.config.member_configs()):
        decoder = make(config)
        try:
            decoder.load_weights(path)
        except Exception as exc:  # noqa: BLE001 - Keras raises several types for bad weights
            raise ArtifactError(
                f"{os.path.basename(path)} of model artifact {contents.uri} does not fit the "
                f"configured decoder: {type(exc).__name__}: {exc}"
            ) from None
        decoders.append(decoder)
    return decoders


def int8_decoder_graphs(contents: ArtifactContents, precision: str) -> tuple[tuple[bytes, bytes], ...] | None:
    """The attention graphs (IR) that ``precision`` runs instead of traced ones: the INT8 path's,
    with INT8 weights, when the artifact has them; else None."""
    return contents.int8_decoder if precision == "int8" else None


def check_decoders(contents: ArtifactContents, cache: str | None = None, precision: str = "float32") -> None:
    """Refuse early (``ArtifactError``) decoder weights that do not fit the config, by building
    the decoders; skipped when the OpenVINO step graphs that ``precision`` traces are in the cache
    (``cache``: see ``load_caption_model``): they were converted from these very weights (the
    cache key holds the artifact's content hash), so the weights fit, and the check would import
    TensorFlow; and when ``precision`` runs the artifact's own graphs (``int8_decoder_graphs``),
    which do not read the weights files."""
    from model import openvino_runtime as ovr

    if int8_decoder_graphs(contents, precision) is not None:
        return
    folder = ovr.cache_dir(cache)
    if contents.config.is_attention:
        from model.attention_runtime import ATTENTION_GRAPHS, attention_graph_key

        kinds = contents.config.member_kinds
        keys = [attention_graph_key(g, contents.model_id, contents.ensemble_combine, kinds) for g in ATTENTION_GRAPHS]
    else:
        keys = [step_graph_key(graph, contents.model_id, contents.ensemble_combine) for graph in STEP_GRAPHS]
    if not all(ovr.is_cached(folder, key) for key in keys):
        build_decoders(contents)


def build_decoder(contents: ArtifactContents) -> MergeDecoder:
    """The first (or only) decoder of a verified artifact with its weights loaded."""
    return build_decoders(contents)[0]


def build_step_model(
    contents: ArtifactContents,
    runtime: str = "tensorflow",
    cache: str | None = None,
    graph_irs: tuple[tuple[bytes, bytes], ...] | None = None,
) -> Any:
    """The artifact's step-wise decoder: its one decoder, or all members combined as it says.
    For an attention artifact on OpenVINO the decoders are built only when a graph is not cached;
    ``graph_irs``: its graphs as IR instead (``int8_decoder_graphs``; OpenVINO only)."""
    if graph_irs is not None and not (contents.config.is_attention and runtime == "openvino"):
        raise ValueError("decoder graphs given as IR need an attention decoder on OpenVINO")
    if contents.config.is_attention:
        from model.attention_runtime import OpenVinoAttentionStepModel

        def tensorflow_model() -> Any:
            from model.attention_decoder import AttentionStepModel

            return AttentionStepModel(build_decoders(contents), contents.ensemble_combine)

        if runtime == "openvino":
            return OpenVinoAttentionStepModel(
                tensorflow_model,
                contents.config.member_configs(),
                contents.ensemble_combine,
                contents.model_id,
                cache,
                graph_irs,
            )
        if runtime != "tensorflow":
            raise ValueError(f"decoder runtime must be tensorflow or openvino, not {runtime!r}")
        return tensorflow_model()
    return make_step_model(build_decoders(contents), runtime, contents.model_id, cache, contents.ensemble_combine)


def check_encoder_ready(contents: ArtifactContents, precision: str, runtime: str) -> None:
    """Refuse early (in the driver) an encoder that cannot be built: INT8 needs an artifact with
    an INT8 encoder and OpenVINO (no weights file); float32/bfloat16 need the weights."""
    from model.encoder import check_weights_available, choose_runtime

    if precision == "int8":
        choose_runtime(runtime, precision)  # refuses TensorFlow
        if contents.int8_encoder is None:
            raise ArtifactError(
                f"model artifact {contents.uri} has no INT8 encoder (--precision int8); build one "
                f"with: python -m training.quantize --model {contents.uri} ..."
            )
        return
    check_weights_available(contents.config.encoder.name, contents.encoder_weights)


def load_caption_model(
    uri: str,
    *,
    encoder_weights: str | None = None,
    expected_model_id: str | None = None,
    with_encoder: bool = True,
    precision: str = "float32",
    runtime: str = "auto",
    cache: str | None = None,
) -> CaptionModel:
    """Verify and load an artifact (see ``model.artifact``) into a CaptionModel. ``cache``: where
    converted OpenVINO graphs are kept (``model.openvino_runtime.cache_dir``; "none" for nowhere)."""
    contents = read_artifact(uri, expected_model_id=expected_model_id, encoder_weights=encoder_weights)
    if contents.config.is_attention:
        return _load_attention_model(contents, with_encoder, precision, runtime, cache)
    # The Keras decoders are built when a step graph is traced: for TensorFlow now, for OpenVINO
    # only on a cache miss (the cache key is the artifact's content hash, weights included).
    decoders = DecoderSource(
        contents.config.decoder, len(contents.decoder_weights_paths), lambda: build_decoders(contents)
    )
    encoder = _encoder(contents, precision, runtime, cache) if with_encoder else None
    return CaptionModel(
        encoder,
        decoders,
        contents.vocab,
        contents.model_id,
        contents.config,
        contents.decode_settings(),
        cache,
        contents.ensemble_combine,
    )


def _encoder(contents: ArtifactContents, precision: str, runtime: str, cache: str | None) -> ImageEncoder:
    """The artifact's encoder, returning what its decoder reads (pooled vector or spatial map)."""
    enc = contents.config.encoder
    encoder = ImageEncoder(
        enc.name,
        contents.encoder_weights,
        enc.image_size,
        precision=precision,
        runtime=runtime,
        cache=cache,
        int8_ir=contents.int8_encoder if precision == "int8" else None,
        spatial=contents.config.encoder_output == "map",
    )
    if encoder.feature_dim != contents.config.decoder.feature_dim:
        raise ArtifactError(
            f"encoder {enc.name} gives {encoder.feature_dim}-d features but the decoder of model "
            f"artifact {contents.uri} expects {contents.config.decoder.feature_dim}"
        )
    return encoder


def _load_attention_model(
    contents: ArtifactContents, with_encoder: bool, precision: str, runtime: str, cache: str | None
) -> CaptionModel:
    """An attention artifact's CaptionModel: the encoder returns the map; the decoder runs on the
    encoder's runtime (OpenVINO graphs from the cache need no TensorFlow), the INT8 path with the
    artifact's INT8 decoder graphs when it has them."""
    encoder = _encoder(contents, precision, runtime, cache) if with_encoder else None
    step_runtime = encoder.runtime if encoder is not None else "tensorflow"
    graph_irs = int8_decoder_graphs(contents, precision) if step_runtime == "openvino" else None
    step = build_step_model(contents, step_runtime, cache, graph_irs)
    return CaptionModel(
        encoder,
        None,
        contents.vocab,
        contents.model_id,
        contents.config,
        contents.decode_settings(),
        cache,
        contents.ensemble_combine,
        step_model=step,
    )
