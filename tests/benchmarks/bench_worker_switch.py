#!/usr/bin/env python3
"""Benchmark the celery_worker role's release switch and rollback while a producer sends tasks.

Runs against the containers of the Molecule scenario ``messaging`` (``molecule converge -s messaging`` first, or pass
``--converge`` to let this script create and converge them). With the current release ``A`` running, it:

1. prepares a new release ``bench-<time>`` (the sample worker 2.0.0 wheelhouse) with
   ``celery_worker_deploy_phase=prepare`` (venv build; not in the measured windows);
2. switches to it (``celery_worker_deploy_phase=switch``) while a producer in the worker container sends
   ``--tasks`` events, one in ``--slow-every`` of them a slow task of ``--slow-seconds``;
3. rolls back to ``A`` (``celery_worker_action=rollback``) while the producer sends as many again.

During each window a monitor in the worker container asks the broker every ~20 ms, over AMQP (a passive
``queue.declare``, exact, unlike the management API's statistics that lag by seconds), how many consumers each queue
has. For each window it prints: tasks sent, processed, lost (target 0), processed twice (idempotent tasks make it
harmless, it is reported), processed by release, the longest gap with no consumer on a queue (target 0 s), the
fewest and most consumers seen, and the wall time of the playbook (the switch, the rollback) and of the prepare.

    .venv/bin/python tests/benchmarks/bench_worker_switch.py [--converge] [--tasks 2400] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from molecule_lab import converge, playbook, use_the_venv

SCENARIO = "messaging"
WORKER_ROOT = "/srv/unistra/worker"
QUEUES = ("tickets", "slow")
# inside the throwaway worker container
STOP_FILE = "/tmp/bench-worker-monitor.stop"
# The workers' environment, as the units have it (their env files, user and Celery settings).
IN_WORKER_ENV = [
    "systemd-run",
    "--quiet",
    "--collect",
    "--service-type=exec",
    "--uid=celery-worker",
    "--gid=celery-worker",
    f"--property=EnvironmentFile={WORKER_ROOT}/shared/config/app.env",
    f"--property=EnvironmentFile={WORKER_ROOT}/current/release.env",
    "--setenv=CELERY_CONFIG_MODULE=unistra_celeryconfig",
    f"--setenv=PYTHONPATH={WORKER_ROOT}/shared/config",
]
MONITOR = f"""
import json, os, sys, time
STOP_FILE = {STOP_FILE!r}
from kombu import Connection
queues = sys.argv[1:]
with Connection(os.environ["CELERY_BROKER_URL"]) as conn:
    channel = conn.channel()
    while not os.path.exists(STOP_FILE):
        at = time.time()
        counts = {{q: channel.queue_declare(queue=q, passive=True)[2] for q in queues}}
        print(json.dumps({{"t": at, "c": counts}}), flush=True)
        time.sleep(0.02)
"""


@dataclass
class Window:
    name: str
    old: str
    new: str
    prefix: str
    wall_s: float = 0.0
    sent: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    drain_s: float = 0.0

    def gaps(self) -> dict[str, dict[str, Any]]:
        out = {}
        for queue in QUEUES:
            longest, zero_since = 0.0, None
            counts = [s["c"][queue] for s in self.samples]
            for sample in self.samples:
                if sample["c"][queue] == 0:
                    zero_since = sample["t"] if zero_since is None else zero_since
                elif zero_since is not None:
                    longest, zero_since = max(longest, sample["t"] - zero_since), None
            if zero_since is not None:  # still without a consumer when the monitor stopped
                longest = max(longest, self.samples[-1]["t"] - zero_since)
            out[queue] = {
                "longest_gap_s": round(longest, 3),
                "min_consumers": min(counts, default=None),
                "max_consumers": max(counts, default=None),
            }
        return out

    def figures(self) -> dict[str, Any]:
        sent = int(self.sent.get("sent", 0))
        processed = int(self.report.get("processed", 0))
        period = (self.samples[-1]["t"] - self.samples[0]["t"]) / max(len(self.samples) - 1, 1) if self.samples else 0
        return {
            "window": self.name,
            "from": self.old,
            "to": self.new,
            "sent": sent,
            "slow": self.sent.get("slow"),
            "processed": processed,
            "lost": sent - processed,
            "processed_twice": self.report.get("processed_twice"),
            "by_release": self.report.get("by_release"),
            "queues": self.gaps(),
            "monitor_samples": len(self.samples),
            "monitor_period_ms": round(period * 1000, 1),
            "playbook_wall_s": round(self.wall_s, 2),
            "drain_after_s": round(self.drain_s, 1),
        }


def sh(*args: str, check: bool = True) -> str:
    return subprocess.run(args, check=check, capture_output=True, text=True).stdout


def in_worker(container: str, *argv: str, background: str = "") -> str:
    mode = [f"--unit={background}", f"--property=StandardOutput=file:/run/{background}.out"] if background else []
    return sh("docker", "exec", container, *IN_WORKER_ENV, *(mode or ["--wait", "--pipe"]), *argv)


def current_release(container: str) -> str:
    return sh("docker", "exec", container, "readlink", f"{WORKER_ROOT}/current").strip().rsplit("/", 1)[-1]


class Monitor(threading.Thread):
    """The consumers of each queue, read in the worker container with the release's kombu."""

    def __init__(self, container: str, release: str) -> None:
        super().__init__(daemon=True)
        self.container, self.samples = container, []
        sh("docker", "exec", container, "rm", "-f", STOP_FILE)
        python = f"{WORKER_ROOT}/releases/{release}/venv/bin/python"
        cmd = ["docker", "exec", "-i", container, *IN_WORKER_ENV, "--wait", "--pipe", python, "-u", "-", *QUEUES]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(MONITOR)
        self.proc.stdin.close()

    def run(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.samples.append(json.loads(line))

    def stop(self) -> list[dict[str, Any]]:
        sh("docker", "exec", self.container, "touch", STOP_FILE)
        self.proc.wait(timeout=30)
        self.join(timeout=10)
        return self.samples


def wait_processed(container: str, prefix: str, expected: int, idle_timeout: float) -> dict[str, Any]:
    last, progress_at = -1, time.time()
    while True:
        report: dict[str, Any] = json.loads(
            in_worker(container, f"{WORKER_ROOT}/current/venv/bin/sample-worker-report", "--prefix", prefix)
        )
        if report["processed"] >= expected:
            return report
        if report["processed"] != last:
            last, progress_at = report["processed"], time.time()
        elif time.time() - progress_at > idle_timeout:
            return report
        time.sleep(1)


def measured(window: Window, container: str, args: argparse.Namespace, *extra: str) -> Window:
    monitor = Monitor(container, current_release(container))
    monitor.start()
    in_worker(
        container,
        f"{WORKER_ROOT}/current/venv/bin/sample-worker-produce",
        "--count", str(args.tasks), "--prefix", window.prefix, "--rate", str(args.rate),
        "--slow-every", str(args.slow_every), "--slow-seconds", str(args.slow_seconds),
        background=f"bench-producer-{window.prefix}",
    )  # fmt: skip
    time.sleep(1.0)  # tasks flow to the release in place before anything moves
    window.wall_s = playbook(SCENARIO, *extra, limit="workers")
    unit = f"bench-producer-{window.prefix}"
    while sh("docker", "exec", container, "systemctl", "is-active", unit, check=False).strip() in (
        "active",
        "activating",
    ):
        time.sleep(0.5)
    time.sleep(1.0)
    window.samples = monitor.stop()
    window.sent = json.loads(sh("docker", "exec", container, "cat", f"/run/{unit}.out").strip().splitlines()[-1])
    t0 = time.time()
    window.report = wait_processed(container, window.prefix, int(window.sent["sent"]), args.idle_timeout)
    window.drain_s = time.time() - t0
    return window


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--converge", action="store_true", help="run `molecule converge -s messaging` first")
    parser.add_argument("--worker", default="mq-worker", help="worker container (default mq-worker)")
    parser.add_argument("--tasks", type=int, default=2400, help="tasks sent in each window (default 2400)")
    parser.add_argument("--rate", type=float, default=150.0, help="tasks per second the producer sends (default 150)")
    parser.add_argument("--slow-every", type=int, default=100, help="one slow task in N (default 100)")
    parser.add_argument("--slow-seconds", type=float, default=3.0, help="how long a slow task runs (default 3)")
    parser.add_argument("--idle-timeout", type=float, default=60.0, help="give up waiting after N s with no progress")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    use_the_venv()
    if args.tasks < 2000:
        parser.error("--tasks must be at least 2000: the switch must happen under a real stream")

    if args.converge:
        converge(SCENARIO)
    old = current_release(args.worker)
    new = f"bench-{int(time.time())}"
    print(f"worker {args.worker}: current {old}; benchmark release {new}", file=sys.stderr)
    common = [f"celery_worker_release_id={new}", "worker_fixture_release=r2"]

    prepare_s = playbook(SCENARIO, *common, "celery_worker_deploy_phase=prepare", limit="workers")
    switch = measured(Window("deploy switch", old, new, f"{new}-switch"), args.worker, args,
                      *common, "celery_worker_deploy_phase=switch")  # fmt: skip
    rollback = measured(Window("rollback", new, old, f"{new}-rollback"), args.worker, args,
                        "celery_worker_action=rollback", f"celery_worker_rollback_to={old}")  # fmt: skip
    windows = [switch.figures(), rollback.figures()]
    result = {"prepare_wall_s": round(prepare_s, 2), "windows": windows}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"prepare of {new} (venv build): {prepare_s:.1f} s")
        for w in windows:
            print(f"\n{w['window']}: {w['from']} -> {w['to']}, playbook {w['playbook_wall_s']} s")
            print(f"  sent {w['sent']} ({w['slow']} slow), processed {w['processed']}, lost {w['lost']}, "
                  f"processed twice {w['processed_twice']}, by release {w['by_release']}")  # fmt: skip
            for queue, q in w["queues"].items():
                print(f"  queue {queue}: longest gap with no consumer {q['longest_gap_s']} s, consumers "
                      f"{q['min_consumers']}..{q['max_consumers']}")  # fmt: skip
            print(f"  monitor: {w['monitor_samples']} samples every {w['monitor_period_ms']} ms; "
                  f"drained {w['drain_after_s']} s after the producer")  # fmt: skip
    failed = any(w["lost"] or any(q["longest_gap_s"] for q in w["queues"].values()) for w in windows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
