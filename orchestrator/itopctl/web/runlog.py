"""A readable summary of a playbook run from its JSON-lines log (``<runs_dir>/<ident>/events.jsonl``, written by
:class:`itopctl.runner.PlaybookRunner`): its phase, when and how long, per host ok/changed/failed, and what failed.

Summaries are cached by the log's size and modification time: a finished run's log never changes, and the board
asks for the same ones on every refresh."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

_CACHE_SIZE = 1024
_FAILURES_SHOWN = 5


@dataclass(frozen=True)
class HostCounts:
    host: str
    ok: int
    changed: int
    failed: int
    unreachable: int


@dataclass(frozen=True)
class RunSummary:
    ident: str
    phase: str
    found: bool  # False: the run directory was rotated out (keep_runs) or is on another control node
    started: str = ""
    duration: float | None = None
    tasks: int = 0
    hosts: list[HostCounts] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.found and not self.failures and all(h.failed == 0 and h.unreachable == 0 for h in self.hosts)

    @property
    def text(self) -> str:
        """One line: ``prepare: 2 hosts, 5 tasks, 3 changed, ok, 4.2s``."""
        if not self.found:
            return f"{self.phase}: run log not kept here ({self.ident})"
        changed = sum(h.changed for h in self.hosts)
        failed = [h.host for h in self.hosts if h.failed or h.unreachable]
        state = f"FAILED on {', '.join(failed)}" if failed else ("FAILED" if self.failures else "ok")
        took = f", {self.duration:.1f}s" if self.duration is not None else ""
        return f"{self.phase}: {len(self.hosts)} host(s), {self.tasks} task(s), {changed} changed, {state}{took}"


def _phase_of(ident: str) -> str:
    parts = ident.split("-")  # <stamp>-<phase>-<hex>
    return parts[1] if len(parts) >= 3 else ""


def _seconds(first: str, last: str) -> float | None:
    try:
        return round((datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds(), 1)
    except ValueError:
        return None


def summarize(path: Path, ident: str) -> RunSummary:
    phase = _phase_of(ident)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return RunSummary(ident, phase, found=False)
    first = last = ""
    tasks = 0
    failures: list[str] = []
    stats: dict[str, Any] = {}
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        at = str(event.get("at") or "")
        first = first or at
        last = at or last
        phase = phase or str(event.get("phase") or "")
        kind = event.get("event")
        if kind == "playbook_on_task_start":
            tasks += 1
        elif kind in ("runner_on_failed", "runner_on_unreachable") and len(failures) < _FAILURES_SHOWN:
            failures.append(f"{event.get('host', '?')}: {event.get('task', '')}: {event.get('msg', '')}".strip())
        elif kind == "playbook_on_stats":
            stats = event
    hosts = sorted(
        {h for key in ("ok", "changed", "failures", "dark") for h in (stats.get(key) or {})},
    )
    counts = [
        HostCounts(
            host,
            int((stats.get("ok") or {}).get(host, 0)),
            int((stats.get("changed") or {}).get(host, 0)),
            int((stats.get("failures") or {}).get(host, 0)),
            int((stats.get("dark") or {}).get(host, 0)),
        )
        for host in hosts
    ]
    return RunSummary(ident, phase, True, first, _seconds(first, last) if first and last else None, tasks, counts,
                      failures)  # fmt: skip


class RunLogs:
    """Summaries of the runs under ``runs_dir``, cached."""

    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = runs_dir
        self._cache: OrderedDict[tuple[str, int, int], RunSummary] = OrderedDict()
        self._lock = threading.Lock()

    def summary(self, ident: str) -> RunSummary:
        if not ident or "/" in ident or ident.startswith("."):
            return RunSummary(ident, "", found=False)
        path = self.runs_dir / ident / "events.jsonl"
        try:
            st = path.stat()
        except OSError:
            return RunSummary(ident, _phase_of(ident), found=False)
        key = (ident, st.st_mtime_ns, st.st_size)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        summary = summarize(path, ident)
        with self._lock:
            self._cache[key] = summary
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return summary
