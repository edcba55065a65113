"""The main job on real systemd containers: promote a release through two stages with the collection's release
engine, promote a second one, roll the second stage back; check the hosts' ``current`` links and the history."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest
from itopctl.errors import ExitCode
from itopctl.faults import KILL_AT, PAUSE_AT
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


PLAYBOOK = REPO / "playbooks" / "itopctl_lab_sample.yml"


def _lab_project(tmp_path: Path, stages: str) -> Project:
    """A project on the lab playbook: artifacts in ``tmp_path/artifacts``, inventories written by ``lab up`` in
    ``tmp_path/inventories``, the application root in ``release_roots`` (probe and host lock)."""
    (tmp_path / "artifacts").mkdir()
    pipeline = tmp_path / "pipeline.yml"
    pipeline.write_text(
        f"""\
version: 1
ansible:
  collections_path: {REPO / "collections"}
  environment: {{ANSIBLE_PIPELINING: "true"}}
defaults:
  inventory: {tmp_path / "inventories"}/{{stage}}.yml
  playbooks: {{prepare: {PLAYBOOK}, switch: {PLAYBOOK}, verify: {PLAYBOOK}, rollback: {PLAYBOOK}}}
  extra_vars: {{lab_artifacts_dir: {tmp_path / "artifacts"}}}
  release_roots: {{sample: /srv/unistra/sample}}
{stages}"""
    )
    env = {
        "ITOPCTL_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}",
        "ITOPCTL_PIPELINE": str(pipeline),
        "ITOPCTL_RUNS_DIR": str(tmp_path / "runs"),
    }
    return Project(root=tmp_path, state_url=env["ITOPCTL_STATE_URL"], env=env)


@pytest.mark.skipif(not _docker_ready(), reason=f"docker or the lab image {IMAGE} is missing (scripts/lab-image.sh)")
def test_promote_two_stages_and_roll_back_on_systemd_containers(tmp_path: Path) -> None:
    prefix = f"itoptest{uuid.uuid4().hex[:6]}"
    artifacts, inventories = tmp_path / "artifacts", tmp_path / "inventories"
    project = _lab_project(tmp_path, "stages:\n  - dev\n  - name: test\n    batch_size: 1\n    gates: {soak: 10m}\n")
    env = project.env
    itopctl = project.run

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


def _lock_file(host: str) -> str | None:
    """The engine's host lock of the sample root, or None."""
    proc = subprocess.run(["docker", "exec", host, "cat", "/srv/unistra/sample/.deploy.lock"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    return proc.stdout if proc.returncode == 0 else None


@pytest.mark.skipif(not _docker_ready(), reason=f"docker or the lab image {IMAGE} is missing (scripts/lab-image.sh)")
def test_a_promotion_holds_the_hosts_lock_against_a_run_by_hand(tmp_path: Path) -> None:
    """While alice's promotion is paused after prepare, the lab playbook run by hand (with another token, or with
    none) is refused on the host, naming alice; once the promotion ends the host lock is gone, and the probe says
    so; a later run by hand takes its own lock and gives it back."""
    prefix = f"itoptest{uuid.uuid4().hex[:6]}"
    artifacts, inventories, playbook = tmp_path / "artifacts", tmp_path / "inventories", PLAYBOOK
    project = _lab_project(tmp_path, "stages: [dev]\n")
    env = project.env
    host = f"{prefix}-dev-1"
    uri, sha = _artifact(artifacts, "r1")
    manifest = {"id": "r1", "components": {"sample": {"uri": uri, "sha256": sha}}}
    (tmp_path / "r1.yml").write_text(json.dumps(manifest))
    extra = tmp_path / "by-hand.json"
    extra.write_text(json.dumps({"release_id": "r1", "release_manifest": manifest, "deploy_owner": "bob",
                                 "deploy_phase": "prepare", "lab_artifacts_dir": str(artifacts)}))  # fmt: skip

    def by_hand(*more: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventories / "dev.yml"),
             str(playbook), "-e", f"@{extra}", *more],
            env={**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(REPO / "collections"), "ANSIBLE_FORCE_COLOR": "0"},
            capture_output=True, text=True, check=False, timeout=300,
        )  # fmt: skip

    gate = tmp_path / "gate"
    proc: subprocess.Popen[str] | None = None
    try:
        up = project.run("lab", "up", "--stages", "dev", "--hosts", "1", "--prefix", prefix,
                         "--inventory-dir", str(inventories))  # fmt: skip
        assert up.code == 0, up.err
        assert project.run("release", "add", str(tmp_path / "r1.yml")).code == 0
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "itopctl"), "deploy", "r1"],
            env={**os.environ, **env, "ITOPCTL_USER": "alice", PAUSE_AT: f"prepared:{gate}"},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        )  # fmt: skip
        deadline = time.monotonic() + 240
        while not Path(f"{gate}.reached").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the promotion never reached the end of its prepare"
            time.sleep(0.2)
        held = _lock_file(host)
        assert held is not None and "alice" in held and "itopctl #1: prepare of r1 on dev" in held, held

        for how in (("-e", "deploy_lock_id=another-control-node"), ()):
            refused = by_hand(*how)
            assert refused.returncode != 0, refused.stdout
            assert "is locked by alice" in refused.stdout and "itopctl #1: prepare of r1 on dev" in refused.stdout
        gate.touch()
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == ExitCode.OK, (out, err)
        assert "deploy_lock_id" not in out + err  # the token is not printed
        assert _lock_file(host) is None  # given back when the promotion ended

        probe = project.run("status", "--probe", "--json")
        assert probe.code == 0, probe.err
        assert [(h["host"], h["current"], h["lock"]) for h in probe.json()[0]["hosts"]] == [(host, "r1", None)]
        again = by_hand()  # nobody holds it now: a run by hand takes its own lock and gives it back
        assert again.returncode == 0, again.stdout
        assert _lock_file(host) is None

        # an itopctl killed (kill -9) after its prepare leaves its host lock; the next deployment gives it back first
        uri, sha = _artifact(artifacts, "r2")
        (tmp_path / "r2.yml").write_text(
            json.dumps({"id": "r2", "components": {"sample": {"uri": uri, "sha256": sha}}})
        )
        assert project.run("release", "add", str(tmp_path / "r2.yml")).code == 0
        killed = subprocess.run(
            [str(Path(sys.executable).parent / "itopctl"), "deploy", "r2"],
            env={**os.environ, **env, "ITOPCTL_USER": "alice", KILL_AT: "prepared"},
            capture_output=True, text=True, check=False, timeout=300, cwd=tmp_path,
        )  # fmt: skip
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert "itopctl #2: prepare of r2 on dev" in (_lock_file(host) or "")
        redone = project.run("deploy", "r2", user="carol")
        assert redone.code == ExitCode.OK, redone.err
        assert _current(host) == "releases/r2" and _lock_file(host) is None
    finally:
        if proc is not None and proc.poll() is None:
            gate.touch()
            proc.kill()
            proc.communicate()
        project.run("lab", "down", "--prefix", prefix)
