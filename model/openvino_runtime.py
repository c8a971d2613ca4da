"""OpenVINO execution of traced TensorFlow functions, with an on-disk cache of converted models.

Converting a traced Keras graph to OpenVINO (tracing plus the TensorFlow frontend) costs every
worker start far more than reading a converted model back (docs/PERFORMANCE.md). The cache
holds OpenVINO IR (XML graph + raw float32 weights: data, never code), one folder per key, written atomically and
checked against SHA-256 sums before use; a damaged or foreign entry is rebuilt, never trusted,
and a cache folder that other users could write to is not used at all.

Callers name what a graph is made of in ``compiled_graph_key`` (weights content hash, shapes,
versions), the key of its folder in this cache; ``None`` means "never cache" (e.g. random
weights, which differ on every build).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from model import storage

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
_FILES = ("model.xml", "model.bin")


def cache_dir(setting: str | None = None) -> str | None:
    """Where converted models live: the folder ``setting`` names, ``"none"`` for no cache, or by
    default ``openvino/`` under ``model.storage.cache_root()`` (``$CAPTION_CACHE_DIR`` moves it)."""
    if setting is None:
        return os.path.join(storage.cache_root(), "openvino")
    if setting.strip().lower() in ("", "none", "off"):
        return None
    return setting


def _version(*distributions: str) -> str | None:
    """The installed version of the first of ``distributions`` that is installed (read from the
    package metadata, without importing it: TensorFlow takes seconds to import)."""
    from importlib import metadata

    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def compiled_graph_key(**identity: Any) -> str:
    """The key of a converted graph in the OpenVINO cache folder, from what it is made of, plus the library versions
    that shape the conversion."""
    full = {
        "format": CACHE_FORMAT,
        "openvino": _version("openvino"),
        "tensorflow": _version("tensorflow", "tensorflow-cpu", "tensorflow-intel", "tf-nightly"),
        "keras": _version("keras"),
        **identity,
    }
    return hashlib.sha256(json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()[:32]


def is_cached(cache: str | None, key: str) -> bool:
    """Whether the cache folder ``cache`` (``cache_dir``'s result) holds a complete entry under
    ``key`` (its checksums are verified when it is read)."""
    return bool(cache) and os.path.isfile(os.path.join(cache, key, "manifest.json"))


def _read_cached(core: Any, folder: str) -> Any | None:
    """The cached model in ``folder`` if it is complete and unchanged, else None."""
    try:
        with open(os.path.join(folder, "manifest.json")) as f:
            expected = json.load(f)["sha256"]
        if any(storage.file_sha256(os.path.join(folder, name)) != expected[name] for name in _FILES):
            log.warning("OpenVINO cache entry %s does not match its checksums; rebuilding it", folder)
            return None
        return core.read_model(os.path.join(folder, "model.xml"))
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - any unreadable entry is rebuilt
        log.warning("OpenVINO cache entry %s is unreadable (%s: %s); rebuilding it", folder, type(exc).__name__, exc)
        return None


def _write_cached(model: Any, root: str, key: str) -> None:
    """Save ``model`` under ``root/key`` atomically (a temporary folder renamed into place,
    ``storage.atomic_local_path``), so a concurrent reader sees either nothing or a complete entry."""
    import openvino as ov

    final = os.path.join(root, key)
    try:
        if os.path.isdir(final):  # a damaged entry: replace it
            shutil.rmtree(final, ignore_errors=True)
        with storage.atomic_local_path(final) as tmp:
            os.makedirs(tmp)
            ov.save_model(model, os.path.join(tmp, "model.xml"), compress_to_fp16=False)  # keep float32 weights
            sums = {name: storage.file_sha256(os.path.join(tmp, name)) for name in _FILES}
            with open(os.path.join(tmp, "manifest.json"), "w") as f:
                json.dump({"format": CACHE_FORMAT, "sha256": sums}, f)
    except OSError as exc:  # another process won the race, or the cache is not writable
        log.info("OpenVINO cache entry %s not written (%s)", final, exc)


def _private_folder(root: str) -> bool:
    """Create ``root`` (mode 0700) if needed; True only if it is ours and no one else can write
    to it, so another user of a shared machine (``/tmp``) cannot plant graphs for us to run."""
    try:
        os.makedirs(root, mode=0o700, exist_ok=True)
        st = os.stat(root)
    except OSError as exc:
        log.warning("OpenVINO cache %s is not usable (%s); converting in memory", root, exc)
        return False
    if hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o022):
        log.warning(
            "OpenVINO cache %s is not private to this user (owner uid %d, mode %o); not using it",
            root,
            st.st_uid,
            st.st_mode & 0o777,
        )
        return False
    return True


# Cores the model may use per process (unset: all of the machine's). One worker process per core
# (a Dask worker with --nthreads 1, several SDK workers) then does not oversubscribe the CPU.
THREADS_ENV = "CAPTION_MODEL_THREADS"


def thread_limit() -> int | None:
    """``$CAPTION_MODEL_THREADS`` as a positive int, None when unset (ValueError when nonsense)."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"${THREADS_ENV} must be a whole number >= 1 (cores per process), not {value!r}")
    return int(value)


def compile_options(precision: str, throughput: bool = False) -> dict[str, Any]:
    """OpenVINO CPU settings: the inference precision always set (left unset, the plugin runs
    float32 graphs in bf16 on CPUs that have it), and with ``throughput`` the plugin's THROUGHPUT
    hint: the cores split into streams that each run one request (2 streams of 1 thread on a
    2-core machine), for graphs fed several requests at once (``ChunkedRequests``).
    ``$CAPTION_MODEL_THREADS=N`` limits a graph to N threads (and, with ``throughput``, N
    streams of one thread), not pinned to cores: the plugin pins a limited graph's threads to the
    first cores, so every worker process of a machine would share the same core(s)."""
    options: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bfloat16" else "f32"}
    if throughput:
        options["PERFORMANCE_HINT"] = "THROUGHPUT"
    threads = thread_limit()
    if threads is not None:
        options["INFERENCE_NUM_THREADS"] = threads
        options["ENABLE_CPU_PINNING"] = False
        if throughput:
            options["NUM_STREAMS"] = threads
    return options


def convert_traced(function: Any) -> Any:
    """A tf ConcreteFunction as an OpenVINO model that owns its weights. ``convert_model`` shares
    the TensorFlow variables' memory by default; the converted graph outlives the TensorFlow model
    it came from (a step model keeps only its compiled graphs), and once that memory was freed and
    reused the captions were garbage (tests/test_attention_decoder.py reproduces it)."""
    import openvino as ov

    return ov.convert_model(function, share_weights=False)


def compile_traced(
    trace: Callable[[], Any], precision: str, key: str | None, cache: str | None, throughput: bool = False
) -> Any:
    """Compile a graph for the CPU: read from the cache under ``key`` when present, else call
    ``trace()`` (a tf ConcreteFunction), convert it and store it. ``precision`` is float32 or
    bfloat16 (OpenVINO's inference precision hint; it is not part of the stored graph);
    ``throughput``: see ``compile_options``."""
    import openvino as ov

    core = ov.Core()
    model = None
    folder = os.path.join(cache, key) if cache and key and _private_folder(cache) else None
    if folder:
        model = _read_cached(core, folder)
    if model is None:
        model = convert_traced(trace())
        if folder:
            _write_cached(model, cache, key)
    return core.compile_model(model, "CPU", compile_options(precision, throughput))


def ir_bytes(model: Any) -> tuple[bytes, bytes]:
    """An OpenVINO model as IR bytes (the XML graph, the raw weights), as a model artifact holds
    them (``compile_ir`` reads them back); weights are written as they are (no float16)."""
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="caption-ir-") as folder:
        path = os.path.join(folder, "graph.xml")
        ov.save_model(model, path, compress_to_fp16=False)
        with open(path, "rb") as f:
            xml = f.read()
        with open(os.path.join(folder, "graph.bin"), "rb") as f:
            return xml, f.read()


def compile_ir(xml: bytes, weights: bytes, throughput: bool = False) -> Any:
    """Compile an OpenVINO IR held in memory (an INT8 encoder from a verified model artifact):
    the XML graph and its raw weights are data, read without any file or code of the artifact.
    Quantised operations run in INT8 (VNNI/AMX when the CPU has them, else emulated with the
    AVX2/AVX-512 integer instructions); the few layers left unquantised run in float32."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(xml.decode("utf-8"), ov.Tensor(np.frombuffer(weights, dtype=np.uint8).copy()))
    return core.compile_model(model, "CPU", compile_options("float32", throughput))


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin has bf16 kernels here (AVX-512 BF16 or AMX); else it runs f32."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class ThreadLocalRequests:
    """Runs compiled models with one infer request per thread (a request is not thread-safe;
    a compiled model is)."""

    def __init__(self, compiled: Sequence[Any]) -> None:
        self._compiled = list(compiled)
        self._local = threading.local()

    def requests(self) -> list[Any]:
        requests = getattr(self._local, "requests", None)
        if requests is None:
            requests = self._local.requests = [c.create_infer_request() for c in self._compiled]
        return requests

    def chain(self, x: np.ndarray) -> np.ndarray:
        """Feed ``x`` through the compiled models in order (single input and output each)."""
        for request in self.requests():
            x = request.infer({0: x})[0]
        return np.asarray(x, dtype=np.float32)

    def run(self, index: int, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run compiled model ``index`` on positional inputs; copies of all its outputs. The
        inputs are read in place, not copied (``share_inputs``): a step graph is fed the same
        per-image arrays (an attention decoder's map) at every step, and they are not changed."""
        result = self.requests()[index].infer(dict(enumerate(inputs)), share_inputs=True)
        return [result[i] for i in range(len(result))]


class ChunkedRequests:
    """Runs a batch through compiled models (compiled with ``throughput=True``) as chunks of
    ``chunk`` images, as many chunks at once as the plugin has streams, in order.

    Why: on the 2-core AVX-512 VNNI machine measured in docs/PERFORMANCE.md, Xception ran faster on
    small chunks than on a batch of 16, and two single-thread streams beat one stream of two
    threads (numbers there). The caller keeps its own batch size (the beam search is cheaper per
    image on large batches).

    The first batch of several chunks runs its first chunk on the calling thread before the
    stream threads start: the OpenVINO bindings set up their NumPy access once per process
    (pybind11's ``gil_safe_call_once``), and two threads doing that first call together while a
    third imported a module (Pillow loading its plugins on a read thread) deadlocked a Beam SDK
    worker here (PortableRunner test)."""

    def __init__(self, compiled: Sequence[Any], chunk: int) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, not {chunk}")
        self.chunk = chunk
        self._requests = ThreadLocalRequests(compiled)
        try:
            self.parallel = max(1, int(compiled[0].get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        except Exception:  # noqa: BLE001 - a plugin that does not say: one request at a time
            self.parallel = 1
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def chain(self, x: np.ndarray) -> np.ndarray:
        """``ThreadLocalRequests.chain`` of the whole batch, computed chunk by chunk."""
        chunks = [x[i : i + self.chunk] for i in range(0, max(len(x), 1), self.chunk)]
        parts: list[np.ndarray] = []
        if len(chunks) == 1 or self.parallel == 1:
            parts = [self._requests.chain(c) for c in chunks]
        else:
            with self._pool_lock:
                if self._pool is None:  # the first batch: one chunk here first (see the class)
                    parts.append(self._requests.chain(chunks[0]))
                    chunks = chunks[1:]
                    self._pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="openvino-stream")
            parts += self._pool.map(self._requests.chain, chunks)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
