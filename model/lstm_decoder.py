"""The merge CNN-LSTM caption decoder network, in its training, per-prefix and step-wise forms.

(The caption *search* over the step-wise form is ``model.caption_search``.)

One set of Keras layers serves three graphs:

* ``training_model``: whole captions with teacher forcing (the LSTM returns sequences and the
  image branch is added at every step), so one caption is one training example;
* ``build_prefix_model``: the classic tutorials' formulation (one example per prefix, the LSTM
  returns its last output) used to prove equivalence and as the benchmark baseline;
* ``KerasStepModel``: inference one word at a time carrying the LSTM state (im2txt style), so a
  caption of L words costs L LSTM steps; ``OpenVinoStepModel`` runs the same two traced
  graphs with OpenVINO (used with the OpenVINO encoder: half the per-step cost, and one thread
  pool in the process instead of two competing ones).

TensorFlow and Keras are imported where a graph is built or traced, not with this module: an
``OpenVinoStepModel`` whose graphs come from the cache never imports them (seconds of start-up).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from model.artifact_config import ENSEMBLE_COMBINE, DecoderConfig

if TYPE_CHECKING:  # annotations only; imported where graphs are built (see module docstring)
    import keras
    import tensorflow as tf


def combine_member_logprobs(logps: list[Any], combine: str) -> Any:
    """An ensemble's next-word log-probabilities from its members' (TensorFlow tensors):
    ``mean_logprob`` renormalises the mean of the log-probabilities (a geometric mean), any other
    ``ENSEMBLE_COMBINE`` value averages the probabilities."""
    import tensorflow as tf

    n = len(logps)
    if n == 1:
        return logps[0]
    if combine == "mean_logprob":
        return tf.nn.log_softmax(tf.add_n(logps) / n)
    return tf.reduce_logsumexp(tf.stack(logps), axis=0) - np.log(n)


def load_weights_strictly(keras_model: Any, path: str) -> None:
    """Load ``path`` into ``keras_model``; Keras only warns when a layer finds no weights in the
    file and keeps its random initialisation: here that is a ValueError."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keras_model.load_weights(path)
    skipped = [
        str(w.message) for w in caught if "Skipping" in str(w.message) or "freshly-initialized" in str(w.message)
    ]
    if skipped:
        raise ValueError(f"weights file does not cover every decoder layer: {skipped[0]}")


class MergeDecoder:
    """Owns the decoder layers; builds the graphs that share them."""

    def __init__(self, config: DecoderConfig) -> None:
        from keras import layers

        self.config = config
        c = config
        self.image_dropout = layers.Dropout(c.dropout, name="image_dropout")
        self.image_dense = [
            layers.Dense(u, activation="relu", name=f"image_dense_{i + 1}") for i, u in enumerate(c.image_dense)
        ]
        self.embedding = layers.Embedding(c.vocab_size, c.embedding_dim, mask_zero=True, name="word_embedding")
        self.word_dropout = layers.Dropout(c.dropout, name="word_dropout")
        self.lstm = layers.LSTM(c.units, return_sequences=True, name="caption_lstm")
        self.merge_dense = layers.Dense(c.units, activation="relu", name="merge_dense")
        self.word_probs = layers.Dense(c.vocab_size, activation="softmax", name="word_probs")
        self.training_model = self._build_training_model()

    def _image_branch(self, features: Any) -> Any:
        x = self.image_dropout(features)
        for dense in self.image_dense:
            x = dense(x)
        return x

    def _build_training_model(self) -> keras.Model:
        import keras
        from keras import layers

        c = self.config
        features = keras.Input((c.feature_dim,), name="features")
        words = keras.Input((None,), dtype="int32", name="caption_in")
        image = self._image_branch(features)
        seq = self.lstm(self.word_dropout(self.embedding(words)))
        merged = layers.Add(name="merge")([seq, layers.Reshape((1, c.units), name="image_per_step")(image)])
        probs = self.word_probs(self.merge_dense(merged))
        return keras.Model([features, words], probs, name="merge_decoder")

    def count_params(self) -> int:
        return int(self.training_model.count_params())

    def caption_probs(self, features: Any, words: Any) -> Any:
        """Next-word probabilities ``(rows, steps, vocab)`` of captions ``words`` (no dropout)."""
        return self.training_model([features, words], training=False)

    def save_weights(self, path: str) -> None:
        """Write the decoder weights (HDF5 ``.weights.h5``; no code, no pickle). Saved from an
        uncompiled twin, because Keras also writes a compiled model's optimizer state."""
        twin = MergeDecoder(self.config)
        twin.training_model.set_weights(self.training_model.get_weights())
        twin.training_model.save_weights(path)

    def load_weights(self, path: str) -> None:
        """Load weights strictly (``load_weights_strictly``)."""
        load_weights_strictly(self.training_model, path)

    def step_model(
        self, runtime: str = "tensorflow", cache_identity: str | None = None, cache: str | None = None
    ) -> KerasStepModel:
        """The step-wise inference graph run by TensorFlow or OpenVINO (``runtime``); an OpenVINO
        graph is cached under ``cache_identity`` (the artifact's model_id) when given."""
        return make_step_model([self], runtime, cache_identity, cache)


def make_step_model(
    members: Sequence[MergeDecoder] | DecoderSource,
    runtime: str = "tensorflow",
    cache_identity: str | None = None,
    cache: str | None = None,
    combine: str = "mean_logprob",
) -> KerasStepModel:
    """One step-wise graph over one decoder or an ensemble of decoders (see ``KerasStepModel``).
    A ``DecoderSource`` is built here for TensorFlow, and only on a cache miss for OpenVINO."""
    if runtime == "openvino":
        return OpenVinoStepModel(members, cache_identity, cache, combine)
    if runtime != "tensorflow":
        raise ValueError(f"decoder runtime must be tensorflow or openvino, not {runtime!r}")
    return KerasStepModel(members.decoders() if isinstance(members, DecoderSource) else members, combine)


def build_prefix_model(config: DecoderConfig) -> keras.Model:
    """The classic tutorial formulation: input is a (pre-)padded prefix, output the next word.

    Layer names match ``MergeDecoder`` so weights can be copied with ``copy_weights``.
    """
    import keras
    from keras import layers

    c = config
    features = keras.Input((c.feature_dim,), name="features")
    prefix = keras.Input((c.max_length,), dtype="int32", name="prefix")
    x = layers.Dropout(c.dropout, name="image_dropout")(features)
    for i, u in enumerate(c.image_dense):
        x = layers.Dense(u, activation="relu", name=f"image_dense_{i + 1}")(x)
    e = layers.Embedding(c.vocab_size, c.embedding_dim, mask_zero=True, name="word_embedding")(prefix)
    e = layers.Dropout(c.dropout, name="word_dropout")(e)
    h = layers.LSTM(c.units, name="caption_lstm")(e)
    merged = layers.Add(name="merge")([h, x])
    out = layers.Dense(c.units, activation="relu", name="merge_dense")(merged)
    out = layers.Dense(c.vocab_size, activation="softmax", name="word_probs")(out)
    return keras.Model([features, prefix], out, name="prefix_decoder")


def copy_weights(source: keras.Model, target: keras.Model) -> None:
    """Copy weights layer by layer, matching layer names."""
    src = {layer.name: layer for layer in source.layers if layer.weights}
    for layer in target.layers:
        if layer.weights:
            layer.set_weights(src[layer.name].get_weights())


@dataclass(frozen=True)
class DecoderSource:
    """The decoders of a step model, built when a graph is first traced: their config and number
    are known from the artifact, but the Keras layers and weights (slow to build) are
    not needed when OpenVINO step graphs come from the cache (``OpenVinoStepModel``)."""

    config: DecoderConfig
    count: int
    build: Callable[[], Sequence[MergeDecoder]]

    def decoders(self) -> list[MergeDecoder]:
        """Build them, checking that they are what the config and count promised."""
        built = list(self.build())
        if len(built) != self.count or any(d.config != self.config for d in built):
            raise ValueError(f"expected {self.count} decoders with config {self.config}, got {len(built)}")
        return built


class KerasStepModel:
    """Inference graph run by TensorFlow: image embedding once, then one LSTM step per word; it
    implements ``model.caption_search.StepModel`` (``OpenVinoStepModel`` runs the same graphs on OpenVINO).

    With several decoders (an ensemble of the same sizes, trained with different seeds) every
    member runs inside the same graph: the state holds the members' LSTM states side by side
    (``rows x members*units``) and a step returns the members' next-word log-probabilities
    combined: ``mean_logprob`` (renormalised geometric mean of the distributions) or
    ``mean_prob`` (arithmetic mean). One decoder gives exactly its own log-softmax."""

    def __init__(
        self, members: MergeDecoder | Sequence[MergeDecoder] | DecoderSource, combine: str = "mean_logprob"
    ) -> None:
        """``members``: the decoders, or a ``DecoderSource`` that builds them on first trace."""
        if isinstance(members, DecoderSource):
            source = members
        else:
            built = [members] if isinstance(members, MergeDecoder) else list(members)
            if not built:
                raise ValueError("a step-wise decoder needs at least one decoder")
            if len({m.config for m in built}) != 1:
                raise ValueError("ensemble members must have the same decoder config")
            source = DecoderSource(built[0].config, len(built), lambda: built)
        if combine not in ENSEMBLE_COMBINE:
            raise ValueError(f"ensemble combine must be one of {ENSEMBLE_COMBINE}, not {combine!r}")
        self._source = source
        self.combine = combine
        self.width = source.config.units * source.count

    @functools.cached_property
    def _image(self) -> Any:
        """The image projection as a tf.function (TensorFlow is imported here, on first use)."""
        import tensorflow as tf

        spec = [tf.TensorSpec([None, self._source.config.feature_dim], tf.float32)]
        return tf.function(self.project_image, input_signature=spec)

    @functools.cached_property
    def _step(self) -> Any:
        """One step as a tf.function (TensorFlow is imported here, on first use)."""
        import tensorflow as tf

        w = self.width
        return tf.function(
            self.step_tensors,
            input_signature=[
                tf.TensorSpec([None], tf.int32),
                tf.TensorSpec([None, w], tf.float32),
                tf.TensorSpec([None, w], tf.float32),
                tf.TensorSpec([None, w], tf.float32),
            ],
        )

    @functools.cached_property
    def _members(self) -> list[MergeDecoder]:
        """The member decoders, built by the source on first use (tracing a graph)."""
        return self._source.decoders()

    @property
    def members(self) -> int:
        return self._source.count

    def member_decoders(self) -> list[MergeDecoder]:
        """The member decoders (built now if they were not yet)."""
        return self._members

    def project_image(self, features: tf.Tensor) -> tf.Tensor:
        """The image branch of every member, as tensors (differentiable; SCST trains through it)."""
        import tensorflow as tf

        return tf.concat([m._image_branch(features) for m in self._members], axis=1)

    def step_tensors(self, word_ids: tf.Tensor, h: tf.Tensor, c: tf.Tensor, image: tf.Tensor):
        """One step as tensors: (log-probabilities, h, c); differentiable (SCST trains through it)."""
        import tensorflow as tf

        n = len(self._members)
        hs, cs, images = tf.split(h, n, axis=1), tf.split(c, n, axis=1), tf.split(image, n, axis=1)
        logps, new_h, new_c = [], [], []
        for d, h1, c1, img in zip(self._members, hs, cs, images):
            emb = tf.gather(d.embedding.embeddings, word_ids)  # no mask: every step word is real
            out, (h2, c2) = d.lstm.cell(emb, [h1, c1], training=False)
            hidden = d.merge_dense(out + img)
            logps.append(tf.nn.log_softmax(tf.matmul(hidden, d.word_probs.kernel) + d.word_probs.bias))
            new_h.append(h2)
            new_c.append(c2)
        logp = combine_member_logprobs(logps, self.combine)
        return logp, tf.concat(new_h, axis=1), tf.concat(new_c, axis=1)

    def initial_state(self, features: np.ndarray) -> tuple[np.ndarray, ...]:
        image = self._image(np.asarray(features, dtype=np.float32)).numpy()
        zeros = np.zeros((len(features), self.width), dtype=np.float32)
        return (zeros, zeros.copy(), image)

    def step(self, word_ids: np.ndarray, state: tuple[np.ndarray, ...]):
        h, c, image = state
        logp, h2, c2 = self._step(np.asarray(word_ids, dtype=np.int32), h, c, image)
        return logp.numpy(), (h2.numpy(), c2.numpy(), image)


STEP_GRAPHS = ("decoder-image", "decoder-step")


def step_graph_key(graph: str, cache_identity: str, combine: str) -> str:
    """The OpenVINO cache key of one of an artifact's step graphs (``STEP_GRAPHS``);
    ``cache_identity`` is the artifact's model_id (a hash of its files, weights included)."""
    from model import openvino_runtime as ovr

    return ovr.compiled_graph_key(graph=graph, model_id=cache_identity, combine=combine)


class OpenVinoStepModel(KerasStepModel):
    """``KerasStepModel``'s traced graphs converted to OpenVINO (same weights, same maths)."""

    def __init__(
        self,
        members: MergeDecoder | Sequence[MergeDecoder] | DecoderSource,
        cache_identity: str | None,
        cache: str | None = None,
        combine: str = "mean_logprob",
    ) -> None:
        from model import openvino_runtime as ovr

        super().__init__(members, combine)
        folder = ovr.cache_dir(cache)
        key = (
            (lambda graph: None)
            if cache_identity is None
            else (lambda graph: step_graph_key(graph, cache_identity, combine))
        )

        def trace(name: str) -> Any:
            # Build the decoders before tracing, so that their errors (an ArtifactError for
            # weights that do not fit) reach the caller as they are, not wrapped by autograph.
            # Only on a cache miss: the tf.function (and TensorFlow) is made inside.
            return lambda: (self.member_decoders(), getattr(self, name).get_concrete_function())[1]

        self._run = ovr.ThreadLocalRequests(
            [
                ovr.compile_traced(trace("_image"), "float32", key("decoder-image"), folder),
                ovr.compile_traced(trace("_step"), "float32", key("decoder-step"), folder),
            ]
        )

    def initial_state(self, features: np.ndarray) -> tuple[np.ndarray, ...]:
        (image,) = self._run.run(0, [np.asarray(features, dtype=np.float32)])
        zeros = np.zeros((len(features), self.width), dtype=np.float32)
        return (zeros, zeros.copy(), image)

    def step(self, word_ids: np.ndarray, state: tuple[np.ndarray, ...]):
        h, c, image = state
        logp, h2, c2 = self._run.run(1, [np.asarray(word_ids, dtype=np.int32), h, c, image])
        return logp, (h2, c2, image)
