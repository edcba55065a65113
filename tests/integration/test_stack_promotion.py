"""The main job in CI: the whole stack (iTop + extension, RabbitMQ definitions, the workers, the hub) promoted by
itopctl through an all-in-one dev and a multi-host prod (two application hosts, a worker host, a data host), release
1 then release 2, then prod rolled back to release 1 with its databases restored, by the README's own script
(scripts/demo.sh) with a two-stage pipeline of this test's own. Then, from itopctl and from the hosts themselves:
what each stage runs, the history, and every application root of every prod host on release 1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE = "unistra-itop/debian12-stack:latest"
PREFIX = "ci-stack"
ROOTS = {"itop": "/srv/itop", "hub": "/srv/unistra/hub", "worker": "/srv/unistra/worker"}

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PIPELINE = f"""\
version: 1
ansible:
  collections_path: {REPO / "collections"}
  environment: {{ANSIBLE_PIPELINING: "true"}}
  strategy: mitogen
defaults:
  inventory: "{{stage}}.yml"
  playbooks:
    prepare: {REPO / "playbooks/stack.yml"}
    switch: {REPO / "playbooks/stack.yml"}
    verify: {REPO / "playbooks/stack.yml"}
    rollback: {REPO / "playbooks/stack.yml"}
  switch_order: [rabbitmq, workers, hub, itop_web]
  batch_size: 1
  release_roots: {{itop: /srv/itop, hub: /srv/unistra/hub, worker: /srv/unistra/worker}}
stages:
  - name: dev
  - name: prod
    gates:
      approvals: {{count: 2}}
"""


def _itopctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / ".venv/bin/itopctl"), *args], env=env, capture_output=True, text=True, check=False, timeout=600
    )


@pytest.fixture
def project(tmp_path: Path) -> dict[str, str]:
    if (
        shutil.which("docker") is None
        or subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, check=False).returncode
    ):
        pytest.skip(f"needs docker and {IMAGE} (scripts/setup.sh)")
    (tmp_path / "pipeline.yml").write_text(PIPELINE)
    (tmp_path / "group_vars/all").mkdir(parents=True)
    (tmp_path / "group_vars/all/stack.yml").symlink_to(REPO / "inventories/common/stack.yml")
    env = {
        **os.environ,
        "ITOPCTL_PIPELINE": str(tmp_path / "pipeline.yml"),
        "ITOPCTL_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}",
        "ITOPCTL_RUNS_DIR": str(tmp_path / "runs"),
        "ITOPCTL_USER": "alice",
    }
    yield env
    _itopctl(env, "lab", "down", "--prefix", PREFIX)


def test_the_whole_stack_through_dev_and_a_multi_host_prod_then_rolled_back(project: dict[str, str]) -> None:
    env = project
    demo = subprocess.run(
        ["bash", str(REPO / "scripts/demo.sh"), "--stages", "dev,prod", "--pipeline", env["ITOPCTL_PIPELINE"],
         "--prefix", PREFIX, "--subnet-base", "172.31.61.0/24"],
        env=env, capture_output=True, text=True, check=False, timeout=3000,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stdout[-6000:] + demo.stderr[-3000:]

    status = {row["stage"]: row for row in json.loads(_itopctl(env, "status", "--json").stdout)}
    assert (status["dev"]["current"], status["dev"]["health"]) == ("demo-2", "healthy")
    assert (status["prod"]["current"], status["prod"]["previous"]) == ("demo-1", "demo-2"), status["prod"]
    assert status["prod"]["health"] == "rolled back from demo-2", status["prod"]

    history = json.loads(_itopctl(env, "history", "--stage", "prod", "--json").stdout)
    kinds = [(d["release_id"], d["kind"], d["result"]) for d in reversed(history)]
    assert kinds == [
        ("demo-1", "promote", "succeeded"),
        ("demo-2", "promote", "succeeded"),
        ("demo-1", "rollback", "succeeded"),
    ], kinds
    # prod's promotion switched its four hosts one component at a time: the broker's host, the worker host, then
    # each application host for the hub and for iTop
    assert sorted(history[-1]["switched_hosts"]) == sorted(
        f"{PREFIX}-prod-{h}" for h in ("app1", "app2", "worker1", "data1")
    ), history[-1]

    # the hosts themselves: every application root of every prod host is on demo-1 and not locked any more
    for host, apps in {
        f"{PREFIX}-prod-app1": ("itop", "hub"),
        f"{PREFIX}-prod-app2": ("itop", "hub"),
        f"{PREFIX}-prod-worker1": ("worker",),
    }.items():
        for app in apps:
            link = subprocess.run(
                ["docker", "exec", host, "readlink", f"{ROOTS[app]}/current"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            assert link == "releases/demo-1", (host, app, link)
    # iTop's installer ran once per release on prod (on app1), never on app2, which got app1's compiled model
    setups = subprocess.run(
        ["docker", "exec", f"{PREFIX}-prod-app2", "sh", "-c",
         "grep -c 'compiled to' /srv/itop/shared/log/setup.log || true"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    assert setups in ("", "0"), setups

    # the drift check on the real hosts: prod as its rollback left it; dev's no-op promotion is one read that
    # confirms; a file of dev's iTop release edited by hand is drift, which refuses a promotion
    probe = json.loads(_itopctl(env, "status", "--probe", "--stage", "prod", "--json").stdout)[0]
    assert probe["drift"]["checked"] and probe["drift"]["drifted"] == [], probe["drift"]
    noop = _itopctl(env, "deploy", "demo-2")
    assert noop.returncode == 0 and "confirmed on 1 host(s)" in noop.stdout, noop.stdout + noop.stderr
    subprocess.run(
        ["docker", "exec", f"{PREFIX}-dev-1", "sh", "-c", "echo '// by hand' >> /srv/itop/current/index.php"],
        check=True,
    )
    drifted = json.loads(_itopctl(env, "status", "--probe", "--stage", "dev", "--json").stdout)[0]["drift"]
    assert [d.split(":")[0] for d in drifted["drifted"]] == [f"{PREFIX}-dev-1/itop"], drifted
    refused = _itopctl(env, "deploy", "demo-2")
    assert refused.returncode == 3 and "the tree of demo-2 changed" in refused.stderr, refused.stderr
