"""The main job on real systemd containers: the lab's topology (an all-in-one dev, a pprd of an application host
and a data host: networks, subnets, the read-only artifacts mount, the inventories' groups), then a release promoted
through both stages with the collection's release engine, a second one, pprd rolled back; the hosts' ``current``
links and the history; `lab down` removes everything."""

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
import zlib
from pathlib import Path

import pytest
import yaml
from itopctl.errors import ExitCode
from itopctl.faults import KILL_AT, PAUSE_AT
from itopctl.lab import stack_packages
from itopctl_support import Project, backdate

REPO = Path(__file__).resolve().parents[2]
IMAGE = "unistra-itop/debian12-stack:latest"

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


def _lab_up(project: Project, prefix: str, *stages: str) -> dict[str, dict[str, object]]:
    """``lab up`` of these stages into ``tmp_path/inventories``, with the test's artifacts directory and subnets of
    its own (the fixed 172.31.11-14 ones may be the real lab's, on this machine)."""
    base = f"172.31.{100 + 4 * (zlib.crc32(prefix.encode()) % 35)}.0/24"  # one per prefix
    up = project.run("lab", "up", *(a for s in stages for a in ("--stage", s)), "--prefix", prefix,
                     "--inventory-dir", str(project.root / "inventories"), "--subnet-base", base,
                     "--artifacts-dir", str(project.root / "artifacts"), "--json")  # fmt: skip
    assert up.code == 0, up.err
    return {s["stage"]: s for s in up.json()}


def _ours(prefix: str) -> list[str]:
    """The lab's containers and networks left with this prefix."""
    label = f"label=unistra-itop.lab={prefix}"
    containers = subprocess.run(["docker", "ps", "-aq", "--filter", label], capture_output=True, text=True, check=True)
    networks = subprocess.run(["docker", "network", "ls", "-q", "--filter", label],
                              capture_output=True, text=True, check=True)  # fmt: skip
    return containers.stdout.split() + networks.stdout.split()


def _check_topology(tmp_path: Path, prefix: str, made: dict[str, dict[str, object]]) -> None:
    app, data = f"{prefix}-pprd-app1", f"{prefix}-pprd-data1"
    assert made["dev"]["hosts"] == [f"{prefix}-dev-1"] and made["pprd"]["hosts"] == [app, data]
    subnet = made["pprd"]["subnet"]
    found = subprocess.run(["docker", "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
                            f"{prefix}-pprd"], capture_output=True, text=True, check=True)  # fmt: skip
    assert found.stdout.strip() == subnet
    artifacts = tmp_path / "artifacts"
    (artifacts / "seen-from-the-hosts").write_text("yes\n")
    for host in (f"{prefix}-dev-1", app, data):
        booted = subprocess.run(["docker", "exec", host, "systemctl", "is-system-running"],
                                capture_output=True, text=True, check=False)  # fmt: skip
        assert booted.stdout.strip() == "running", (host, booted.stdout)
        assert subprocess.run(["docker", "exec", host, "hostname"], capture_output=True, text=True,
                              check=True).stdout.strip() == host  # fmt: skip
        seen = subprocess.run(["docker", "exec", host, "cat", str(artifacts / "seen-from-the-hosts")],
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert seen.stdout == "yes\n"
        written = subprocess.run(["docker", "exec", host, "touch", str(artifacts / "x")],
                                 capture_output=True, text=True, check=False)  # fmt: skip
        assert written.returncode != 0 and "Read-only file system" in written.stderr
    # the stack image's services stay off until a role enables them where they belong
    running = subprocess.run(["docker", "exec", app, "systemctl", "is-active", "mariadb", "postgresql",
                              "rabbitmq-server", "nginx"], capture_output=True, text=True, check=False)  # fmt: skip
    assert running.stdout.split() == ["inactive"] * 4
    inventory = yaml.safe_load((tmp_path / "inventories" / "pprd.yml").read_text())["all"]
    assert inventory["vars"]["stack_client_networks"] == [subnet]
    assert {g: sorted(v["hosts"]) for g, v in inventory["children"].items()} == {
        "itop_web": [app], "hub": [app], "workers": [app],
        "itop_db": [data], "rabbitmq": [data], "postgresql": [data],
    }  # fmt: skip
    assert (tmp_path / "inventories" / "group_vars" / "all" / "vault.yml").stat().st_mode & 0o777 == 0o600
    # every package the roles' apt tasks ask for is in the stack image: such a task changes nothing
    roles = REPO / "collections" / "ansible_collections" / "unistra" / "itop" / "roles"
    apt = subprocess.run(
        [str(Path(sys.executable).parent / "ansible"), "-i", str(tmp_path / "inventories" / "pprd.yml"), data,
         "-m", "ansible.builtin.apt", "-a", f"name={','.join(stack_packages(roles))} state=present", "-o"],
        env={**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(REPO / "collections"), "ANSIBLE_FORCE_COLOR": "0"},
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert apt.returncode == 0 and '"changed": false' in apt.stdout, apt.stdout + apt.stderr


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


@pytest.mark.skipif(not _docker_ready(), reason=f"docker or the lab image {IMAGE} is missing (scripts/stack-image.sh)")
def test_promote_two_stages_and_roll_back_on_systemd_containers(tmp_path: Path) -> None:
    prefix = f"itoptest{uuid.uuid4().hex[:6]}"
    artifacts = tmp_path / "artifacts"
    project = _lab_project(tmp_path, "stages:\n  - dev\n  - name: pprd\n    batch_size: 1\n    gates: {soak: 10m}\n")
    env = project.env
    itopctl = project.run
    app, data = f"{prefix}-pprd-app1", f"{prefix}-pprd-data1"

    try:
        _check_topology(tmp_path, prefix, _lab_up(project, prefix, "dev", "pprd"))
        again = _lab_up(project, prefix, "dev", "pprd")  # a re-run makes nothing
        assert [(s["created"], s["started"], s["removed"], s["secrets"]) for s in again.values()] == [
            ([], [], [], None)
        ] * 2
        for release in ("r1", "r2"):
            uri, sha = _artifact(artifacts, release)
            manifest = tmp_path / f"{release}.yml"
            manifest.write_text(f"id: {release}\ncomponents:\n  sample:\n    uri: {uri}\n    sha256: '{sha}'\n")
            assert itopctl("release", "add", str(manifest)).code == 0

        for release in ("r1", "r2"):
            deployed = itopctl("deploy", release)
            assert deployed.code == 0, deployed.err
            backdate(env["ITOPCTL_STATE_URL"], "dev", hours=1)
            promoted = itopctl("promote", release, "--to", "pprd")
            assert promoted.code == 0, promoted.err
        assert _current(f"{prefix}-dev-1") == "releases/r2"
        assert _current(app) == _current(data) == "releases/r2"

        rolled = itopctl("rollback", "pprd")
        assert rolled.code == 0, rolled.err
        assert _current(app) == _current(data) == "releases/r1"
        assert _current(f"{prefix}-dev-1") == "releases/r2"
        # the rollback marked r2 bad on pprd's hosts: promoting it there again is refused before any run
        again = itopctl("promote", "r2", "--to", "pprd")
        assert again.code == 3 and "r2 was rolled back on pprd" in again.err, again.err

        history = itopctl("history", "--json").json()
        assert [(d["stage"], d["kind"], d["release_id"], d["result"]) for d in history] == [
            ("pprd", "rollback", "r1", "succeeded"),
            ("pprd", "promote", "r2", "succeeded"),
            ("dev", "promote", "r2", "succeeded"),
            ("pprd", "promote", "r1", "succeeded"),
            ("dev", "promote", "r1", "succeeded"),
        ]
        assert history[1]["switched_hosts"] == [app, data]
        status = {row["stage"]: row for row in itopctl("status", "--json").json()}
        assert (status["pprd"]["current"], status["pprd"]["previous"]) == ("r1", "r2")
        assert (status["dev"]["current"], status["dev"]["previous"]) == ("r2", "r1")
        down = itopctl("lab", "down", "--prefix", prefix)
        assert down.code == 0 and app in down.out and f"{prefix}-pprd" in down.out
        assert _ours(prefix) == []
    finally:
        itopctl("lab", "down", "--prefix", prefix)


def _lock_file(host: str) -> str | None:
    """The engine's host lock of the sample root, or None."""
    proc = subprocess.run(["docker", "exec", host, "cat", "/srv/unistra/sample/.deploy.lock"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    return proc.stdout if proc.returncode == 0 else None


@pytest.mark.skipif(not _docker_ready(), reason=f"docker or the lab image {IMAGE} is missing (scripts/stack-image.sh)")
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
        _lab_up(project, prefix, "dev")
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
