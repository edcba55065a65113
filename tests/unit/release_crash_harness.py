"""Kill the release engine in the middle of its operations and check what it leaves behind.

Shared by the deterministic tests (``test_release_crash.py``: a SIGKILL at each named crash point) and the random
stress command (``tests/benchmarks/stress_release_kills.py``: a SIGKILL at a random moment). A scenario builds a root
in this process with the engine itself, then runs one operation in a child process, which is the one killed.

Invariants after a kill (before any repair): ``current`` names a complete release, the journal is readable and the
engine's view (``info``, which applies the recovery in memory) agrees with the disk. After the same operation is
run again: it succeeded, did what was asked, and the journal and the disk agree exactly (no intent left, every
journaled release on disk and every release directory journaled, one active release and it is ``current``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COLLECTIONS = Path(__file__).resolve().parents[2] / "collections"
if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))

from ansible_collections.unistra.itop.plugins.module_utils.fsutil import CRASH_ENV  # noqa: E402
from ansible_collections.unistra.itop.plugins.module_utils.release import (  # noqa: E402
    JOURNAL_NAME,
    PENDING,
    ReleaseManager,
    load_journal,
)

MANIFEST = "MANIFEST.json"
OWNER = "crash-test"

# The child: run one engine operation given as JSON, print its result as JSON. "ready" first, so that the stress
# command can time its kill from the moment the engine is imported, and "elapsed" to know how long the operation
# itself takes.
CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.unistra.itop.plugins.module_utils.release import ReleaseError, ReleaseManager
spec = json.loads(sys.argv[2])
print("ready", flush=True)
start = time.perf_counter()
manager = ReleaseManager(spec["root"], owner_name=spec["owner"])
try:
    result = getattr(manager, spec["op"])(*spec.get("args", []), **spec.get("kwargs", {}))
except ReleaseError as exc:
    print(json.dumps({"error": str(exc)}))
    sys.exit(3)
print(f"elapsed {time.perf_counter() - start:.6f}")
print(json.dumps(result))
"""


def _tar_gz(path: Path, files: dict[str, bytes]) -> None:
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            tar.addfile(info, io.BytesIO(data))


def build_artifacts(directory: Path, versions: int = 6, files_per_release: int = 40) -> dict[str, dict[str, str]]:
    """Release archives r1..rN; each carries a MANIFEST (name -> sha256) so that completeness can be checked."""
    directory.mkdir(parents=True, exist_ok=True)
    artifacts: dict[str, dict[str, str]] = {}
    for number in range(1, versions + 1):
        rid = f"r{number}"
        files = {f"app/file{i:03d}.txt": f"{rid} file {i}\n".encode() * 50 for i in range(files_per_release)}
        files["VERSION"] = f"{rid}\n".encode()
        manifest = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
        files[MANIFEST] = json.dumps(manifest, sort_keys=True).encode()
        path = directory / f"{rid}.tar.gz"
        _tar_gz(path, files)
        artifacts[rid] = {"uri": f"file://{path}", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return artifacts


def release_complete(path: Path) -> str | None:
    """None if the release directory holds every file of its MANIFEST with the right content, else why not."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        return f"{path.name}: no readable manifest ({exc})"
    for name, digest in manifest.items():
        try:
            if hashlib.sha256((path / name).read_bytes()).hexdigest() != digest:
                return f"{path.name}: {name} has other content"
        except OSError:
            return f"{path.name}: {name} is missing"
    return None


@dataclass
class Scenario:
    """One operation to interrupt: how to build the root before it, what to run, what must hold after the rerun."""

    name: str
    setup: Callable[[ReleaseManager, dict[str, dict[str, str]], Path], None]
    op: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    # (root, engine info after the rerun, journal) -> violations of what the operation was asked to do
    goal: Callable[[Path, dict[str, Any], dict[str, Any]], list[str]] = lambda _r, _i, _j: []
    crash_points: tuple[str, ...] = ()

    def spec(self, root: Path, artifacts: dict[str, dict[str, str]], cache: Path) -> dict[str, Any]:
        kwargs = dict(self.kwargs)
        if self.op == "prepare":
            kwargs["cache_dir"] = str(cache)
            args = [self.args[0], [artifacts[a] for a in self.args[1]]]
        else:
            args = list(self.args)
        if self.op == "prune" and kwargs.pop("with_cache", False):
            kwargs["cache_dir"] = str(cache)
        return {"root": str(root), "owner": OWNER, "op": self.op, "args": args, "kwargs": kwargs}


def _prepare(mgr: ReleaseManager, arts: dict[str, dict[str, str]], cache: Path, *rids: str) -> None:
    for rid in rids:
        mgr.prepare(rid, [arts[rid]], cache_dir=str(cache))


def _activate_chain(mgr: ReleaseManager, arts: dict[str, dict[str, str]], cache: Path, *rids: str) -> None:
    for rid in rids:
        _prepare(mgr, arts, cache, rid)
        mgr.activate(rid)


def _expect(condition: bool, message: str) -> list[str]:
    return [] if condition else [message]


def _state_of(info: dict[str, Any], rid: str) -> str | None:
    return next((r["state"] for r in info["releases"] if r["id"] == rid), None)


def _lock_id(info: dict[str, Any]) -> str | None:
    return (info.get("lock") or {}).get("lock_id")


JSON_WRITES = tuple(f"write_json:before_rename#{n}" for n in (1, 2))


def scenarios() -> list[Scenario]:
    prepare_points = ("prepare:unpacked", "prepare:intent", "prepare:acted", "prepare:done", *JSON_WRITES)
    switch_points = ("{op}:intent", "{op}:acted", "{op}:done", *JSON_WRITES)
    return [
        Scenario(
            "prepare",
            lambda m, a, c: _activate_chain(m, a, c, "r1"),
            "prepare",
            ["r2", ["r2"]],
            goal=lambda _r, i, _j: (
                _expect(i["current"] == "r1", f"current is {i['current']}, not r1")
                + _expect(_state_of(i, "r2") == "prepared", f"r2 is {_state_of(i, 'r2')}, not prepared")
            ),
            crash_points=prepare_points,
        ),
        Scenario(
            "prepare-over-failed",
            lambda m, a, c: (_activate_chain(m, a, c, "r1"), _prepare(m, a, c, "r2"), m.mark_failed("r2")),
            "prepare",
            ["r2", ["r3"]],  # a failed release may be rebuilt, even from other artifacts
            goal=lambda r, i, _j: (
                _expect(_state_of(i, "r2") == "prepared", f"r2 is {_state_of(i, 'r2')}")
                + _expect((r / "releases/r2/VERSION").read_text() == "r3\n", "r2 does not hold the new artifact")
            ),
            crash_points=("prepare:discarded", *prepare_points),
        ),
        Scenario(
            "activate",
            lambda m, a, c: (_activate_chain(m, a, c, "r1"), _prepare(m, a, c, "r2")),
            "activate",
            ["r2"],
            goal=lambda _r, i, _j: (
                _expect(i["current"] == "r2", f"current is {i['current']}, not r2")
                + _expect(i["previous"] == "r1", f"previous is {i['previous']}, not r1")
                + _expect(_state_of(i, "r1") == "inactive", f"r1 is {_state_of(i, 'r1')}")
            ),
            crash_points=tuple(p.format(op="activate") for p in switch_points),
        ),
        Scenario(
            "rollback",
            lambda m, a, c: _activate_chain(m, a, c, "r1", "r2", "r3"),
            "rollback",
            kwargs={"reason": "incident"},
            # A retried rollback must end where the first one was going: r2, never forward to r3 or further to r1.
            goal=lambda _r, i, _j: (
                _expect(i["current"] == "r2", f"current is {i['current']}, not r2")
                + _expect(_state_of(i, "r3") == "bad", f"r3 is {_state_of(i, 'r3')}, not bad")
                + _expect(_state_of(i, "r2") == "active", f"r2 is {_state_of(i, 'r2')}, not active")
            ),
            # Not "rollback:done": killed once the rollback is recorded, it is finished, as if the kill came after
            # the module returned; a rollback without a target then goes one step further, as documented. A retry
            # that must be idempotent names its target (itopctl does): see "rollback-to".
            crash_points=tuple(p.format(op="rollback") for p in switch_points if p != "{op}:done"),
        ),
        Scenario(
            "rollback-to",
            lambda m, a, c: _activate_chain(m, a, c, "r1", "r2", "r3"),
            "rollback",
            ["r1"],
            goal=lambda _r, i, _j: (
                _expect(i["current"] == "r1", f"current is {i['current']}, not r1")
                + _expect(_state_of(i, "r3") == "bad", f"r3 is {_state_of(i, 'r3')}, not bad")
            ),
            crash_points=tuple(p.format(op="rollback") for p in switch_points),
        ),
        Scenario(
            "prune",
            lambda m, a, c: _activate_chain(m, a, c, "r1", "r2", "r3", "r4", "r5"),
            "prune",
            kwargs={"keep": 1, "with_cache": True},
            goal=lambda r, i, _j: (
                [
                    f"{rid} is still there"
                    for rid in ("r1", "r2", "r3")
                    if (r / "releases" / rid).exists() or _state_of(i, rid)
                ]
                + _expect(i["current"] == "r5", f"current is {i['current']}")
            ),
            crash_points=(
                "prune:intent",
                "prune:removed#1",
                "prune:removed#2",
                "prune:acted",
                "prune:done",
                *JSON_WRITES,
            ),
        ),
        Scenario(
            "lock",
            lambda m, a, c: _activate_chain(m, a, c, "r1"),
            "lock",
            kwargs={"reason": "deploy", "lock_id": "token-1"},
            goal=lambda _r, i, _j: _expect(_lock_id(i) == "token-1", f"lock is {_lock_id(i)}, not token-1"),
            crash_points=("lock:intent", "lock:acted", "lock:done", *JSON_WRITES, "write_json:before_rename#3"),
        ),
        Scenario(
            "lock-without-token",
            lambda m, a, c: _activate_chain(m, a, c, "r1"),
            "lock",
            kwargs={"reason": "deploy"},
            # Killed after the lock file was written but before the journal said so, the taker never learned its
            # token: its owner's retry takes the lock again. (Killed later, the lock was taken and recorded: without
            # a lock_id, as without a kill, a second lock is refused; itopctl always passes its lock_id.)
            goal=lambda _r, i, _j: _expect(
                (i.get("lock") or {}).get("owner") == OWNER, f"lock is held by {(i.get('lock') or {}).get('owner')}"
            ),
            crash_points=("lock:intent", "lock:acted"),
        ),
        Scenario(
            "unlock",
            lambda m, a, c: (_activate_chain(m, a, c, "r1"), m.lock(reason="deploy", lock_id="token-1")),
            "unlock",
            kwargs={"lock_id": "token-1"},
            goal=lambda _r, i, _j: _expect(i.get("lock") is None, f"still locked: {i.get('lock')}"),
            crash_points=("unlock:intent", "unlock:acted", "unlock:done", *JSON_WRITES),
        ),
    ]


def build_root(base: Path, scenario: Scenario, artifacts: dict[str, dict[str, str]]) -> tuple[Path, Path]:
    root, cache = base / "root", base / "cache"
    scenario.setup(ReleaseManager(str(root), owner_name=OWNER), artifacts, cache)
    return root, cache


def start_child(spec: dict[str, Any], crash_at: str | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    if crash_at:
        env[CRASH_ENV] = crash_at
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(COLLECTIONS), json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def run_child(spec: dict[str, Any], crash_at: str | None = None) -> tuple[int, str]:
    child = start_child(spec, crash_at)
    out, err = child.communicate(timeout=120)
    return child.returncode, out + err


def check_after_kill(root: Path) -> list[str]:
    """What must hold at any moment, even right after a kill: current complete, the engine's view agrees."""
    problems: list[str] = []
    link = root / "current"
    disk_current = None
    if link.is_symlink():
        target = os.readlink(link)
        disk_current = Path(target).name
        if not target.startswith("releases/"):
            problems.append(f"current -> {target} is not releases/<id>")
        elif (why := release_complete(root / target)) is not None:
            problems.append(f"current names an incomplete release: {why}")
    elif link.exists():
        problems.append("current exists and is not a symlink")
    try:
        load_journal(str(root / JOURNAL_NAME))
        info = ReleaseManager(str(root), owner_name=OWNER).info()
    except Exception as exc:
        return [*problems, f"the engine cannot read the root: {type(exc).__name__}: {exc}"]
    if info["current"] != disk_current:
        problems.append(f"the engine says current is {info['current']}, the disk says {disk_current}")
    active = [r["id"] for r in info["releases"] if r["state"] == "active"]
    if disk_current and active != [disk_current]:
        problems.append(f"active releases in the engine's view: {active}, current is {disk_current}")
    return problems


def check_consistent(root: Path) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
    """After a successful operation: journal and disk agree exactly."""
    problems = check_after_kill(root)
    journal = load_journal(str(root / JOURNAL_NAME))
    info = ReleaseManager(str(root), owner_name=OWNER).info()
    if journal.get(PENDING):
        problems.append(f"an intent is still pending after a successful run: {journal[PENDING]}")
    on_disk = {p.name for p in (root / "releases").iterdir() if not p.name.startswith(".tmp-")}
    journaled = set(journal["releases"])
    if on_disk - journaled:
        problems.append(f"release directories not in the journal: {sorted(on_disk - journaled)}")
    if journaled - on_disk:
        problems.append(f"journaled releases missing on disk: {sorted(journaled - on_disk)}")
    for rid in sorted(on_disk & journaled):
        if journal["releases"][rid].get("state") != "failed" and (why := release_complete(root / "releases" / rid)):
            problems.append(f"journaled release incomplete: {why}")
    return problems, info, journal


def run_case(base: Path, scenario: Scenario, artifacts: dict[str, dict[str, str]], crash_at: str) -> list[str]:
    """Kill the operation at ``crash_at``, check, run it again, check again; return the violations."""
    root, cache = build_root(base, scenario, artifacts)
    spec = scenario.spec(root, artifacts, cache)
    rc, output = run_child(spec, crash_at)
    problems = []
    if rc != -9:
        problems.append(f"the run was not killed at {crash_at} (rc {rc}): {output[-300:]}")
    problems += [f"after the kill: {p}" for p in check_after_kill(root)]
    return problems + rerun_and_check(root, scenario, spec)


def rerun_and_check(root: Path, scenario: Scenario, spec: dict[str, Any]) -> list[str]:
    rc, output = run_child(spec)
    if rc != 0:
        return [f"the rerun failed (rc {rc}): {output[-400:]}"]
    problems, info, journal = check_consistent(root)
    return [f"after the rerun: {p}" for p in problems + scenario.goal(root, info, journal)]
