"""The local lab: per stage a docker network and systemd containers of the lab image, and their inventory.

Names: network ``<prefix>-<stage>``, containers ``<prefix>-<stage>-<n>`` (n from 1), every one labelled
``unistra-itop.lab=<prefix>`` so ``lab down`` removes exactly what ``lab up`` made. Each stage's inventory is
written where the pipeline reads it (or to ``--inventory-dir/<stage>.yml``), only when its content changes; it uses
the community.docker.docker connection plugin.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ExitCode, ItopctlError, bad_input

LAB_IMAGE = "unistra-itop/debian12-systemd:latest"
LABEL = "unistra-itop.lab"
# systemd as PID 1 works here with exactly these flags (see STACK-NOTES.md); --privileged does not.
SYSTEMD_FLAGS = ("--cap-add", "SYS_ADMIN", "--cgroupns=private", "--tmpfs", "/run", "--tmpfs", "/run/lock")


@dataclass(frozen=True)
class LabStage:
    stage: str
    network: str
    hosts: tuple[str, ...]
    inventory: str
    created: tuple[str, ...] = field(default=())


def _docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    if shutil.which("docker") is None:
        raise ItopctlError("docker is not installed (run scripts/lab-image.sh)", ExitCode.FAILED)
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, check=False, timeout=300)
    if check and proc.returncode != 0:
        raise ItopctlError(f"docker {' '.join(args[:2])} failed: {proc.stderr.strip()}", ExitCode.FAILED)
    return proc


def inventory_text(stage: str, hosts: Sequence[str]) -> str:
    lines = [
        f"# The lab's {stage} stage: written by `itopctl lab up`; the containers are named <prefix>-<stage>-<n>.",
        "all:",
        "  vars:",
        "    ansible_connection: community.docker.docker",
        "    ansible_python_interpreter: /usr/bin/python3",
        f"    lab_stage: {stage}",
        "  hosts:",
        *(f"    {host}: {{}}" for host in hosts),
    ]
    return "\n".join(lines) + "\n"


def lab_up(
    stages: Mapping[str, Path],
    *,
    hosts_per_stage: int,
    prefix: str,
    image: str = LAB_IMAGE,
) -> list[LabStage]:
    """Create (or restart) each stage's network and containers; write its inventory to the path given for it."""
    if hosts_per_stage < 1:
        raise bad_input("--hosts must be >= 1")
    if _docker("image", "inspect", image, check=False).returncode != 0:
        raise ItopctlError(f"lab image {image} not found: build it with scripts/lab-image.sh", ExitCode.FAILED)
    out: list[LabStage] = []
    for stage, path in stages.items():
        network = f"{prefix}-{stage}"
        if _docker("network", "inspect", network, check=False).returncode != 0:
            _docker("network", "create", "--label", f"{LABEL}={prefix}", network)
        names = tuple(f"{prefix}-{stage}-{n}" for n in range(1, hosts_per_stage + 1))
        created: list[str] = []
        for name in names:
            state = _docker("container", "inspect", "-f", "{{.State.Running}}", name, check=False)
            if state.returncode == 0 and state.stdout.strip() == "true":
                continue
            if state.returncode == 0:
                _docker("start", name)
                continue
            _docker(
                "run", "-d", "--name", name, "--hostname", name, "--network", network,
                "--label", f"{LABEL}={prefix}", "--label", f"{LABEL}.stage={stage}",
                *SYSTEMD_FLAGS, image, "/sbin/init",
            )  # fmt: skip
            created.append(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = inventory_text(stage, names)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        out.append(LabStage(stage, network, names, str(path), tuple(created)))
    return out


def lab_down(prefix: str) -> list[str]:
    """Remove the lab's containers and networks (by label); return what was removed."""
    removed: list[str] = []
    ids = _docker("ps", "-aq", "--filter", f"label={LABEL}={prefix}").stdout.split()
    if ids:
        names = _docker("inspect", "-f", "{{.Name}}", *ids).stdout.split()
        _docker("rm", "-f", *ids)
        removed += [n.lstrip("/") for n in names]
    nets = _docker("network", "ls", "-q", "--filter", f"label={LABEL}={prefix}").stdout.split()
    if nets:
        names = _docker("network", "inspect", "-f", "{{.Name}}", *nets).stdout.split()
        _docker("network", "rm", *nets)
        removed += names
    return removed


def wait_running(hosts: Sequence[str], timeout: float = 60.0) -> None:
    """Wait until systemd in each container reports running or degraded (boot finished)."""
    import time  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    for host in hosts:
        while True:
            proc = _docker("exec", host, "systemctl", "is-system-running", check=False)
            if proc.stdout.strip() in ("running", "degraded"):
                break
            if time.monotonic() > deadline:
                raise ItopctlError(f"{host}: systemd did not finish booting ({proc.stdout.strip()})", ExitCode.FAILED)
            time.sleep(0.3)
