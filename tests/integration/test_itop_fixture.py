"""End-to-end self-test of the iTop-shaped TEST FIXTURE (tests/fixtures/itop, not Combodo code).

Runs tests/fixtures/itop/selftest.sh, which installs PHP 8.2 and MariaDB in a throwaway systemd container of the
lab image and drives the fixture through install, upgrade (schema change), failure modes and fault injection.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "itop"
IMAGE = "unistra-itop/debian12-systemd:latest"


def _docker_ready() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def selftest_output() -> str:
    if not _docker_ready():
        pytest.skip(f"docker or the lab image {IMAGE} is not available (make test builds it)")
    result = subprocess.run(
        ["bash", str(FIXTURE / "selftest.sh")], capture_output=True, text=True, timeout=600, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


@pytest.mark.docker
@pytest.mark.slow
def test_selftest_passes(selftest_output: str) -> None:
    lines = selftest_output.splitlines()
    failed = [line for line in lines if line.startswith("not ok")]
    assert not failed, "\n".join(failed)
    assert lines[-1] == "SELFTEST OK"


@pytest.mark.parametrize(
    "check",
    [
        "install: last line 'installed!'",
        "page: served from r1",
        "upgrade with a read-only config: data/.readonly left behind",
        "upgrade: encryption_key and application.secret kept",
        "upgrade: priority column",
        "page: served from r2",
        "fault file: both flags left behind",
        "cron: refused as root (255)",
        "php -l clean on",
    ],
)
@pytest.mark.docker
@pytest.mark.slow
def test_contract_point_checked(selftest_output: str, check: str) -> None:
    assert any(line.startswith(f"ok - {check}") for line in selftest_output.splitlines()), check


def test_build_is_deterministic(tmp_path: Path) -> None:
    first = subprocess.run(
        ["python3", str(FIXTURE / "build.py"), str(tmp_path / "a")], capture_output=True, text=True, check=True
    )
    second = subprocess.run(
        ["python3", str(FIXTURE / "build.py"), str(tmp_path / "b")], capture_output=True, text=True, check=True
    )
    assert first.stdout == second.stdout
    names = set(json.loads((tmp_path / "a" / "checksums.json").read_text()))
    assert {
        "itop-fixture-core-3.2.0.tar.gz",
        "itop-fixture-core-3.2.0.zip",
        "unistra-fixture-ticket-1.0.0.tar.gz",
        "unistra-fixture-ticket-2.0.0.tar.gz",
    } <= names
