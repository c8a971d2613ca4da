"""Step-wise attention decoding on OpenVINO, importing TensorFlow only when a graph must be converted.

``model.attention_decoder`` holds the Keras network and its TensorFlow step model
(``AttentionStepModel``); importing it imports TensorFlow (seconds). The pipeline's OpenVINO path
needs the two traced graphs (map projection, one step) only once: converted, they are kept in the
OpenVINO cache under a key made of the artifact's content hash, the members' kinds and the
ensemble combination, and a later process compiles them from there without TensorFlow.
``OpenVinoAttentionStepModel`` takes a factory of the TensorFlow step model, called only on a
cache miss.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from model.artifact_config import ENSEMBLE_COMBINE, AttentionConfig
from model.step_model import PerImage

# "gates": the LSTM's input product split per word and per image; "grouped": the step takes rows
# grouped by image, as many each, and the map of those images once each
ATTENTION_GRAPHS = ("attention-image-gates", "attention-step-gates-grouped")


def spatial_maps(features: np.ndarray, config: AttentionConfig) -> np.ndarray:
    """``features`` (spatial maps ``(n, h, w, feature_dim)`` or ``(n, regions, feature_dim)``) as
    float32 ``(n, regions, feature_dim)``; maps of another shape are refused (ValueError)."""
    maps = np.asarray(features, np.float32)
    if maps.ndim < 3 or maps.shape[-1] != config.feature_dim or int(np.prod(maps.shape[1:-1])) != config.regions:
        raise ValueError(f"expected spatial maps of {config.regions} cells x {config.feature_dim}, got {maps.shape}")
    return maps.reshape(len(maps), config.regions, config.feature_dim)


def attention_graph_key(graph: str, cache_identity: str, combine: str, kinds: Sequence[str]) -> str:
    """The OpenVINO cache key of one of the step graphs (``ATTENTION_GRAPHS``) of the members
    ``kinds`` of artifact ``cache_identity`` (its model_id: a hash of its files, weights included)."""
    from model import openvino_runtime as ovr

    return ovr.compiled_graph_key(graph=graph, model_id=cache_identity, combine=combine, kinds=list(kinds))


class OpenVinoAttentionStepModel:
    """``model.attention_decoder.AttentionStepModel``'s two graphs run by OpenVINO on the CPU (same
    weights, same maths); implements ``model.caption_search.StepModel``.

    ``tensorflow_model`` builds the TensorFlow step model (members and combination); it is called
    only when a graph is not in the cache. ``configs`` are the members' configs (their kinds),
    ``cache_identity`` keys the converted graphs (``None``: converted on every load); ``graph_irs``:
    the graphs as OpenVINO IR instead (the INT8 path's, with INT8 weights, from the artifact), in
    ``ATTENTION_GRAPHS`` order: then nothing is traced."""

    def __init__(
        self,
        tensorflow_model: Callable[[], Any],
        configs: Sequence[AttentionConfig],
        combine: str = "mean_logprob",
        cache_identity: str | None = None,
        cache: str | None = None,
        graph_irs: Sequence[tuple[bytes, bytes]] | None = None,
    ) -> None:
        from model import openvino_runtime as ovr

        if not configs:
            raise ValueError("a step-wise decoder needs at least one decoder")
        if combine not in ENSEMBLE_COMBINE:
            raise ValueError(f"ensemble combine must be one of {ENSEMBLE_COMBINE}, not {combine!r}")
        self.config = configs[0]
        self.members = len(configs)
        self.combine = combine
        self.width = self.members * self.config.units
        folder = ovr.cache_dir(cache)
        kinds = [c.kind for c in configs]
        graphs = functools.cache(lambda: tensorflow_model().folded_graphs())

        def key(graph: str) -> str | None:
            return None if cache_identity is None else attention_graph_key(graph, cache_identity, combine, kinds)

        def compiled(i: int) -> Any:
            trace = lambda: graphs()[i].get_concrete_function()  # noqa: E731 - called on a cache miss only
            return ovr.compile_traced(trace, "float32", key(ATTENTION_GRAPHS[i]), folder)

        if graph_irs is not None and len(graph_irs) != len(ATTENTION_GRAPHS):
            raise ValueError(f"expected {len(ATTENTION_GRAPHS)} attention graphs, got {len(graph_irs)}")
        if graph_irs is not None:
            self._run = ovr.ThreadLocalRequests([ovr.compile_ir(*ir) for ir in graph_irs])
        else:
            self._run = ovr.ThreadLocalRequests([compiled(i) for i in range(len(ATTENTION_GRAPHS))])
        self._live = threading.local()  # the per-image entries of the images last stepped

    def initial_state(self, features: np.ndarray) -> tuple[Any, ...]:
        """``features``: spatial maps ``(n, h, w, feature_dim)`` or ``(n, regions, feature_dim)``;
        the state is ``AttentionStepModel``'s with the per-image entries of
        ``AttentionStepModel.folded_graphs`` (values, keys, image gates, [global vector])."""
        maps = spatial_maps(features, self.config)
        projected = PerImage(self._run.run(0, [maps]))
        zeros = np.zeros((len(maps), self.width), np.float32)
        return zeros, zeros.copy(), np.arange(len(maps), dtype=np.int32), projected

    def step(self, word_ids: np.ndarray, state: tuple[Any, ...]) -> tuple[np.ndarray, tuple[Any, ...]]:
        h, m, image_index, projected = state
        word_ids = np.asarray(word_ids, np.int32)
        images = grouped_images(image_index)
        # rows with different numbers per image (rare: endings took a beam's places): one group per row
        entries = self._entries_of(projected, image_index if images is None else images)
        logp, h2, m2 = self._run.run(1, [word_ids, h, m, *entries])
        return logp, (h2, m2, image_index, projected)

    def _entries_of(self, projected: PerImage, images: np.ndarray) -> Sequence[np.ndarray]:
        """The per-image entries of ``images`` (one group of rows each): ``projected`` itself when
        they are all its images in order, else a copy of their rows, kept for the next steps (the
        live images change only when one finishes)."""
        if len(images) == len(projected[0]) and np.array_equal(images, np.arange(len(images))):
            return projected
        last = getattr(self._live, "last", None)
        if last is not None and last[0] is projected and np.array_equal(last[1], images):
            return last[2]
        entries = [x[images] for x in projected]
        self._live.last = (projected, images, entries)
        return entries


def grouped_images(image_index: np.ndarray) -> np.ndarray | None:
    """The images of rows grouped by image with the same number of rows each (``image_index``
    sorted, as the search keeps it), in order; None when the images have different numbers of rows."""
    n = len(image_index)
    if n == 0:
        return None
    starts = np.flatnonzero(np.diff(image_index)) + 1
    per_image = starts[0] if len(starts) else n
    if n % per_image or np.any(np.diff(starts, prepend=0, append=n) != per_image):
        return None
    return image_index[::per_image]
