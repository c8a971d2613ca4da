"""The OpenVINO runtime: converted-graph cache (hit, miss, damage, off) and the OpenVINO step
decoder, with real (small) TensorFlow graphs and real files."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("openvino")

from model import openvino_runtime as ovr


def _affine_trace(calls: list[int], scale: float = 2.0):
    """A traced graph y = x @ W * scale + 1, counting how often it is traced."""
    weights = tf.constant(np.arange(12, dtype=np.float32).reshape(4, 3) / 10)

    def trace():
        calls.append(1)
        fn = tf.function(
            lambda x: tf.matmul(x, weights) * scale + 1.0, input_signature=[tf.TensorSpec([None, 4], tf.float32)]
        )
        return fn.get_concrete_function()

    return trace


def _run(compiled, x):
    return ovr.ThreadLocalRequests([compiled]).chain(x)


def _affine(x: np.ndarray) -> np.ndarray:
    """What ``_affine_trace``'s graph computes."""
    return x @ (np.arange(12, dtype=np.float32).reshape(4, 3) / 10) * 2.0 + 1.0


X = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
EXPECTED = _affine(X)


def test_cache_miss_writes_an_entry_and_a_hit_does_not_trace(tmp_path):
    calls: list[int] = []
    key = ovr.compiled_graph_key(graph="affine", weights="w1")
    first = _run(ovr.compile_traced(_affine_trace(calls), "float32", key, str(tmp_path)), X)
    assert calls == [1]
    entry = tmp_path / key
    assert sorted(os.listdir(entry)) == ["manifest.json", "model.bin", "model.xml"]
    sums = json.loads((entry / "manifest.json").read_text())["sha256"]
    assert set(sums) == {"model.xml", "model.bin"}
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]  # no temp folder left

    second = _run(ovr.compile_traced(_affine_trace(calls), "float32", key, str(tmp_path)), X)
    assert calls == [1]  # read back, not traced again
    np.testing.assert_allclose(first, EXPECTED, rtol=1e-5)
    np.testing.assert_array_equal(first, second)


def test_damaged_cache_entry_is_rebuilt_not_trusted(tmp_path, caplog):
    calls: list[int] = []
    key = ovr.compiled_graph_key(graph="affine", weights="w1")
    ovr.compile_traced(_affine_trace(calls), "float32", key, str(tmp_path))
    weights_file = tmp_path / key / "model.bin"
    data = bytearray(weights_file.read_bytes())
    data[:8] = np.full(2, 1e6, np.float32).tobytes()  # same size, different numbers
    weights_file.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="model.openvino_runtime"):
        out = _run(ovr.compile_traced(_affine_trace(calls), "float32", key, str(tmp_path)), X)
    assert calls == [1, 1] and "does not match its checksums" in caplog.text
    np.testing.assert_allclose(out, EXPECTED, rtol=1e-5)
    # The rebuilt entry is whole again: the next load reads it without tracing.
    ovr.compile_traced(_affine_trace(calls), "float32", key, str(tmp_path))
    assert calls == [1, 1]

    (tmp_path / key / "model.xml").write_text("<not a model")
    (tmp_path / key / "manifest.json").write_text("{}")
    out = _run(ovr.compile_traced(_affine_trace(calls), "float32", key, str(tmp_path)), X)
    assert calls == [1, 1, 1]
    np.testing.assert_allclose(out, EXPECTED, rtol=1e-5)


def test_keys_separate_what_differs_and_none_turns_caching_off(tmp_path, monkeypatch):
    assert ovr.compiled_graph_key(graph="a", weights="w1") == ovr.compiled_graph_key(weights="w1", graph="a")
    assert ovr.compiled_graph_key(graph="a", weights="w1") != ovr.compiled_graph_key(graph="a", weights="w2")
    calls: list[int] = []
    ovr.compile_traced(_affine_trace(calls, 2.0), "float32", ovr.compiled_graph_key(g="s2"), str(tmp_path))
    out = _run(
        ovr.compile_traced(_affine_trace(calls, 3.0), "float32", ovr.compiled_graph_key(g="s3"), str(tmp_path)), X
    )
    assert calls == [1, 1]
    np.testing.assert_allclose(out, (EXPECTED - 1.0) * 1.5 + 1.0, rtol=1e-5)

    assert ovr.cache_dir("none") is None and ovr.cache_dir("") is None
    monkeypatch.setenv("CAPTION_CACHE_DIR", str(tmp_path / "root"))
    assert ovr.cache_dir() == str(tmp_path / "root" / "openvino")
    ovr.compile_traced(_affine_trace(calls), "float32", ovr.compiled_graph_key(g="x"), ovr.cache_dir("none"))
    ovr.compile_traced(_affine_trace(calls), "float32", None, str(tmp_path / "unused"))
    assert not (tmp_path / "root").exists() and not (tmp_path / "unused").exists()


def test_cached_encoder_skips_keras_and_gives_the_same_features(tiny_artifact, tmp_path):
    """An encoder whose converted graph is cached never builds its Keras model; random weights
    (which differ on every build) are never cached."""
    from model.artifact import read_artifact
    from model.encoder import ImageEncoder

    contents = read_artifact(tiny_artifact)  # holds the embedded weights' local copy open
    weights = contents.encoder_weights
    images = np.random.default_rng(3).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    cold = ImageEncoder("mobilenet_v3_small", weights, (64, 64), runtime="openvino", cache=str(tmp_path))
    assert cold._model is not None and len(os.listdir(tmp_path)) == 1
    warm = ImageEncoder("mobilenet_v3_small", weights, (64, 64), runtime="openvino", cache=str(tmp_path))
    assert warm._model is None
    np.testing.assert_array_equal(cold(images), warm(images))
    reference = ImageEncoder("mobilenet_v3_small", weights, (64, 64), runtime="tensorflow")(images)
    np.testing.assert_allclose(warm(images), reference, rtol=1e-3, atol=1e-4)
    assert warm.feature_dim == 576 and warm.model.count_params() > 0  # Keras still there on demand

    ImageEncoder("mobilenet_v3_small", None, (64, 64), runtime="openvino", cache=str(tmp_path / "random"))
    assert not (tmp_path / "random").exists()


def test_openvino_step_decoder_matches_tensorflow(tiny_artifact, tmp_path):
    from model.captioner import load_caption_model
    from model.lstm_decoder import KerasStepModel, OpenVinoStepModel

    images = np.random.default_rng(4).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    ov_model = load_caption_model(tiny_artifact, runtime="openvino", cache=str(tmp_path))
    tf_model = load_caption_model(tiny_artifact, runtime="tensorflow")
    assert isinstance(ov_model.step_model, OpenVinoStepModel)
    assert type(tf_model.step_model) is KerasStepModel
    feats = tf_model.encode(images)
    ov_state, tf_state = ov_model.step_model.initial_state(feats), tf_model.step_model.initial_state(feats)
    words = np.array([1, 2, 3, 4], np.int32)
    for _ in range(3):
        (ov_logp, ov_state), (tf_logp, tf_state) = (
            ov_model.step_model.step(words, ov_state),
            tf_model.step_model.step(words, tf_state),
        )
        np.testing.assert_allclose(ov_logp, tf_logp, rtol=1e-4, atol=1e-4)
        words = tf_logp.argmax(axis=1).astype(np.int32)
    assert [r.caption for r in ov_model.caption_features(feats)] == [
        r.caption for r in tf_model.caption_features(feats)
    ]
    # Decoder graphs are cached under the artifact's model_id: a second load reads them back.
    entries = set(os.listdir(tmp_path))
    load_caption_model(tiny_artifact, runtime="openvino", cache=str(tmp_path))
    assert set(os.listdir(tmp_path)) == entries and len(entries) == 3  # encoder + 2 decoder graphs


def test_cache_folder_others_can_write_to_is_not_used(tmp_path, caplog):
    """On a shared machine another user must not be able to plant graphs for us to run."""
    calls: list[int] = []
    key = ovr.compiled_graph_key(graph="affine", weights="w1")
    cache = tmp_path / "cache"
    ovr.compile_traced(_affine_trace(calls), "float32", key, str(cache))
    assert (cache / key / "model.xml").is_file() and oct(cache.stat().st_mode & 0o777) == "0o700"
    cache.chmod(0o777)
    with caplog.at_level(logging.WARNING, logger="model.openvino_runtime"):
        out = _run(ovr.compile_traced(_affine_trace(calls), "float32", key, str(cache)), X)
    assert calls == [1, 1] and "not private to this user" in caplog.text  # converted again, cache ignored
    np.testing.assert_allclose(out, EXPECTED, rtol=1e-5)
    cache.chmod(0o700)
    ovr.compile_traced(_affine_trace(calls), "float32", key, str(cache))
    assert calls == [1, 1]


def test_compile_options_always_set_the_precision(monkeypatch):
    monkeypatch.delenv(ovr.THREADS_ENV, raising=False)
    """Left unset, the CPU plugin may run float32 graphs in bf16; THROUGHPUT only when asked."""
    assert ovr.compile_options("float32") == {"INFERENCE_PRECISION_HINT": "f32"}
    assert ovr.compile_options("bfloat16") == {"INFERENCE_PRECISION_HINT": "bf16"}
    assert ovr.compile_options("float32", throughput=True) == {
        "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "THROUGHPUT",
    }


def test_thread_limit_reaches_the_compiled_graph(monkeypatch, tmp_path):
    """$CAPTION_MODEL_THREADS=1: one thread and one stream per compiled graph, read back from
    OpenVINO's compiled model; nonsense is refused."""
    monkeypatch.setenv(ovr.THREADS_ENV, "1")
    assert ovr.compile_options("float32", throughput=True) == {
        "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "THROUGHPUT",
        "INFERENCE_NUM_THREADS": 1,
        "NUM_STREAMS": 1,
        "ENABLE_CPU_PINNING": False,
    }
    compiled = ovr.compile_traced(_affine_trace([]), "float32", None, None, throughput=True)
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    assert int(compiled.get_property("NUM_STREAMS")) == 1
    assert compiled.get_property("ENABLE_CPU_PINNING") is False
    np.testing.assert_allclose(_run(compiled, X), EXPECTED, rtol=1e-5)
    monkeypatch.setenv(ovr.THREADS_ENV, "0")
    with pytest.raises(ValueError, match="CAPTION_MODEL_THREADS"):
        ovr.compile_options("float32")


_PINNING_PROBE = """
import contextlib, glob, sys, threading, time
import numpy as np
import openvino as ov
from openvino import opset13 as ops
from model import openvino_runtime as ovr

x = ops.parameter([8, 256], np.float32)
graph = ov.Model([ops.matmul(x, ops.constant(np.ones((256, 256), np.float32)), False, False)], [x])
compiled = ov.Core().compile_model(graph, "CPU", ovr.compile_options("float32", throughput=True))
request, stop, allowed = compiled.create_infer_request(), threading.Event(), set()

def infer_until_stopped():
    while not stop.is_set():
        request.infer([np.ones((8, 256), np.float32)])

runner = threading.Thread(target=infer_until_stopped)
runner.start()
for _ in range(50):
    for status in glob.glob("/proc/self/task/*/status"):
        with contextlib.suppress(OSError, IndexError):
            allowed.add(open(status).read().split("Cpus_allowed_list:")[1].split()[0])
    time.sleep(0.01)
stop.set()
runner.join()
print(" ".join(sorted(allowed)))
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to see a thread pinned to one")
@pytest.mark.parametrize("limit, pinned_expected", [("1", False), ("", True)])
def test_limited_graph_threads_are_not_pinned_to_a_core(limit, pinned_expected):
    """With $CAPTION_MODEL_THREADS=1 the plugin pinned its inference thread to core 0, so every
    worker process of a machine (Dask --nthreads 1) ran on that one core. In a fresh process (the
    plugin's threads outlive their graphs), while a graph compiled with our options runs, no thread
    may be restricted to fewer CPUs than the process has; without a limit the plugin still pins its
    stream threads (the probe's control: it does see pinning)."""
    env = {**os.environ, ovr.THREADS_ENV: limit, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    probe = subprocess.run(
        [sys.executable, "-c", _PINNING_PROBE], capture_output=True, text=True, env=env, timeout=120, check=True
    )
    masks = set(probe.stdout.split())
    process_cpus = open("/proc/self/status").read().split("Cpus_allowed_list:")[1].split()[0]
    assert process_cpus in masks
    assert (masks != {process_cpus}) == pinned_expected, masks


@pytest.mark.parametrize("rows", [0, 1, 2, 3, 7, 16])
def test_chunked_requests_give_the_whole_batch_in_order(rows):
    """A batch run as chunks over the plugin's streams equals the batch run in one request,
    row for row, whatever the batch size (empty, one chunk, a partial last chunk)."""
    import threading

    x = np.random.default_rng(rows).normal(size=(rows, 4)).astype(np.float32)
    expected = _affine(x)
    compiled = ovr.compile_traced(_affine_trace([]), "float32", None, None, throughput=True)
    assert compiled.get_property("PERFORMANCE_HINT") == "THROUGHPUT"
    runner = ovr.ChunkedRequests([compiled], chunk=2)
    assert runner.parallel == int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")) >= 1
    out = runner.chain(x)
    assert out.shape == (rows, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out, ovr.ThreadLocalRequests([compiled]).chain(x))
    streams = [t for t in threading.enumerate() if t.name.startswith("openvino-stream")]
    if rows > 2 and runner.parallel > 1:  # more than one chunk: they ran on the stream threads
        assert runner._pool is not None and streams
    with pytest.raises(ValueError, match="chunk"):
        ovr.ChunkedRequests([compiled], chunk=0)


def test_chunked_requests_chain_several_graphs():
    """A chain of graphs (the bf16 encoder's float32 stem, then the rest) runs chunk by chunk too."""
    first = ovr.compile_traced(_affine_trace([]), "float32", None, None, throughput=True)

    def second_trace():
        fn = tf.function(lambda x: x * 3.0 - 1.0, input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        return fn.get_concrete_function()

    second = ovr.compile_traced(second_trace, "float32", None, None, throughput=True)
    x = np.random.default_rng(9).normal(size=(9, 4)).astype(np.float32)
    out = ovr.ChunkedRequests([first, second], chunk=4).chain(x)
    np.testing.assert_allclose(out, _affine(x) * 3.0 - 1.0, rtol=1e-5, atol=1e-5)


def test_first_batch_runs_its_first_chunk_on_the_calling_thread():
    """The bindings' one-time NumPy set-up must not run on two stream threads at once (it
    deadlocked a Beam SDK worker): the first chunk of the first batch runs on the caller."""
    import threading

    compiled = ovr.compile_traced(_affine_trace([]), "float32", None, None, throughput=True)
    runner = ovr.ChunkedRequests([compiled], chunk=2)
    runner.parallel = 2  # as on a 2-core machine, whatever this one has
    seen: list[str] = []
    chain = runner._requests.chain

    def recording(x):
        seen.append(threading.current_thread().name)
        return chain(x)

    runner._requests.chain = recording
    x = np.random.default_rng(5).normal(size=(6, 4)).astype(np.float32)
    np.testing.assert_allclose(runner.chain(x), _affine(x), rtol=1e-5, atol=1e-6)
    assert seen[0] == threading.current_thread().name and len(seen) == 3
    assert all(name.startswith("openvino-stream") for name in seen[1:])
    seen.clear()
    runner.chain(x)  # later batches: every chunk on the stream threads
    assert len(seen) == 3 and all(name.startswith("openvino-stream") for name in seen)
