#!/usr/bin/env python3
"""Benchmark itopctl (standalone: ``.venv/bin/python tests/benchmarks/bench_itopctl.py [--reps 7] [--pg URL]``).

1. Runner overhead: the same playbook through itopctl's runner (ansible-runner, event handler, JSON-lines log,
   run directory) and through plain ``ansible-playbook``, alternated, several repetitions; prints the median
   ratio (target <= 1.10).
2. ``itopctl status`` and ``itopctl history`` as real processes against a state store holding 10,000 recorded
   deployments (target < 300 ms each), on SQLite and, with ``--pg``, PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import psycopg
from itopctl.runner import PlaybookRunner
from itopctl.store import Store, iso, utcnow

BIN = Path(sys.executable).parent
PLAYBOOK = """\
- name: Benchmark play
  hosts: all
  gather_facts: false
  tasks:
""" + "".join(
    f"""    - name: Step {n}
      ansible.builtin.command: "true"
      changed_when: false
"""
    for n in range(10)
)
STAGES = ("dev", "test", "pprd", "prod")


def runner_overhead(work: Path, reps: int) -> dict[str, float]:
    playbook = work / "bench.yml"
    playbook.write_text(PLAYBOOK)
    inventory = work / "hosts.ini"
    inventory.write_text(
        "".join(f"b{n} ansible_connection=local ansible_python_interpreter={sys.executable}\n" for n in range(1, 3))
    )
    env = {k: v for k, v in os.environ.items() if k.startswith("ANSIBLE_") or k in ("PATH", "HOME", "LANG")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    runner = PlaybookRunner(work / "runs", keep=reps + 1, environ=env)
    extravars = {"release_id": "bench"}
    plain_times: list[float] = []
    runner_times: list[float] = []
    ratios: list[float] = []
    # one warm-up of each (page cache, pyc files)
    runner.run(phase="bench", playbook=playbook, inventory=inventory, extravars=extravars)
    subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), "-e", json.dumps(extravars),
                    str(playbook)], env=env, capture_output=True, check=True)  # fmt: skip
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), "-e", json.dumps(extravars),
                        str(playbook)], env=env, capture_output=True, check=True)  # fmt: skip
        plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = runner.run(phase="bench", playbook=playbook, inventory=inventory, extravars=extravars)
        through = time.perf_counter() - t0
        assert result.ok, result
        plain_times.append(plain)
        runner_times.append(through)
        ratios.append(through / plain)
    return {
        "plain_median_s": statistics.median(plain_times),
        "itopctl_runner_median_s": statistics.median(runner_times),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


def seed(url: str, count: int) -> None:
    with Store.open(url) as store:
        now = utcnow()
        with store.transaction():
            for n in range(40):
                store.execute(
                    "INSERT INTO releases (id, manifest, digest, added_by, added_at) VALUES (?, ?, ?, ?, ?)",
                    (f"r{n}", json.dumps({"id": f"r{n}", "components": {}}), "0" * 64, "bench", iso(now)),
                )
            rows = []
            for i in range(count):
                stage = STAGES[i % len(STAGES)]
                started = now - timedelta(minutes=count - i)
                rows.append((
                    "promote", f"r{(i // 4) % 40}", stage, f"r{(i // 4 - 1) % 40}", f"user{i % 7}", iso(started),
                    iso(started + timedelta(seconds=42)), 42.0, "succeeded", "verify", 1, None,
                    json.dumps([f"{stage}-1", f"{stage}-2"]), json.dumps([f"{stage}-1", f"{stage}-2"]),
                    json.dumps([f"id-{i}-prepare", f"id-{i}-switch", f"id-{i}-verify"]), "ok",
                ))  # fmt: skip
            sql = (
                "INSERT INTO deployments (kind, release_id, stage, from_release, started_by, started_at, finished_at, "
                "duration, result, phase, verified, stage_release, hosts, switched_hosts, runner_idents, message) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            )
            if store.dialect == "postgresql":
                with store._conn.cursor() as cur:
                    cur.executemany(sql.replace("?", "%s"), rows)
            else:
                store._conn.executemany(sql, rows)
            for n, stage in enumerate(STAGES):
                store.execute(
                    "INSERT INTO stage_state (stage, current_release, previous_release, deployment_id, updated_at, "
                    "updated_by, health) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (stage, f"r{n + 1}", f"r{n}", count - n, iso(now), "bench", "healthy"),
                )
        assert len(store.rows("SELECT id FROM deployments")) == count


def time_command(args: list[str], env: dict[str, str], reps: int) -> dict[str, float]:
    """Wall time of whole processes, and their CPU time (user + system: what the machine's load cannot inflate)."""
    times: list[float] = []
    cpu: list[float] = []
    for _ in range(reps + 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run([str(BIN / "itopctl"), *args], env=env, capture_output=True, check=False)
        times.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        assert proc.returncode == 0, proc.stderr
    times, cpu = times[1:], cpu[1:]  # the first one warms the caches
    return {
        "median_ms": statistics.median(times) * 1000,
        "max_ms": max(times) * 1000,
        "cpu_median_ms": statistics.median(cpu) * 1000,
    }


def commands(url: str, work: Path, reps: int) -> dict[str, dict[str, float]]:
    pipeline = work / "pipeline.yml"
    pipeline.write_text(
        "stages: [dev, test, pprd, prod]\ndefaults:\n  playbooks: {prepare: a, switch: a, verify: a, rollback: a}\n"
    )
    env = {**os.environ, "ITOPCTL_STATE_URL": url, "ITOPCTL_PIPELINE": str(pipeline)}
    return {
        "status": time_command(["status"], env, reps),
        "status --json": time_command(["status", "--json"], env, reps),
        "history (last 50)": time_command(["history"], env, reps),
        "history --stage prod --json": time_command(["history", "--stage", "prod", "--json"], env, reps),
        "history --limit 0 (all 10,000)": time_command(["history", "--limit", "0"], env, reps),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--deployments", type=int, default=10_000)
    parser.add_argument("--pg", help="also time the commands on this PostgreSQL URL (a scratch schema is used)")
    parser.add_argument("--skip-runner", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-itopctl-") as tmp:
        work = Path(tmp)
        if not args.skip_runner:
            figures = runner_overhead(work, args.reps)
            print(f"runner overhead ({args.reps} alternated runs, 10 tasks x 2 local hosts):")
            print(f"  plain ansible-playbook  median {figures['plain_median_s']:.3f} s")
            print(f"  itopctl runner          median {figures['itopctl_runner_median_s']:.3f} s")
            verdict = "OK" if figures["ratio_median"] <= 1.10 else "ABOVE TARGET"
            print(
                f"  ratio median {figures['ratio_median']:.3f} (min {figures['ratio_min']:.3f}, "
                f"max {figures['ratio_max']:.3f}); target <= 1.10: {verdict}"
            )
        targets = [("sqlite", f"sqlite:///{work / 'state.db'}")]
        schema = None
        if args.pg:
            schema = f"bench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(args.pg, autocommit=True) as conn:
                conn.execute(f"CREATE SCHEMA {schema}")
            sep = "&" if "?" in args.pg else "?"
            targets.append(("postgresql", f"{args.pg}{sep}options=-csearch_path%3D{schema}"))
        try:
            for name, url in targets:
                seed(url, args.deployments)
                print(f"commands with {args.deployments:,} deployments on {name} (median of {args.reps} processes):")
                for command, figures in commands(url, work, args.reps).items():
                    verdict = "OK" if figures["median_ms"] < 300 else "ABOVE TARGET"
                    print(
                        f"  itopctl {command:34s} {figures['median_ms']:6.0f} ms (max {figures['max_ms']:.0f}, "
                        f"cpu {figures['cpu_median_ms']:.0f} ms); target < 300 ms: {verdict}"
                    )
        finally:
            if schema and args.pg:
                with psycopg.connect(args.pg, autocommit=True) as conn:
                    conn.execute(f"DROP SCHEMA {schema} CASCADE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
