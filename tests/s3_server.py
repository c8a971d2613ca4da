"""A real moto S3 server process on 127.0.0.1 for tests and benchmarks, the AWS environment
pointing clients at it, and a guard that refuses any connection leaving 127.0.0.1."""

from __future__ import annotations

import ipaddress
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


def require_s3_server() -> ModuleType:
    """boto3, once boto3 and moto's server are both importable; otherwise the calling test module
    (or, from a fixture or test, that test) is skipped with the install command."""
    try:
        import boto3
        import moto.server  # noqa: F401 - the server is started as ``python -m moto.server``
    except ImportError as exc:  # pragma: no cover - both come with the project's ``test`` extra
        pytest.skip(f"S3 tests need boto3 and moto[server] (pip install -e '.[test]'): {exc}", allow_module_level=True)
    return boto3


class LoopbackOnly:
    """Wraps ``socket.socket.connect``/``connect_ex`` in this process: records every IP
    destination and refuses (and records) any that is not a loopback address."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []
        self.refused: list[tuple[str, int]] = []

    def install(self, mp: pytest.MonkeyPatch) -> None:
        real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

        def check(sock: socket.socket, address: Any) -> None:
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                return
            host, port = address[0], address[1]
            self.seen.append((host, port))
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:  # a host name: connect() would resolve it; only localhost is fine
                loopback = host == "localhost"
            if not loopback:
                self.refused.append((host, port))
                raise ConnectionRefusedError(f"test network guard: connection to {host}:{port} refused")

        def connect(sock: socket.socket, address: Any) -> None:
            check(sock, address)
            return real_connect(sock, address)

        def connect_ex(sock: socket.socket, address: Any) -> int:
            check(sock, address)
            return real_connect_ex(sock, address)

        mp.setattr(socket.socket, "connect", connect)
        mp.setattr(socket.socket, "connect_ex", connect_ex)

    def assert_only_to(self, port: int) -> None:
        assert not self.refused, f"requests tried to leave 127.0.0.1: {self.refused}"
        assert ("127.0.0.1", port) in self.seen, f"no connection to the S3 server at port {port}: {self.seen}"


def start_moto(log_path: Path) -> tuple[subprocess.Popen, int]:
    """``python -m moto.server`` on 127.0.0.1 with a free port chosen by the OS (port 0); the
    port is read from the server's start-up line. Output goes to a file, so a full pipe can
    never block the server."""
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(rb"Running on http://127\.0\.0\.1:(\d+)", log_path.read_bytes())
        if found:
            return proc, int(found.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    stop_process(proc)
    raise RuntimeError(f"moto server did not start: {log_path.read_text(errors='replace')[-2000:]}")


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def point_aws_env_at(mp: pytest.MonkeyPatch, endpoint: str, tmp: Path) -> None:
    """Every S3 client of this process (botocore for Beam, aiobotocore for s3fs) and of the
    processes it starts talks to ``endpoint`` with test credentials, and nothing else."""
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_REGION",
        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
        "AWS_CA_BUNDLE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        mp.delenv(name, raising=False)
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    mp.setenv("AWS_ENDPOINT_URL", endpoint)
    mp.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    mp.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask 169.254.169.254 for credentials
    mp.setenv("AWS_CONFIG_FILE", str(tmp / "no-aws-config"))
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp / "no-aws-credentials"))
    mp.setenv("NO_PROXY", "127.0.0.1,localhost")
    mp.setenv("no_proxy", "127.0.0.1,localhost")
