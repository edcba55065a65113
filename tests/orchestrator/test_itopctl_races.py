"""Concurrent writers on both state stores: several itopctl processes adding, approving and rejecting the same thing
at the same moment end as one of them would alone (exactly one "added", the others "already there"), with no
traceback and exit code 0 for all; and a reader whose output is closed early exits quietly."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest
from itopctl.errors import ExitCode
from itopctl_support import Project, seed_deployed

PROCESSES = 8
ROUNDS = 3
ITOPCTL = str(Path(sys.executable).parent / "itopctl")


def _contender(project: Project, barrier: Any, results: Any, rounds: list[list[str]], user: str) -> None:
    """One process: for each round, wait for the others at the barrier, then run the round's command."""
    for args in rounds:
        barrier.wait(timeout=60)
        try:
            result = project.run(*args, user=user)
            results.put((args[0], result.code, result.out, result.err))
        except BaseException:  # an uncaught exception out of main() is the bug this test is about
            results.put((args[0], -1, "", traceback.format_exc()))


def _race(project: Project, rounds: list[list[str]], users: list[str]) -> list[tuple[str, int, str, str]]:
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(len(users))
    results = context.Queue()
    workers = [context.Process(target=_contender, args=(project, barrier, results, rounds, user)) for user in users]
    for worker in workers:
        worker.start()
    got = [results.get(timeout=120) for _ in range(len(users) * len(rounds))]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    return got


def test_concurrent_release_add_is_one_add(project: Project) -> None:
    with project.store():
        pass  # migrated once, before the race
    rounds = [["release", "add", str(project.manifest(f"race-{n}"))] for n in range(ROUNDS)]
    got = _race(project, rounds, [f"u{n}" for n in range(PROCESSES)])
    assert not [err for *_, err in got if "Traceback" in err or err], got
    assert all(code == ExitCode.OK for _, code, _, _ in got), got
    for n in range(ROUNDS):
        outs = [out for _, _, out, _ in got if f"race-{n} " in out]
        assert len(outs) == PROCESSES
        assert sum(" added " in out for out in outs) == 1, outs
        assert sum("already present, identical" in out for out in outs) == PROCESSES - 1, outs
    with project.store() as store:
        assert sorted(r.id for r in store.releases()) == [f"race-{n}" for n in range(ROUNDS)]


def test_concurrent_approve_and_reject_are_one_each(project: Project) -> None:
    for n in range(ROUNDS):
        project.add(f"r{n}")
    seed_deployed(project, "dev", "r0")
    approvals = [["approve", f"r{n}", "--stage", "prod", "--reason", "CAB ok"] for n in range(ROUNDS)]
    got = _race(project, approvals, ["bob"] * PROCESSES)  # the same approver: one approval each time
    assert all(code == ExitCode.OK and not err for _, code, _, err in got), got
    for n in range(ROUNDS):
        outs = [out for _, _, out, _ in got if f" r{n} " in out]
        assert sum(out.startswith("bob approved") for out in outs) == 1, outs
        assert sum("had already approved" in out for out in outs) == PROCESSES - 1, outs
    rejects = [["release", "reject", f"r{n}", "--reason", "CVE"] for n in range(ROUNDS)]
    got = _race(project, rejects, [f"u{n}" for n in range(PROCESSES)])
    assert all(code == ExitCode.OK and not err for _, code, _, err in got), got
    for n in range(ROUNDS):
        outs = [out for _, _, out, _ in got if f"release r{n} " in out]
        assert sum(out.strip() == f"release r{n} rejected" for out in outs) == 1, outs
        assert sum("was already rejected" in out for out in outs) == PROCESSES - 1, outs
    with project.store() as store:
        assert all(len(store.approvals(f"r{n}", "prod")) == 1 for n in range(ROUNDS))


@pytest.mark.parametrize("args", [["status"], ["history", "--json"], ["release", "list"], ["locks"]])
def test_read_command_whose_output_closes_early_exits_quietly(sqlite_project: Project, args: list[str]) -> None:
    """``itopctl status | head``: the reader is gone before itopctl writes; no BrokenPipeError traceback."""
    project = sqlite_project
    for n in range(3):
        seed_deployed(project, "dev", f"r{n}")
    read, write = os.pipe()
    os.close(read)  # the reader has gone already: the first write fails with EPIPE
    try:
        proc = subprocess.run(
            [ITOPCTL, *args],
            env={**os.environ, **project.env},
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
            timeout=60,
        )
    finally:
        os.close(write)
    assert proc.stderr == ""
    assert proc.returncode == ExitCode.PIPE_CLOSED == 141
