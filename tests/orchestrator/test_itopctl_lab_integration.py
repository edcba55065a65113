"""The main job on real systemd containers: promote a release through two stages with the collection's release
engine, promote a second one, roll the second stage back; check the hosts' ``current`` links and the history."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest
from itopctl_support import Project, backdate

REPO = Path(__file__).resolve().parents[2]
IMAGE = "unistra-itop/debian12-systemd:latest"

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _docker_ready() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, check=False).returncode == 0


def _artifact(directory: Path, release: str) -> tuple[str, str]:
    """A sample application archive: VERSION at its root."""
    path = directory / f"sample-{release}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        data = f"{release}\n".encode()
        info = tarfile.TarInfo("VERSION")
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    return f"file:///srv/artifacts/{path.name}", hashlib.sha256(path.read_bytes()).hexdigest()


def _current(host: str) -> str:
    proc = subprocess.run(
        ["docker", "exec", host, "readlink", "/srv/unistra/sample/current"], capture_output=True, text=True, check=True
    )
    return proc.stdout.strip()


@pytest.mark.skipif(not _docker_ready(), reason=f"docker or the lab image {IMAGE} is missing (scripts/lab-image.sh)")
def test_promote_two_stages_and_roll_back_on_systemd_containers(tmp_path: Path) -> None:
    prefix = f"itoptest{uuid.uuid4().hex[:6]}"
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    inventories = tmp_path / "inventories"
    pipeline = tmp_path / "pipeline.yml"
    playbook = REPO / "playbooks" / "itopctl_lab_sample.yml"
    pipeline.write_text(
        f"""\
version: 1
ansible:
  collections_path: {REPO / "collections"}
  environment: {{ANSIBLE_PIPELINING: "true"}}
defaults:
  inventory: {inventories}/{{stage}}.yml
  playbooks: {{prepare: {playbook}, switch: {playbook}, verify: {playbook}, rollback: {playbook}}}
  extra_vars: {{lab_artifacts_dir: {artifacts}}}
stages:
  - dev
  - name: test
    batch_size: 1
    gates: {{soak: 10m}}
"""
    )
    env = {
        "ITOPCTL_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}",
        "ITOPCTL_PIPELINE": str(pipeline),
        "ITOPCTL_RUNS_DIR": str(tmp_path / "runs"),
    }

    itopctl = Project(root=tmp_path, state_url=env["ITOPCTL_STATE_URL"], env=env).run

    try:
        for stage, hosts in (("dev", "1"), ("test", "2")):
            up = itopctl("lab", "up", "--stages", stage, "--hosts", hosts, "--prefix", prefix,
                         "--inventory-dir", str(inventories))  # fmt: skip
            assert up.code == 0, up.err
        for release in ("r1", "r2"):
            uri, sha = _artifact(artifacts, release)
            manifest = tmp_path / f"{release}.yml"
            manifest.write_text(f"id: {release}\ncomponents:\n  sample:\n    uri: {uri}\n    sha256: '{sha}'\n")
            assert itopctl("release", "add", str(manifest)).code == 0

        for release in ("r1", "r2"):
            deployed = itopctl("deploy", release)
            assert deployed.code == 0, deployed.err
            backdate(env["ITOPCTL_STATE_URL"], "dev", hours=1)
            promoted = itopctl("promote", release, "--to", "test")
            assert promoted.code == 0, promoted.err
        assert _current(f"{prefix}-dev-1") == "releases/r2"
        assert _current(f"{prefix}-test-1") == _current(f"{prefix}-test-2") == "releases/r2"

        rolled = itopctl("rollback", "test")
        assert rolled.code == 0, rolled.err
        assert _current(f"{prefix}-test-1") == _current(f"{prefix}-test-2") == "releases/r1"
        assert _current(f"{prefix}-dev-1") == "releases/r2"

        history = itopctl("history", "--json").json()
        assert [(d["stage"], d["kind"], d["release_id"], d["result"]) for d in history] == [
            ("test", "rollback", "r1", "succeeded"),
            ("test", "promote", "r2", "succeeded"),
            ("dev", "promote", "r2", "succeeded"),
            ("test", "promote", "r1", "succeeded"),
            ("dev", "promote", "r1", "succeeded"),
        ]
        assert history[1]["switched_hosts"] == [f"{prefix}-test-1", f"{prefix}-test-2"]
        status = {row["stage"]: row for row in itopctl("status", "--json").json()}
        assert (status["test"]["current"], status["test"]["previous"]) == ("r1", "r2")
        assert (status["dev"]["current"], status["dev"]["previous"]) == ("r2", "r1")
    finally:
        itopctl("lab", "down", "--prefix", prefix)
