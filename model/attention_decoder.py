"""Attention caption decoders over the encoder's spatial map, in training and step-wise forms.

(The caption *search* over the step-wise form is ``model.caption_search``; the merge decoder over
the pooled vector is ``model.lstm_decoder``.) One network shape, two kinds (``AttentionConfig``),
after Lu et al. 2017, "Knowing when to look: adaptive attention via a visual sentinel":

* the map's R cells are projected once per image: ``v_i = relu(W_a a_i)`` (values) and their
  attention keys ``W_v v_i``; the global vector ``v_g = relu(W_b mean(a))``;
* the LSTM reads ``x_t = [embedding(w_t); v_g]`` at every step;
* its new hidden state ``h_t`` queries the cells with additive attention
  ``z_i = w^T tanh(W_v v_i + W_g h_t)``; context ``c_t = sum_i softmax(z)_i v_i``;
* ``adaptive`` adds a visual sentinel ``s_t = sigmoid(W_x x_t + W_h h_{t-1}) * tanh(m_t)``
  (``m_t`` the LSTM memory) as an (R+1)-th candidate, ``c_t = sum_i alpha_i v_i + beta s_t``, so
  the decoder can fall back on its language model for words with no visual evidence;
* the next word is ``softmax(W_p dropout(c_t + h_t))``.

``soft`` is soft attention (Show-Attend-Tell) queried by ``h_t`` rather than SAT's ``h_{t-1}``
(Lu et al.'s "spatial attention" baseline): the attention then sits outside the recurrence, so a
training step runs the LSTM over whole captions and attends for all steps at once, and the two
kinds differ by the sentinel only.

Training batches are images with all their captions (``(images, captions, words)`` ids): the map is
projected once per image and shared by its captions. ``AttentionStepModel`` implements
``model.caption_search.StepModel`` (one or several members in one graph, as
``model.lstm_decoder.KerasStepModel``); its state carries the projected map once per image.
``model.attention_runtime`` runs the same two graphs on OpenVINO.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from model.artifact_config import ENSEMBLE_COMBINE, AttentionConfig
from model.attention_runtime import spatial_maps
from model.lstm_decoder import combine_member_logprobs, load_weights_strictly
from model.step_model import PerImage


class _MemoryCell(layers.Layer):
    """An LSTM cell whose per-step output is ``[h_t, m_t]``: the sentinel needs the memory too."""

    def __init__(self, units: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cell = layers.LSTMCell(units, name="cell")
        self.state_size = [units, units]
        self.output_size = 2 * units

    def build(self, input_shape: Any) -> None:
        self.cell.build(input_shape)
        self.built = True

    def call(self, inputs: Any, states: Any, training: bool = False) -> tuple[Any, list[Any]]:
        _, (h, m) = self.cell(inputs, states, training=training)
        return tf.concat([h, m], axis=-1), [h, m]


class AttentionNetwork(keras.Model):
    """The layers and the teacher-forced training graph: inputs ``(maps, words)`` with maps
    ``(images, R, feature_dim)`` (any float dtype) and words ``(images, captions, steps)``;
    output next-word probabilities ``(images, captions, steps, vocab)``."""

    def __init__(self, config: AttentionConfig, **kwargs: Any) -> None:
        super().__init__(name=f"{config.kind}_attention_decoder", **kwargs)
        c = self.config = config
        self.map_dropout = layers.Dropout(c.dropout, name="map_dropout")
        self.region_dense = layers.Dense(c.units, activation="relu", name="region_dense")
        self.region_keys = layers.Dense(c.attention_dim, use_bias=False, name="region_keys")
        self.global_dense = layers.Dense(c.embedding_dim, activation="relu", name="global_dense")
        self.embedding = layers.Embedding(c.vocab_size, c.embedding_dim, name="word_embedding")
        self.word_dropout = layers.Dropout(c.dropout, name="word_dropout")
        self.memory_cell = _MemoryCell(c.units, name="lstm_cell")
        self.lstm = layers.RNN(self.memory_cell, return_sequences=True, name="caption_lstm")
        self.query = layers.Dense(c.attention_dim, use_bias=False, name="attention_query")
        self.score = layers.Dense(1, use_bias=False, name="attention_score")
        self.adaptive = c.kind == "adaptive"
        if self.adaptive:
            self.sentinel_input = layers.Dense(c.units, name="sentinel_input")
            self.sentinel_hidden = layers.Dense(c.units, use_bias=False, name="sentinel_hidden")
            self.sentinel_key = layers.Dense(c.attention_dim, use_bias=False, name="sentinel_key")
        self.output_dropout = layers.Dropout(c.dropout, name="output_dropout")
        self.word_logits = layers.Dense(c.vocab_size, name="word_logits")

    def encode_image(self, maps: tf.Tensor, training: bool = False) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """(values ``(n, R, units)``, keys ``(n, R, attention_dim)``, global ``(n, embedding_dim)``)."""
        maps = self.map_dropout(tf.cast(maps, tf.float32), training=training)
        values = self.region_dense(maps)
        return values, self.region_keys(values), self.global_dense(tf.reduce_mean(maps, axis=1))

    def sentinel(self, x: tf.Tensor, h_prev: tf.Tensor, memory: tf.Tensor) -> tf.Tensor:
        return tf.sigmoid(self.sentinel_input(x) + self.sentinel_hidden(h_prev)) * tf.tanh(memory)

    def attend(self, values: tf.Tensor, keys: tf.Tensor, h: tf.Tensor, sentinel: tf.Tensor | None) -> tf.Tensor:
        """Context of queries ``h`` ``(n, q, units)`` over one image's cells each: ``(n, q, units)``."""
        # expand_dims and a batched matmul rather than slicing with None and einsum: OpenVINO
        # copies a None-slice and lowers this einsum with a broadcast multiply (same maths)
        query = self.query(h)  # (n, q, A)
        z = tf.squeeze(self.score(tf.tanh(tf.expand_dims(keys, 1) + tf.expand_dims(query, 2))), -1)  # (n, q, R)
        if sentinel is None:
            return tf.matmul(tf.nn.softmax(z, axis=-1), values)
        z_s = self.score(tf.tanh(self.sentinel_key(sentinel) + query))  # (n, q, 1)
        alpha = tf.nn.softmax(tf.concat([z, z_s], axis=-1), axis=-1)
        return tf.matmul(alpha[..., :-1], values) + alpha[..., -1:] * sentinel

    def call(self, inputs: Sequence[tf.Tensor], training: bool = False) -> tf.Tensor:
        maps, words = inputs
        words = tf.cast(words, tf.int32)
        shape = tf.shape(words)
        n, k, t = shape[0], shape[1], shape[2]
        values, keys, image = self.encode_image(maps, training)
        flat = tf.reshape(words, [n * k, t])
        emb = self.word_dropout(self.embedding(flat), training=training)
        x = tf.concat([emb, tf.broadcast_to(tf.repeat(image, k, axis=0)[:, None], tf.shape(emb))], axis=-1)
        h, memory = tf.split(self.lstm(x, training=training), 2, axis=-1)  # (n*k, t, units) each
        sentinel = None
        if self.adaptive:
            h_prev = tf.concat([tf.zeros_like(h[:, :1]), h[:, :-1]], axis=1)
            sentinel = tf.reshape(self.sentinel(x, h_prev, memory), [n, k * t, -1])
        hq = tf.reshape(h, [n, k * t, -1])
        context = self.attend(values, keys, hq, sentinel)
        logits = self.word_logits(self.output_dropout(context + hq, training=training))
        return tf.reshape(tf.nn.softmax(logits), [n, k, t, self.config.vocab_size])

    def step_tensors(
        self, word_ids: tf.Tensor, h: tf.Tensor, m: tf.Tensor, values: tf.Tensor, keys: tf.Tensor, image: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """One inference step: (log-probabilities, h, m)."""
        x = tf.concat([tf.gather(self.embedding.embeddings, word_ids), image], axis=-1)
        _, (h2, m2) = self.memory_cell.cell(x, [h, m], training=False)
        sentinel = self.sentinel(x, h, m2)[:, None] if self.adaptive else None
        context = self.attend(values, keys, h2[:, None], sentinel)[:, 0]
        return tf.nn.log_softmax(self.word_logits(context + h2)), h2, m2

    def image_gates(self, image: tf.Tensor) -> tf.Tensor:
        """The image's share of the LSTM's input gates, ``v_g`` times its kernel rows: the same at
        every step, so computed once per image (``AttentionStepModel.project_image_gates``)."""
        kernel = self.memory_cell.cell.kernel
        return tf.matmul(image, kernel[self.config.embedding_dim :])

    def word_gates(self) -> tf.Tensor:
        """Every word's share of the LSTM's input gates with the bias, ``(vocab, 4 units)``: built
        from the weights inside the graph, a constant once OpenVINO folds it."""
        cell = self.memory_cell.cell
        return tf.matmul(self.embedding.embeddings, cell.kernel[: self.config.embedding_dim]) + cell.bias

    def step_from_gates(
        self,
        word_ids: tf.Tensor,
        h: tf.Tensor,
        m: tf.Tensor,
        values: tf.Tensor,
        keys: tf.Tensor,
        image: tf.Tensor | None,
        image_gates: tf.Tensor,
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """``step_tensors``' maths with the LSTM's input product split by linearity,
        ``[e; v_g] W = e W_e + v_g W_g``: the word part looked up from ``word_gates``, the image part
        given (``image_gates``), so a step multiplies only ``h`` by the recurrent kernel. Keras'
        LSTMCell gate order and activations (i, f, c, o; sigmoid and tanh).

        ``values`` and ``keys`` are per row, or per image when the rows are grouped by image with
        the same number of rows each (image-major; ``word_ids``, ``h``, ``m``, ``image`` and
        ``image_gates`` stay per row): each image's rows then attend over its cells without a
        per-row copy of them."""
        cell = self.memory_cell.cell
        z = tf.gather(self.word_gates(), word_ids) + image_gates + tf.matmul(h, cell.recurrent_kernel)
        zi, zf, zc, zo = tf.split(z, 4, axis=-1)
        m2 = tf.sigmoid(zf) * m + tf.sigmoid(zi) * tf.tanh(zc)
        h2 = tf.sigmoid(zo) * tf.tanh(m2)
        # rows grouped by image: (images, rows per image, units) queries over each image's cells
        grouped = tf.stack([tf.shape(values)[0], -1, self.config.units])
        sentinel = None
        if self.adaptive:
            x = tf.concat([tf.gather(self.embedding.embeddings, word_ids), image], axis=-1)
            sentinel = tf.reshape(self.sentinel(x, h, m2), grouped)
        context = tf.reshape(self.attend(values, keys, tf.reshape(h2, grouped), sentinel), tf.shape(h2))
        return tf.nn.log_softmax(self.word_logits(context + h2)), h2, m2


class AttentionDecoder:
    """Owns an ``AttentionNetwork`` (built on creation, so weights load strictly); what
    ``training.fit.fit_member`` trains (``training_model``, ``config``, weights files)."""

    def __init__(self, config: AttentionConfig) -> None:
        self.config = config
        self.training_model = AttentionNetwork(config)
        self.training_model(
            (np.zeros((1, config.regions, config.feature_dim), np.float32), np.zeros((1, 1, 2), np.int32))
        )

    def count_params(self) -> int:
        return int(self.training_model.count_params())

    def caption_probs(self, maps: Any, words: Any) -> Any:
        """Next-word probabilities ``(rows, steps, vocab)`` of one caption per map (no dropout)."""
        return self.training_model((maps, words[:, None]), training=False)[:, 0]

    def save_weights(self, path: str) -> None:
        """Write the weights (HDF5 ``.weights.h5``; no code, no pickle) from an uncompiled twin
        (Keras also writes a compiled model's optimizer state)."""
        twin = AttentionDecoder(self.config)
        twin.training_model.set_weights(self.training_model.get_weights())
        twin.training_model.save_weights(path)

    def load_weights(self, path: str) -> None:
        """Load weights strictly: a layer the file does not cover is an error, not a warning."""
        load_weights_strictly(self.training_model, path)

    def step_model(self, runtime: str = "tensorflow") -> AttentionStepModel:
        """The step-wise graph of this decoder alone, run by TensorFlow or OpenVINO."""
        return make_attention_step_model([self], runtime)


class AttentionStepModel:
    """Step-wise inference run by TensorFlow over one decoder or an ensemble (same sizes; soft and
    adaptive members may be mixed: a diverse ensemble): the
    map is projected once (``initial_state``), then one LSTM step and one attention per word.

    State: ``(h, m, image_index, PerImage((values, keys, image)))``: the LSTM state per row, the
    row's image, and the projected map once per image (a beam's rows share it; the step graph
    gathers it by ``image_index``, so neither the search's row selection nor the step's inputs
    copy it per row). Members sit side by side on the last axis; a step returns their next-word
    log-probabilities combined as in ``KerasStepModel`` (``mean_logprob``: renormalised geometric
    mean, ``mean_prob``: arithmetic mean). ``project_image`` and ``step_tensors`` (per-row inputs)
    are what SCST differentiates through."""

    def __init__(self, members: Sequence[AttentionDecoder], combine: str = "mean_logprob") -> None:
        members = list(members)
        if not members:
            raise ValueError("a step-wise decoder needs at least one decoder")
        if len({replace(m.config, kind="soft", dropout=0.0) for m in members}) != 1:
            raise ValueError("ensemble members must have the same decoder sizes (their kinds may differ)")
        if combine not in ENSEMBLE_COMBINE:
            raise ValueError(f"ensemble combine must be one of {ENSEMBLE_COMBINE}, not {combine!r}")
        self.config = c = members[0].config
        self.combine = combine
        self._networks = [m.training_model for m in members]
        n = len(members)
        self.width = n * c.units  # the recurrent state's width
        f32 = tf.float32
        self._image = tf.function(
            self.project_image, input_signature=[tf.TensorSpec([None, c.regions, c.feature_dim], f32)]
        )
        self._step = tf.function(
            self.step_by_image,
            input_signature=[
                tf.TensorSpec([None], tf.int32),
                tf.TensorSpec([None, n * c.units], f32),
                tf.TensorSpec([None, n * c.units], f32),
                tf.TensorSpec([None], tf.int32),
                tf.TensorSpec([None, c.regions, n * c.units], f32),
                tf.TensorSpec([None, c.regions, n * c.attention_dim], f32),
                tf.TensorSpec([None, n * c.embedding_dim], f32),
            ],
        )

    @property
    def members(self) -> int:
        return len(self._networks)

    def folded_graphs(self) -> tuple[Any, Any]:
        """The two graphs OpenVINO runs (``model.attention_runtime``): the projection, giving per
        image the values, keys and each member's image gates (and the global vector when a member
        is adaptive: its sentinel reads it), and a step that adds the gates
        (``AttentionNetwork.step_from_gates``; the word gates fold into a constant on conversion),
        for rows grouped by image, the same number each, given the per-image entries of those
        images: each image's rows attend over its map without a per-row copy of it (that gather
        was a fifth of a step). Same captions as ``_image``/``_step`` up to float rounding (tested)."""
        c, n, f32 = self.config, self.members, tf.float32
        adaptive = any(net.adaptive for net in self._networks)

        def project(maps: tf.Tensor) -> tuple[tf.Tensor, ...]:
            values, keys, image = self.project_image(maps)
            gates = [net.image_gates(g) for net, g in zip(self._networks, tf.split(image, n, axis=-1))]
            return (values, keys, tf.concat(gates, axis=-1), *((image,) if adaptive else ()))

        def step(word_ids, h, m, values, keys, gates, image=None) -> tuple[tf.Tensor, ...]:
            rows_per_image = tf.shape(h)[0] // tf.shape(values)[0]  # the image gates and vector go per row
            gates = tf.split(tf.repeat(gates, rows_per_image, axis=0), n, axis=-1)
            image = tf.split(tf.repeat(image, rows_per_image, axis=0), n, axis=-1) if adaptive else [None] * n
            values, keys = tf.split(values, n, axis=-1), tf.split(keys, n, axis=-1)
            parts = zip(self._networks, tf.split(h, n, axis=-1), tf.split(m, n, axis=-1), values, keys, image, gates)
            return self._combined([net.step_from_gates(word_ids, *p) for net, *p in parts])

        per_image = [
            tf.TensorSpec([None, c.regions, n * c.units], f32),
            tf.TensorSpec([None, c.regions, n * c.attention_dim], f32),
            tf.TensorSpec([None, n * 4 * c.units], f32),
            *([tf.TensorSpec([None, n * c.embedding_dim], f32)] if adaptive else []),
        ]
        rows = [tf.TensorSpec([None], tf.int32), *[tf.TensorSpec([None, n * c.units], f32)] * 2]
        return (
            tf.function(project, input_signature=[tf.TensorSpec([None, c.regions, c.feature_dim], f32)]),
            tf.function(step, input_signature=[*rows, *per_image]),
        )

    def project_image(self, maps: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        parts = [net.encode_image(maps) for net in self._networks]
        return tuple(tf.concat([p[i] for p in parts], axis=-1) for i in range(3))

    def step_tensors(
        self, word_ids: tf.Tensor, h: tf.Tensor, m: tf.Tensor, values: tf.Tensor, keys: tf.Tensor, image: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        n = len(self._networks)
        outs = [
            net.step_tensors(word_ids, *parts)
            for net, *parts in zip(self._networks, *(tf.split(x, n, axis=-1) for x in (h, m, values, keys, image)))
        ]
        return self._combined(outs)

    def _combined(self, outs: Sequence[tuple[Any, Any, Any]]) -> tuple[Any, Any, Any]:
        """The members' (log-probabilities, h, m) of one step as one: log-probabilities combined,
        states side by side."""
        logp = combine_member_logprobs([o[0] for o in outs], self.combine)
        return logp, tf.concat([o[1] for o in outs], axis=-1), tf.concat([o[2] for o in outs], axis=-1)

    def step_by_image(
        self,
        word_ids: tf.Tensor,
        h: tf.Tensor,
        m: tf.Tensor,
        image_index: tf.Tensor,
        values: tf.Tensor,
        keys: tf.Tensor,
        image: tf.Tensor,
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """``step_tensors`` with the projected map given once per image and gathered per row."""
        return self.step_tensors(word_ids, h, m, *(tf.gather(x, image_index) for x in (values, keys, image)))

    def initial_state(self, features: np.ndarray) -> tuple[Any, ...]:
        """``features``: spatial maps ``(n, h, w, feature_dim)`` or ``(n, regions, feature_dim)``."""
        c = self.config
        maps = spatial_maps(features, c)
        projected = PerImage(t.numpy() for t in self._image(maps))
        zeros = np.zeros((len(maps), self.members * c.units), np.float32)
        return zeros, zeros.copy(), np.arange(len(maps), dtype=np.int32), projected

    def step(self, word_ids: np.ndarray, state: tuple[Any, ...]) -> tuple[np.ndarray, tuple[Any, ...]]:
        h, m, image_index, projected = state
        logp, h2, m2 = self._step(np.asarray(word_ids, np.int32), h, m, image_index, *projected)
        return logp.numpy(), (h2.numpy(), m2.numpy(), image_index, projected)


def make_attention_step_model(
    members: Sequence[AttentionDecoder],
    runtime: str = "tensorflow",
    combine: str = "mean_logprob",
    cache_identity: str | None = None,
    cache: str | None = None,
) -> Any:
    """One step-wise graph over one or several attention decoders, run by ``runtime``
    (``AttentionStepModel``, or ``model.attention_runtime.OpenVinoAttentionStepModel``)."""
    if runtime == "openvino":
        from model.attention_runtime import OpenVinoAttentionStepModel

        return OpenVinoAttentionStepModel(
            lambda: AttentionStepModel(members, combine), [m.config for m in members], combine, cache_identity, cache
        )
    if runtime != "tensorflow":
        raise ValueError(f"decoder runtime must be tensorflow or openvino, not {runtime!r}")
    return AttentionStepModel(members, combine)
