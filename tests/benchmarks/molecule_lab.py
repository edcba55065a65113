"""What the benchmarks share to drive a converged Molecule scenario: its inventory, its converge.yml with extra
variables, the venv's tools on PATH.

The benchmarks run as ``.venv/bin/python tests/benchmarks/<bench>.py`` from a fresh clone, activated or not.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Sample:
    """One request of a benchmark's client: when it was sent and answered, its status (-1: no answer), the release
    that answered."""

    sent: float
    done: float
    status: int
    release: str | None


def use_the_venv() -> None:
    """molecule and ansible-playbook come from the venv the benchmark runs with; the collection from the checkout."""
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ["ANSIBLE_COLLECTIONS_PATH"] = str(ROOT / "collections")


def molecule_dir(scenario: str) -> Path:
    """The ephemeral directory of the scenario's last converge."""
    dirs = sorted(glob.glob(f"/root/.ansible/tmp/molecule.*.{scenario}"), key=os.path.getmtime)
    dirs = [d for d in dirs if os.path.isdir(os.path.join(d, "inventory"))]
    if not dirs:
        raise SystemExit(
            f"no Molecule inventory for scenario {scenario}: run `molecule converge -s {scenario}` or pass --converge"
        )
    return Path(dirs[-1])


def playbook(scenario: str, *extra: str, limit: str = "") -> float:
    """Runs the scenario's converge.yml with ``-e`` for each of ``extra``; returns its wall time, exits on failure."""
    mdir = molecule_dir(scenario)
    env = dict(os.environ)
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / "collections"),
        ANSIBLE_ROLES_PATH=str(ROOT / "collections/ansible_collections/unistra/itop/roles"),
        ANSIBLE_PIPELINING="true",
        ANSIBLE_FORCE_COLOR="0",
        MOLECULE_EPHEMERAL_DIRECTORY=str(mdir),
    )
    if (mdir / "ansible.cfg").exists():
        env["ANSIBLE_CONFIG"] = str(mdir / "ansible.cfg")
    args = ["ansible-playbook", "-i", str(mdir / "inventory"), str(ROOT / "molecule" / scenario / "converge.yml")]
    if limit:
        args += ["--limit", limit]
    for item in extra:
        args += ["-e", item]
    t0 = time.time()
    proc = subprocess.run(args, check=False, capture_output=True, text=True, env=env)
    wall = time.time() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-6000:] + proc.stderr[-2000:])
        raise SystemExit(f"playbook failed ({' '.join(extra)})")
    return wall


def converge(scenario: str) -> None:
    """``molecule converge -s <scenario>``: creates the instances if needed, prepares and converges them."""
    subprocess.run(["molecule", "converge", "-s", scenario], cwd=ROOT, check=True)
