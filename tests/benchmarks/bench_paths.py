"""The operator's critical paths through itopctl on the lab, for one application host (dev: the whole stack on one
host) and for prod's whole stack (an application host, a worker host, a data host); wall times and ratios from one run.

    .venv/bin/python tests/benchmarks/bench_paths.py [--stages dev,prod] [--tree DIR] [--keep]

For each stage, on a lab of its own (prefix ``paths``, its own subnets, pipeline, state store and inventory in a
temporary directory; no gates): the floor (a playbook of one ``ping`` per host: connection and start-up), demo-1
deployed on fresh hosts, then the figures:

- deploy: ``itopctl deploy demo-2`` (a new release: prepare, switch in the documented order, verify);
- no-op (itopctl): ``itopctl deploy demo-2`` again (target: under 15% of the deploy, one short run at most);
- no-op (ansible-playbook): the three phases of playbooks/stack.yml run again by hand (target: changed=0, under 30%);
- drift check: ``itopctl status --probe`` (every root's current release and release-tree checksum);
- rollback, code only: demo-2's artifacts deployed again as a release of their own (``demo-2-again``: the same
  schemas, so no database moves), then ``itopctl rollback STAGE --to demo-2`` (switch, reload, verify; targets: under
  10% of the deploy for prod, within 2 x (floor + the services' reload time) for a stage);
- rollback across the schema change: ``itopctl rollback STAGE --to demo-1 --restore-db`` (both databases restored
  from their dumps, then verify): the same ratios, printed beside them (a restore is more than a reload);
- reload: the stack's services reloaded or restarted by hand on every host at once (php-fpm, nginx, the hub, the
  workers), the part of a rollback no tool can skip.

``--tree DIR`` runs another checkout's itopctl, playbooks and collection (e.g. a worktree of the previous commit,
``git worktree add /tmp/before HEAD~1``) with this venv: the figures before and after a change, from the same script.
The last line is the figures as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
PREFIX = "paths"
SUBNETS = "172.31.91.0/24"
LAB_PIPELINE = "inventories/lab/pipeline.yml"
AGAIN = "demo-2-again"  # demo-2's artifacts as a release of their own: a rollback to demo-2 is code only
RELOAD = re.compile(r"^(php[\d.]+-fpm|nginx|unistra-.*|.*hub.*|.*worker.*|.*celery.*)\.service$")

PIPELINE = """\
version: 1
ansible:
  collections_path: {tree}/collections
  environment: {{ANSIBLE_PIPELINING: "true"}}
{strategy}defaults:
  inventory: "{{stage}}.yml"
  playbooks:
    prepare: {tree}/playbooks/stack.yml
    switch: {tree}/playbooks/stack.yml
    verify: {tree}/playbooks/stack.yml
    rollback: {tree}/playbooks/stack.yml
  switch_order: [rabbitmq, workers, hub, itop_web]
  batch_size: 1
  auto_rollback: true
  release_roots: {{itop: /srv/itop, hub: /srv/unistra/hub, worker: /srv/unistra/worker}}
stages:
  - name: {stage}
"""

PING = """\
- name: The floor, one ping per host
  hosts: all
  gather_facts: false
  tasks:
    - name: Ping
      ansible.builtin.ping:
"""


def sh(*argv: str, env: dict[str, str] | None = None, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, env=env, timeout=timeout)


class Lab:
    """One stage of the lab, driven through the itopctl and the playbooks of ``tree``."""

    def __init__(self, tree: Path, stage: str, work: Path, artifacts: Path) -> None:
        import yaml  # noqa: PLC0415

        self.tree, self.stage, self.work, self.artifacts = tree, stage, work, artifacts
        (work / "group_vars/all").mkdir(parents=True)
        (work / "group_vars/all/stack.yml").symlink_to(tree / "inventories/common/stack.yml")
        # the Ansible strategy the tree's lab pipeline runs with (linear before it had the setting)
        self.strategy = str(yaml.safe_load((tree / LAB_PIPELINE).read_text())["ansible"].get("strategy", "linear"))
        strategy = f"  strategy: {self.strategy}\n" if self.strategy != "linear" else ""
        (work / "pipeline.yml").write_text(PIPELINE.format(tree=tree, stage=stage, strategy=strategy))
        (work / "ping.yml").write_text(PING)
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(tree / "orchestrator"),
            "ANSIBLE_COLLECTIONS_PATH": str(tree / "collections"),
            "ANSIBLE_PIPELINING": "true",
            "ITOPCTL_PIPELINE": str(work / "pipeline.yml"),
            "ITOPCTL_STATE_URL": f"sqlite:///{work / 'state.db'}",
            "ITOPCTL_RUNS_DIR": str(work / "runs"),
            "ITOPCTL_USER": "bench",
        }
        self.inventory = work / f"{stage}.yml"
        if self.strategy == "mitogen":  # the by-hand runs get what itopctl gives its runs
            from itopctl.pipeline import mitogen_environment  # noqa: PLC0415 - this checkout's itopctl, this venv

            self.env.update(mitogen_environment())

    def itopctl(self, *args: str) -> tuple[float, str]:
        """One itopctl command of the tree: its wall time and its output (stops the benchmark on a failure)."""
        code = "import sys; from itopctl.console import main; sys.exit(main())"
        started = time.monotonic()
        proc = sh(str(BIN / "python"), "-c", code, *args, env=self.env)
        took = time.monotonic() - started
        if proc.returncode != 0:
            sys.exit(
                f"itopctl {' '.join(args)} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
            )
        return took, (proc.stdout + proc.stderr).strip()

    def playbook(self, playbook: Path, *extra: str) -> tuple[float, int]:
        """One ansible-playbook run: its wall time and the changed tasks summed over hosts."""
        started = time.monotonic()
        proc = sh(str(BIN / "ansible-playbook"), "-i", str(self.inventory), str(playbook), *extra, env=self.env)
        took = time.monotonic() - started
        if proc.returncode != 0:
            sys.exit(
                f"{playbook.name} {extra} failed (rc {proc.returncode}):\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}"
            )
        return took, sum(int(m.group(3)) for m in RECAP.finditer(proc.stdout))

    def hosts(self) -> list[str]:
        import yaml  # noqa: PLC0415

        found: set[str] = set()

        def walk(group: dict[str, Any]) -> None:
            found.update((group.get("hosts") or {}).keys())
            for child in (group.get("children") or {}).values():
                walk(child)

        walk(yaml.safe_load(self.inventory.read_text())["all"])
        return sorted(found)

    def reload(self) -> float:
        """The stack's own services reloaded (php-fpm, nginx) or restarted (the hub, the workers) on every host at
        once, as a rollback does last: the time no orchestration can take off."""

        def one(host: str) -> None:
            listed = sh("docker", "exec", host, "systemctl", "list-units", "--type=service", "--state=running",
                        "--no-legend", "--plain")  # fmt: skip
            units = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]
            units = [u for u in units if RELOAD.match(u)]
            if units:
                done = sh("docker", "exec", host, "systemctl", "reload-or-restart", *units)
                if done.returncode != 0:
                    sys.exit(f"reload on {host} failed: {done.stderr}")

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(one, self.hosts()))
        return time.monotonic() - started

    def manifest(self, release: str) -> dict[str, Any]:
        """The manifest the tree's builder wrote for ``release``."""
        import yaml  # noqa: PLC0415

        data: dict[str, Any] = yaml.safe_load((self.artifacts / "manifests" / f"{release}.yml").read_text())
        return data

    def add_again(self, release: str, again: str) -> None:
        """Add ``release``'s manifest again as the release ``again``: the same artifacts, so the same schemas (a
        rollback between them moves no database)."""
        import yaml  # noqa: PLC0415

        data = self.manifest(release)
        data["id"] = again
        data["description"] = f"{release}'s artifacts again (the benchmark's code-only rollback)"
        path = self.work / f"{again}.yml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        self.itopctl("release", "add", str(path))

    def manifest_vars(self, release: str) -> Path:
        path = self.work / f"{release}.json"
        path.write_text(json.dumps({"release_id": release, "release_manifest": self.manifest(release)}))
        return path


def run(tree: Path, stage: str, artifacts: Path, keep: bool, lab_at: tuple[str, str]) -> dict[str, float | int | str]:
    prefix, subnets = lab_at
    with tempfile.TemporaryDirectory(prefix=f"bench-paths-{stage}-") as tmp:
        lab = Lab(tree, stage, Path(tmp), artifacts)
        lab.itopctl("lab", "up", "--stage", stage, "--prefix", prefix, "--subnet-base", subnets,
                    "--inventory-dir", tmp, "--artifacts-dir", str(artifacts))  # fmt: skip
        try:
            for release in ("demo-1", "demo-2"):
                lab.itopctl("release", "add", str(artifacts / "manifests" / f"{release}.yml"))
            floor, _ = lab.playbook(lab.work / "ping.yml")
            first, _ = lab.itopctl("deploy", "demo-1")
            deploy, _ = lab.itopctl("deploy", "demo-2")
            noop, noop_said = lab.itopctl("deploy", "demo-2")
            plain, plain_changed = 0.0, 0
            r2 = lab.manifest_vars("demo-2")
            for phase in ("prepare", "switch", "verify"):
                took, changed = lab.playbook(
                    tree / "playbooks/stack.yml", "-e", f"deploy_phase={phase}", "-e", f"@{r2}"
                )
                plain += took
                plain_changed += changed
            drift, drift_said = lab.itopctl("status", "--probe", "--stage", stage)
            lab.add_again("demo-2", AGAIN)
            lab.itopctl("deploy", AGAIN)
            rollback_code, _ = lab.itopctl("rollback", stage, "--to", "demo-2")
            rollback, _ = lab.itopctl("rollback", stage, "--to", "demo-1", "--restore-db")
            reload = lab.reload()
            floor_after, _ = lab.playbook(lab.work / "ping.yml")
            hosts = len(lab.hosts())
        finally:
            if not keep:
                sh(str(BIN / "itopctl"), "lab", "down", "--prefix", prefix)
    floor = min(floor, floor_after)
    row: dict[str, float | int | str] = {
        "stage": stage, "floor": floor, "first_deploy": first, "deploy": deploy, "noop_itopctl": noop,
        "noop_plain": plain, "noop_plain_changed": plain_changed, "drift_check": drift,
        "rollback_code": rollback_code, "rollback": rollback, "reload": reload, "strategy": lab.strategy,
    }  # fmt: skip
    print(f"\n{stage} ({hosts} host(s)), itopctl and playbooks of {tree}, Ansible strategy {lab.strategy}:")
    print(f"  floor: a ping per host                 {floor:7.1f} s")
    print(f"  first deploy of demo-1 (fresh hosts)   {first:7.1f} s")
    print(f"  deploy of demo-2                       {deploy:7.1f} s")
    print(f"  no-op, itopctl deploy demo-2 again     {noop:7.1f} s   {noop / deploy:6.1%} of the deploy (target < 15%)")
    said = [line for line in noop_said.splitlines() if line.startswith(("nothing to do", "done", "NOTHING"))]
    print(f"      it said: {said[-1] if said else noop_said.splitlines()[-1:]}")
    print(
        f"  no-op, ansible-playbook by hand        {plain:7.1f} s   {plain / deploy:6.1%} of the deploy "
        f"(target < 30%), {plain_changed} changed (target 0)"
    )
    print(f"  drift check, itopctl status --probe    {drift:7.1f} s   {drift / deploy:6.1%} of the deploy")
    for line in drift_said.splitlines()[:1]:
        print(f"      it said: {line}")
    budget = 2 * (floor + reload)
    print(
        f"  rollback, code only, to demo-2         {rollback_code:7.1f} s   {rollback_code / deploy:6.1%} of the "
        f"deploy (target < 10% for prod); {rollback_code / budget:4.2f} x the budget 2 x (floor + reload) = "
        f"{budget:.1f} s (target <= 1)"
    )
    print(
        f"  rollback to demo-1, dumps restored     {rollback:7.1f} s   {rollback / deploy:6.1%} of the deploy; "
        f"{rollback / budget:4.2f} x the budget"
    )
    print(f"  reload of the stack's services         {reload:7.1f} s")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default="dev,prod", help="the lab's stages to measure (default dev,prod)")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout to measure (default: this one)")
    parser.add_argument("--keep", action="store_true", help="leave the last stage's lab up")
    parser.add_argument("--prefix", default=PREFIX, help=f"the lab's prefix (default {PREFIX})")
    parser.add_argument("--subnet-base", default=SUBNETS, help=f"the lab's first subnet (default {SUBNETS})")
    args = parser.parse_args()
    tree = args.tree.resolve()
    stages = [s for s in args.stages.split(",") if s]
    # the tree's own builder, into a store of its own (two trees never share artifacts)
    artifacts = Path(f"/var/tmp/bench-paths-artifacts-{hashlib.sha256(str(tree).encode()).hexdigest()[:10]}")
    build = sh(str(BIN / "python"), str(tree / "scripts/build-releases.py"), "--out", str(artifacts))
    if build.returncode != 0:
        sys.exit(build.stdout + build.stderr)
    lab_at = (args.prefix, args.subnet_base)
    rows = [run(tree, stage, artifacts, args.keep and stage == stages[-1], lab_at) for stage in stages]
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
