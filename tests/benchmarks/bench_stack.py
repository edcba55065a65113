"""The whole stack on the lab's prod: a full deploy of a new release, a no-op redeploy of the same release, a
rollback, and how a deploy grows from 1 to 4 application hosts; wall times and ratios from one run.

    .venv/bin/python tests/benchmarks/bench_stack.py [--app-hosts 1,2,4] [--keep] [--artifacts-dir DIR]

For each count N of application hosts (iTop + hub; prod also has a worker host and a data host), on a lab of its own
(prefix ``bench``, its own subnets, inventory in a temporary directory): demo-1 deployed on fresh hosts (prepare,
switch in the documented order, verify), then demo-2 deployed over it (the "full deploy of a new
release": artifacts fetched, venvs built, iTop compiled with its schema change, the hub migrated), demo-2 deployed
again (the no-op: every task run, the number that changed counted; target 0 changed and under 30% of the deploy),
and a rollback to demo-1 with the databases restored (target under 20% of the deploy).
Each phase is a plain ansible-playbook run of playbooks/stack.yml, as itopctl runs them (the switch by hand does
every component in order in one run). Prints a table per N and the deploy time's growth from the smallest N
(sub-linear: the time for 4 hosts under 4 times the time for 1).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ARTIFACTS = Path("/var/tmp/itopctl-lab-artifacts")  # the lab's default artifact store
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def sh(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, env=env)


def manifest_vars(release: str, directory: Path, artifacts: Path) -> Path:
    import yaml  # noqa: PLC0415

    data = yaml.safe_load((artifacts / "manifests" / f"{release}.yml").read_text())
    path = directory / f"{release}.json"
    path.write_text(json.dumps({"release_id": release, "release_manifest": data}))
    return path


def play(inventory: Path, phase: str, release: Path, *extra: str) -> tuple[float, int]:
    """One run of the stack playbook: its wall time and the number of changed tasks (summed over hosts)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "ANSIBLE_COLLECTIONS_PATH": str(ROOT / "collections"), "ANSIBLE_PIPELINING": "true"}  # fmt: skip
    started = time.monotonic()
    proc = sh(str(BIN / "ansible-playbook"), "-i", str(inventory), str(ROOT / "playbooks/stack.yml"),
              "-e", f"deploy_phase={phase}", "-e", f"@{release}", *extra, env=env)  # fmt: skip
    took = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"{phase} failed (rc {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
    return took, sum(int(m.group(3)) for m in RECAP.finditer(proc.stdout))


def deploy(inventory: Path, release: Path) -> tuple[float, int, str]:
    """prepare, switch, verify: the total wall time, the changed tasks, and each phase's time (printed)."""
    total, changed, phases = 0.0, 0, []
    for phase in ("prepare", "switch", "verify"):
        took, n = play(inventory, phase, release)
        total += took
        changed += n
        phases.append(f"{phase} {took:.1f}")
    return total, changed, ", ".join(phases)


def run(count: int, keep: bool, artifacts: Path) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-stack-") as tmp:
        work = Path(tmp)
        (work / "group_vars/all").mkdir(parents=True)
        (work / "group_vars/all/stack.yml").symlink_to(ROOT / "inventories/common/stack.yml")
        up = sh(str(BIN / "itopctl"), "lab", "up", "--stage", "prod", "--prod-app-hosts", str(count),
                "--prefix", "bench", "--subnet-base", "172.31.81.0/24", "--inventory-dir", str(work),
                "--artifacts-dir", str(artifacts))  # fmt: skip
        if up.returncode != 0:
            sys.exit(f"lab up failed: {up.stdout}{up.stderr}")
        inventory = work / "prod.yml"
        try:
            r1, r2 = manifest_vars("demo-1", work, artifacts), manifest_vars("demo-2", work, artifacts)
            first, _, first_phases = deploy(inventory, r1)
            full, full_changed, full_phases = deploy(inventory, r2)
            noop, noop_changed, noop_phases = deploy(inventory, r2)
            rollback, _ = play(inventory, "rollback", r1, "-e", "rollback_to=demo-1", "-e", "restore_db=true")
            verify, _ = play(inventory, "verify", r1)
        finally:
            if not keep:
                sh(str(BIN / "itopctl"), "lab", "down", "--prefix", "bench")
    row = {"app_hosts": count, "first": first, "full": full, "full_changed": full_changed, "noop": noop,
           "noop_changed": noop_changed, "rollback": rollback, "verify_after_rollback": verify}  # fmt: skip
    print(f"\n{count} application host(s) (+ worker1, data1):")
    print(f"  first deploy of demo-1 on fresh hosts  {first:7.1f} s   ({first_phases})")
    print(f"  deploy of demo-2 (new release)         {full:7.1f} s   {full_changed} changed   ({full_phases})")
    print(
        f"  no-op redeploy of demo-2               {noop:7.1f} s   {noop_changed} changed   "
        f"{noop / full:5.1%} of the deploy (target < 30%, 0 changed)   ({noop_phases})"
    )
    print(
        f"  rollback to demo-1, dumps restored     {rollback:7.1f} s   "
        f"{rollback / full:5.1%} of the deploy (target < 20%)"
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--app-hosts", default="1,2,4", help="the counts of application hosts (default 1,2,4)")
    parser.add_argument("--keep", action="store_true", help="leave the last lab up")
    parser.add_argument("--artifacts-dir", type=Path, default=ARTIFACTS, help=f"artifact store (default {ARTIFACTS})")
    args = parser.parse_args()
    counts = sorted({int(n) for n in args.app_hosts.split(",")})
    build = sh(str(BIN / "python"), str(ROOT / "scripts/build-releases.py"), "--out", str(args.artifacts_dir))
    if build.returncode != 0:
        sys.exit(build.stdout + build.stderr)
    rows = [run(n, args.keep and n == counts[-1], args.artifacts_dir) for n in counts]
    base = rows[0]
    print("\ngrowth of the deploy of a new release with the application hosts:")
    for row in rows:
        ratio = row["full"] / base["full"]
        hosts = row["app_hosts"] / base["app_hosts"]
        print(
            f"  {row['app_hosts']} host(s): {row['full']:7.1f} s = {ratio:4.2f} x the {base['app_hosts']}-host time "
            f"for {hosts:3.1f} x the hosts ({'sub-linear' if ratio < hosts or hosts == 1 else 'NOT sub-linear'})"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
