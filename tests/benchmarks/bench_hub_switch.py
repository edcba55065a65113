#!/usr/bin/env python3
"""Benchmark the hub role's switch (with a migration) and its rollback (with the database restore) under client load.

Runs against the containers of the Molecule scenario ``hub`` (``molecule converge -s hub`` first, or pass
``--converge``): two hub hosts (published on the host's loopback, ports 18091 and 18092) serving ``A`` (the sample hub
1.0.0, schema 1). It then:

1. prepares a new release ``bench-<time>`` (the sample hub 2.0.0: its venv on both hosts, then on the first hub host a
   pg_dump and the migration to schema 2), ``hub_deploy_phase=prepare``, timed whole;
2. switches both hosts to it (``hub_deploy_phase=switch``) while clients loop on ``GET /tickets`` on both hosts;
3. rolls back to ``A`` with the database restored (``hub_action=rollback hub_rollback_restore_db=true``) while the
   clients loop again.

For each window it prints: requests, failed requests (connection errors or non-2xx; target 0), responses from the
old release to requests sent after the playbook ended (the switch is finished on both hosts then; target 0), the
last old response relative to the end of the playbook, and the playbook's wall time.

    .venv/bin/python tests/benchmarks/bench_hub_switch.py [--converge] [--min-requests 1000] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from molecule_lab import Sample, converge, playbook, use_the_venv

SCENARIO = "hub"
URLS = ("http://127.0.0.1:18091/tickets", "http://127.0.0.1:18092/tickets")


class Client(threading.Thread):
    """Loops on the hubs' ``GET /tickets``, alternating hosts, until told to stop and ``minimum`` requests are done."""

    def __init__(self, url: str, minimum: int) -> None:
        super().__init__(daemon=True)
        self.url, self.minimum = url, minimum
        self.stop = threading.Event()
        self.samples: list[Sample] = []

    def run(self) -> None:
        while not (self.stop.is_set() and len(self.samples) >= self.minimum):
            sent, status, release = time.time(), -1, None
            try:
                with urllib.request.urlopen(self.url, timeout=10) as resp:
                    resp.read()
                    status, release = resp.status, resp.headers.get("X-Unistra-Release")
            except urllib.error.HTTPError as exc:
                status, release = exc.code, exc.headers.get("X-Unistra-Release")
            except OSError:
                status = -1
            self.samples.append(Sample(sent, time.time(), status, release))


@dataclass
class Window:
    name: str
    old: str
    new: str
    wall_s: float = 0.0
    ended_at: float = 0.0
    samples: list[Sample] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        failed = [s for s in self.samples if not 200 <= s.status < 300]
        stale = [s for s in self.samples if s.sent > self.ended_at and s.release == self.old]
        old = [s.done - self.ended_at for s in self.samples if s.release == self.old]
        by_release: dict[str, int] = {}
        for s in self.samples:
            by_release[str(s.release)] = by_release.get(str(s.release), 0) + 1
        return {
            "window": self.name,
            "from": self.old,
            "to": self.new,
            "requests": len(self.samples),
            "failed": len(failed),
            "failed_statuses": sorted({s.status for s in failed}),
            "stale_after_switch": len(stale),
            "last_old_response_s": round(max(old), 2) if old else None,
            "by_release": by_release,
            "playbook_wall_s": round(self.wall_s, 2),
        }


def current_release(container: str) -> str:
    out = subprocess.run(
        ["docker", "exec", container, "readlink", "/srv/unistra/hub/current"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.strip().rsplit("/", 1)[-1]


def measured(window: Window, minimum: int, *extra: str) -> Window:
    clients = [Client(url, minimum // len(URLS)) for url in URLS]
    for client in clients:
        client.start()
    time.sleep(0.5)  # a few requests against the release in place before anything moves
    window.wall_s = playbook(SCENARIO, *extra, limit="hub")
    window.ended_at = time.time()
    for client in clients:
        client.stop.set()
    for client in clients:
        client.join()
        window.samples += client.samples
    return window


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--converge", action="store_true", help="run `molecule converge -s hub` first")
    parser.add_argument("--min-requests", type=int, default=1000, help="requests in each window, at least")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    use_the_venv()
    if args.converge:
        converge(SCENARIO)
    old = current_release("hub-app1")
    new = f"bench-{int(time.time())}"
    print(f"hubs hub-app1, hub-app2: current {old}; benchmark release {new} (a migration to schema 2)", file=sys.stderr)
    common = [f"hub_release_id={new}", "hub_fixture_release=r2"]

    prepare_s = playbook(SCENARIO, *common, "hub_deploy_phase=prepare", limit="hub")
    switch = measured(Window("switch", old, new), args.min_requests, *common, "hub_deploy_phase=switch")
    rollback = measured(
        Window("rollback with restore", new, old),
        args.min_requests,
        "hub_action=rollback",
        f"hub_rollback_to={old}",
        "hub_rollback_restore_db=true",
    )
    windows = [switch.figures(), rollback.figures()]
    result = {"prepare_with_migration_wall_s": round(prepare_s, 2), "windows": windows}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"prepare of {new} (venvs on both hosts, pg_dump and the migration on one): {prepare_s:.1f} s")
        for w in windows:
            print(f"\n{w['window']}: {w['from']} -> {w['to']}, playbook {w['playbook_wall_s']} s")
            print(f"  requests {w['requests']}, failed {w['failed']} {w['failed_statuses'] or ''}")
            print(f"  old release answering requests sent after the playbook ended: {w['stale_after_switch']}")
            print(f"  last answer of the old release: {w['last_old_response_s']} s after the playbook ended")
            print(f"  answered by release: {w['by_release']}")
    return 1 if any(w["failed"] or w["stale_after_switch"] for w in windows) else 0


if __name__ == "__main__":
    sys.exit(main())
