#!/usr/bin/env python3
"""Stress the release engine's crash safety: SIGKILL each operation at random moments, hundreds of times.

For every operation (prepare, activate, rollback, prune, lock, unlock), each run copies a prepared root, starts the
operation in a child process and kills it (kill -9) either after a random delay within the operation's measured
duration, or at a randomly chosen named crash point (``fsutil.crash_point``: the narrow windows between two durable
steps, which a random delay rarely hits). Then it checks what the kill left (current complete, the engine's view
agreeing with the disk), runs the same operation again and checks that it did what was asked and that journal and
disk agree (``tests/unit/release_crash_harness.py`` defines both checks). It prints how many runs violated an
invariant; the target is 0.

    .venv/bin/python tests/benchmarks/stress_release_kills.py --runs 500        # ~10 min on 2 cores
    .venv/bin/python tests/benchmarks/stress_release_kills.py --runs 50 --ops rollback,prune
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from release_crash_harness import (
    PENDING,
    Scenario,
    build_artifacts,
    build_root,
    check_after_kill,
    rerun_and_check,
    run_child,
    scenarios,
    start_child,
)

# The untargeted rollback moves one step back per run, by design: killed after it recorded the switch, its rerun is
# a second rollback, so there only the consistency checks apply. Every other operation must end as asked.
STRESSED = {
    "prepare": "prepare",
    "activate": "activate",
    "rollback": "rollback-to",
    "rollback-untargeted": "rollback",
    "prune": "prune",
    "lock": "lock",
    "unlock": "unlock",
}
DEFAULT_OPS = ("prepare", "activate", "rollback", "rollback-untargeted", "prune", "lock", "unlock")


def retarget(spec: dict[str, Any], src: Path, dst: Path) -> dict[str, Any]:
    text = json.dumps(spec).replace(str(src), str(dst))
    result: dict[str, Any] = json.loads(text)
    return result


def measure(template: Path, scenario: Scenario, spec: dict[str, Any], work: Path) -> float:
    """Median time of the operation itself in the child, as it reports it (5 unkilled runs)."""
    times = []
    for n in range(5):
        run_dir = work / f"measure-{n}"
        shutil.copytree(template, run_dir, symlinks=True)
        rc, out = run_child(retarget(spec, template, run_dir))
        if rc != 0:
            raise SystemExit(f"{scenario.name}: the operation fails even without a kill: {out[-400:]}")
        times.append(float(next(line for line in out.splitlines() if line.startswith("elapsed ")).split()[1]))
        shutil.rmtree(run_dir)
    return statistics.median(times)


def one_run(  # noqa: PLR0917 -- one run's inputs, passed by a thread pool
    template: Path, scenario: Scenario, spec: dict[str, Any], work: Path, index: int, window: float, seed: int
) -> tuple[str, list[str]]:
    rng = random.Random(seed * 1_000_003 + index)  # noqa: S311 -- reproducible test timings, not secrets
    run_dir = work / f"run-{index}"
    shutil.copytree(template, run_dir, symlinks=True)
    run_spec = retarget(spec, template, run_dir)
    root = Path(run_spec["root"])
    try:
        if rng.random() < 0.5 and scenario.crash_points:
            point = rng.choice(scenario.crash_points)
            rc, _out = run_child(run_spec, point)
            how = "crash point" if rc == -9 else "crash point not reached"
        else:
            child = start_child(run_spec)
            assert child.stdout is not None
            child.stdout.readline()  # imported, about to run the operation
            time.sleep(rng.uniform(0, window * 1.2))
            if child.poll() is None:
                os.kill(child.pid, signal.SIGKILL)
            child.communicate()
            how = "random kill" if child.returncode == -9 else "finished before the kill"
        problems = [f"after the kill: {p}" for p in check_after_kill(root)]
        journal = json.loads((root / ".journal.json").read_text())
        if journal.get(PENDING):
            how += " mid-change (intent pending)"
        recorded = not journal.get(PENDING) and any(
            e.get("event") == "rollback" and e.get("from") == "r3" for e in journal["history"]
        )
        if scenario.name == "rollback" and recorded:
            # The rollback was recorded before the kill: the rerun is a second, deliberate rollback.
            problems += rerun_and_check(root, Scenario("consistency", scenario.setup, "rollback"), run_spec)
            how += " (after the rollback was recorded)"
        else:
            problems += rerun_and_check(root, scenario, run_spec)
        return how, problems
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=500, help="killed runs per operation (default 500)")
    parser.add_argument("--ops", default=",".join(DEFAULT_OPS), help=f"comma-separated, among {', '.join(STRESSED)}")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    ops = [op.strip() for op in args.ops.split(",") if op.strip()]
    unknown = [op for op in ops if op not in STRESSED]
    if unknown or args.runs <= 0:
        parser.error(f"unknown operation(s) {unknown}: choose among {', '.join(STRESSED)}" if unknown else "--runs > 0")
    by_name = {s.name: s for s in scenarios()}
    print(f"seed {args.seed}, {args.runs} killed runs per operation, {args.jobs} in parallel")
    total_violations = 0
    with tempfile.TemporaryDirectory(prefix="stress-release-") as tmp:
        base = Path(tmp)
        artifacts = build_artifacts(base / "artifacts", files_per_release=40)
        for op in ops:
            scenario = by_name[STRESSED[op]]
            template_base = base / f"template-{op}"
            template, cache = build_root(template_base, scenario, artifacts)
            spec = scenario.spec(template, artifacts, cache)
            # The cache is shared (read-mostly): only the root is copied per run.
            spec_root_only = dict(spec)
            work = base / f"work-{op}"
            work.mkdir()
            window = measure(template, scenario, spec_root_only, work)
            started = time.perf_counter()
            kinds: Counter[str] = Counter()
            failures: list[tuple[int, list[str]]] = []
            with ThreadPoolExecutor(max_workers=args.jobs) as pool:
                futures = [
                    pool.submit(one_run, template, scenario, spec_root_only, work, i, window, args.seed)
                    for i in range(args.runs)
                ]
                for index, future in enumerate(futures):
                    how, problems = future.result()
                    kinds[how] += 1
                    if problems:
                        failures.append((index, problems))
            total_violations += len(failures)
            detail = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
            print(
                f"{op:20s} runs {args.runs:4d}  violations {len(failures):3d}  op {window * 1000:6.1f} ms  "
                f"[{detail}]  {time.perf_counter() - started:5.1f} s"
            )
            for index, problems in failures[:5]:
                print(f"    run {index}: {'; '.join(problems)[:400]}")
    print(f"violations: {total_violations}")
    return 1 if total_violations else 0


if __name__ == "__main__":
    sys.exit(main())
