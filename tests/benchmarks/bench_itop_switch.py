#!/usr/bin/env python3
"""Benchmark the itop role's release switch and rollback under client load.

Runs against the containers of the Molecule scenario ``itop`` (``molecule converge -s itop`` first, or pass
``--converge`` to let this script create and converge them). It then:

1. prepares a new release ``bench-<time>`` (same artifacts as r1, so the same schema) with ``itop_deploy_phase=prepare``
   (the installer runs here; the live release is in iTop's maintenance while it compiles, which is iTop's behaviour
   and is not what is measured);
2. switches to it (``itop_deploy_phase=switch``) while a client loops on the iTop page;
3. rolls back (``itop_action=rollback``) while the client loops again.

With ``--schema-change`` the new release carries the fixture extension v2 (a new column) and the rollback restores the
database (``itop_rollback_restore_db=true``): the page answers 503 (iTop's maintenance) while the dump is restored,
which is reported as ``maintenance_503`` and allowed; any other failure is not.

For each of the two measured windows it reports: requests, failed requests (connection errors or non-200),
stale responses (answered by the release left, for requests sent after ``current`` moved), the first and the last
stale response relative to the switch and to the php-fpm reload, and the wall time of the playbook. Targets:
0 failed, no stale response after the php-fpm reload.

    .venv/bin/python tests/benchmarks/bench_itop_switch.py [--converge] [--min-requests 500] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

from molecule_lab import Sample, converge, playbook, use_the_venv

ITOP_ROOT = "/srv/itop"
APPROOT_RE = re.compile(r"approot: \S+/releases/([^\s<]+)")


@dataclass
class Window:
    name: str
    old: str
    new: str
    wall_s: float = 0.0
    switch_at: float | None = None
    reload_at: float | None = None
    samples: list[Sample] = field(default_factory=list)

    def report(self) -> dict[str, object]:
        failed = [s for s in self.samples if s.status != 200 or s.release is None]
        after_switch = [s for s in self.samples if self.switch_at is not None and s.sent >= self.switch_at]
        stale = [s for s in after_switch if s.release == self.old]
        new_seen = [s for s in self.samples if s.release == self.new]

        def rel(t: float | None, ref: float | None) -> float | None:
            return None if t is None or ref is None else round(t - ref, 4)

        first_stale = stale[0].done if stale else None
        last_stale = stale[-1].done if stale else None
        stale_after_reload = [s for s in stale if self.reload_at is not None and s.sent >= self.reload_at]
        return {
            "window": self.name,
            "from": self.old,
            "to": self.new,
            "wall_time_s": round(self.wall_s, 2),
            "requests": len(self.samples),
            "failed": len(failed),
            "failed_statuses": sorted({s.status for s in failed}),
            "maintenance_503": sum(1 for s in failed if s.status == 503),
            "stale": len(stale),
            "stale_after_reload": len(stale_after_reload),
            "first_stale_after_switch_s": rel(first_stale, self.switch_at),
            "last_stale_after_switch_s": rel(last_stale, self.switch_at),
            "last_stale_relative_to_reload_s": rel(last_stale, self.reload_at),
            "reload_after_switch_s": rel(self.reload_at, self.switch_at),
            "first_new_after_switch_s": rel(new_seen[0].done, self.switch_at) if new_seen else None,
            "mean_latency_ms": round(1000 * sum(s.done - s.sent for s in self.samples) / max(1, len(self.samples)), 2),
        }


class Client(threading.Thread):
    """Loops on the page until stopped and until it has sent at least ``minimum`` requests."""

    def __init__(self, url: str, minimum: int) -> None:
        super().__init__(daemon=True)
        self.url, self.minimum = url, minimum
        self.samples: list[Sample] = []
        self.stop = threading.Event()
        # the lab's addresses must never go through a proxy (a proxy answers 404 for what it cannot route)
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def run(self) -> None:
        while not (self.stop.is_set() and len(self.samples) >= self.minimum):
            sent = time.time()
            status, release = 0, None
            try:
                with self.opener.open(self.url, timeout=10) as resp:
                    status = resp.status
                    match = APPROOT_RE.search(resp.read().decode("utf-8", "replace"))
                    release = match.group(1) if match else None
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError:
                status = -1
            self.samples.append(Sample(sent, time.time(), status, release))


def sh(*args: str, check: bool = True, env: dict[str, str] | None = None) -> str:
    return subprocess.run(args, check=check, capture_output=True, text=True, env=env).stdout


def docker_py(container: str, code: str) -> str:
    return sh("docker", "exec", container, "python3", "-c", code).strip()


def current_release(container: str) -> str:
    return os.path.basename(sh("docker", "exec", container, "readlink", f"{ITOP_ROOT}/current").strip())


def switch_time(container: str) -> float:
    """When `current` was last renamed into place: the ctime of the symlink (same kernel clock as this host)."""
    return float(docker_py(container, f"import os; print(os.lstat('{ITOP_ROOT}/current').st_ctime)"))


def reload_time(container: str, since: float) -> float | None:
    """Timestamp of the first php-fpm reload journald recorded after ``since``."""
    out = sh(
        "docker",
        "exec",
        container,
        "journalctl",
        "-u",
        "php8.2-fpm",
        "-o",
        "json",
        "--no-pager",
        "--since",
        f"@{int(since) - 1}",
        check=False,
    )
    for line in out.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if str(entry.get("MESSAGE", "")).startswith("Reloaded"):
            ts = int(entry["__REALTIME_TIMESTAMP"]) / 1e6
            if ts >= since:
                return ts
    return None


def measured(window: Window, url: str, minimum: int, container: str, run: Callable[[], float]) -> Window:
    client = Client(url, minimum)
    client.start()
    time.sleep(0.5)  # a few requests against the release in place before anything moves
    started = time.time()
    window.wall_s = run()
    client.stop.set()
    client.join()
    window.samples = client.samples
    window.switch_at = switch_time(container)
    window.reload_at = reload_time(container, started)
    return window


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--converge", action="store_true", help="run `molecule converge -s itop` first")
    parser.add_argument("--web", default="itop-web", help="web container (default itop-web)")
    parser.add_argument(
        "--url", default="http://127.0.0.1:18080/", help="the iTop page, as published by the scenario on loopback"
    )
    parser.add_argument("--min-requests", type=int, default=500)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--schema-change",
        action="store_true",
        help="deploy the fixture's extension v2 (a schema change) and roll back with the database restore; "
        "iTop answers 503 (maintenance) while the dump is restored, counted in maintenance_503",
    )
    args = parser.parse_args()
    use_the_venv()

    if args.converge:
        converge("itop")
    # The scenario publishes the web container's port 80 on the host's loopback: the client loads loopback only.
    url = args.url
    old = current_release(args.web)
    new = f"bench-{int(time.time())}"
    print(f"web {args.web} at {url}; current {old}; benchmark release {new}", file=sys.stderr)

    common = [f"itop_release_id={new}", f"itop_fixture_release={'r2' if args.schema_change else 'r1'}"]
    rollback_vars = ["itop_action=rollback", f"itop_rollback_to={old}"]
    if args.schema_change:
        rollback_vars.append("itop_rollback_restore_db=true")
    t0 = time.time()
    prepare_s = playbook("itop", *common, "itop_deploy_phase=prepare")
    switch = measured(
        Window("deploy switch", old, new),
        url,
        args.min_requests,
        args.web,
        lambda: playbook("itop", *common, "itop_deploy_phase=switch"),
    )
    deploy_s = time.time() - t0
    rollback = measured(
        Window("rollback", new, old),
        url,
        args.min_requests,
        args.web,
        lambda: playbook("itop", *rollback_vars),
    )
    figures = {
        "deploy_prepare_wall_s": round(prepare_s, 2),
        "deploy_total_wall_s": round(deploy_s, 2),
        "rollback_wall_s": round(rollback.wall_s, 2),
        "windows": [switch.report(), rollback.report()],
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(
            f"deploy: prepare {figures['deploy_prepare_wall_s']} s, total {figures['deploy_total_wall_s']} s; "
            f"rollback {figures['rollback_wall_s']} s"
        )
        for w in figures["windows"]:
            print(
                f"[{w['window']}] {w['from']} -> {w['to']}: {w['requests']} requests, {w['failed']} failed "
                f"({w['maintenance_503']} maintenance 503), "
                f"{w['stale']} stale after the switch ({w['stale_after_reload']} after the php-fpm reload); "
                f"first/last stale {w['first_stale_after_switch_s']}/{w['last_stale_after_switch_s']} s after "
                f"the switch, reload {w['reload_after_switch_s']} s after the switch, last stale "
                f"{w['last_stale_relative_to_reload_s']} s relative to the reload; first new response "
                f"{w['first_new_after_switch_s']} s after the switch; playbook {w['wall_time_s']} s; "
                f"mean latency {w['mean_latency_ms']} ms"
            )
    ok = all(
        w["failed"] == w["maintenance_503"]
        and (args.schema_change or w["failed"] == 0)
        and w["stale_after_reload"] == 0
        for w in figures["windows"]
    )
    print("targets met (0 failed, none stale after reload)" if ok else "TARGETS MISSED", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
