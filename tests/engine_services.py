"""Real engine services for tests, started as separate processes on 127.0.0.1 with free ports and
stopped afterwards: a Dask scheduler with worker processes, and Beam's job service with an
EXTERNAL SDK worker pool (the Fn API path of Flink, Spark and Dataflow Runner v2)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {HOST}:{port} after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def service(args: Sequence[str], log: Path) -> Iterator[subprocess.Popen]:
    """Start one service in its own process group; on exit stop that group (the service and the
    worker processes it started), SIGKILL if it does not stop within 10 s."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        # Workers that a service starts run "python": make that this interpreter even when the
        # venv is not activated (else they die at "import apache_beam" and the job waits forever).
        env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
        proc = subprocess.Popen(list(args), stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@contextlib.contextmanager
def dask_cluster(logs: Path, workers: int = 2, pin_cores: bool = False) -> Iterator[str]:
    """``dask scheduler`` + ``dask worker --nworkers N --nthreads 1``; yields HOST:PORT.
    ``pin_cores``: one ``dask worker`` per process instead, worker ``i`` pinned to core ``i`` with
    ``taskset`` (a process then has exactly one core, its helper threads included)."""
    from distributed import Client

    port = free_port()
    with service(
        [_bin("dask"), "scheduler", "--host", HOST, "--port", str(port), "--no-dashboard"], logs / "dask-scheduler.log"
    ) as scheduler:
        wait_for_port(port, scheduler, logs / "dask-scheduler.log")
        address = f"{HOST}:{port}"
        worker = [_bin("dask"), "worker", f"tcp://{address}", "--nthreads", "1", "--host", HOST, "--no-dashboard"]
        commands = (
            [["taskset", "-c", str(i), *worker, "--nworkers", "1"] for i in range(workers)]
            if pin_cores
            else [[*worker, "--nworkers", str(workers)]]
        )
        with contextlib.ExitStack() as stack:
            for i, command in enumerate(commands):
                stack.enter_context(service(command, logs / f"dask-workers-{i}.log"))
            with Client(address, timeout=60) as client:
                client.wait_for_workers(workers, timeout=180)
            yield address


def dask_runner_flags(address: str, partitions: int) -> list[str]:
    """``run_pipeline.py`` flags that run on the Dask cluster at ``address`` (``dask_cluster``) in
    ``partitions`` partitions."""
    return ["--runner", "DaskRunner", "--dask_client_address", address, "--dask_npartitions", str(partitions)]


def portable_runner_flags(job_endpoint: str, pool: str) -> list[str]:
    """``run_pipeline.py`` flags that run on Beam's PortableRunner with ``beam_job_service``'s job
    endpoint and EXTERNAL worker pool."""
    return [
        "--runner",
        "PortableRunner",
        "--job_endpoint",
        job_endpoint,
        "--environment_type",
        "EXTERNAL",
        "--environment_config",
        pool,
    ]


@contextlib.contextmanager
def beam_job_service(logs: Path) -> Iterator[tuple[str, str]]:
    """Beam's Python job service + an EXTERNAL worker pool; yields (job endpoint, pool address)."""
    job_port, pool_port = free_port(), free_port()
    with (
        service(
            [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", "--port", str(job_port)],
            logs / "job-service.log",
        ) as jobs,
        service(
            [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", "--service_port", str(pool_port)],
            logs / "worker-pool.log",
        ) as pool,
    ):
        wait_for_port(job_port, jobs, logs / "job-service.log")
        wait_for_port(pool_port, pool, logs / "worker-pool.log")
        yield f"{HOST}:{job_port}", f"{HOST}:{pool_port}"
