#!/usr/bin/env python3
"""The board (``itopctl serve``) with 10,000 deployments in the state store: response times of its pages and of
its JSON API, and the server's memory.

    .venv/bin/python tests/benchmarks/bench_web.py [--deployments 10000] [--reps 40] [--pg URL]

A pipeline of four stages (dev, test, pprd, prod; soak, approvals) and a store filled in one transaction: 40
releases (one rejected), the deployments spread over the stages (with the run logs of the newest ones, as a real
control node keeps them), approvals, a manual lock. Then the real server (``itopctl serve``, waitress) on a free
port, and each URL asked ``--reps`` times one after the other after a warm-up: median, p95 and max wall time of the
whole HTTP request, and the size of the answer. The server's resident memory (RSS) is read from /proc at start, after
the requests and at its peak (VmHWM). Target: every page and API answer under 200 ms (p95). Exit code 1 when missed.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from itopctl.store import Store, iso, utcnow

STAGES = ("dev", "test", "pprd", "prod")
TARGET_MS = 200.0
PIPELINE = """\
version: 1
defaults:
  inventory: inventories/{stage}.ini
  playbooks: {prepare: site.yml, switch: site.yml, verify: site.yml, rollback: site.yml}
stages:
  - name: dev
  - name: test
    gates: {soak: 1h}
  - name: pprd
    gates: {soak: 1h, approvals: {count: 1}}
  - name: prod
    batch_size: 2
    gates: {soak: 1d, approvals: {count: 2}}
"""


def make_project(root: Path) -> Path:
    (root / "inventories").mkdir(parents=True)
    for stage in STAGES:
        (root / "inventories" / f"{stage}.ini").write_text(f"{stage}-1\n{stage}-2\n")
    (root / "site.yml").write_text("- hosts: all\n  tasks: []\n")
    (root / "pipeline.yml").write_text(PIPELINE)
    return root / "pipeline.yml"


def run_log(directory: Path, hosts: list[str], tasks: int = 25) -> None:
    """An events.jsonl like the runner writes: a task start and an ok per host and task, then the stats."""
    directory.mkdir(parents=True)
    at = utcnow()
    lines = []
    for n in range(tasks):
        moment = (at + timedelta(seconds=n)).isoformat()
        lines.append({"at": moment, "event": "playbook_on_task_start", "task": f"t{n}"})
        lines += [
            {"at": moment, "event": "runner_on_ok", "host": h, "task": f"t{n}", "changed": n % 5 == 0} for h in hosts
        ]
    lines.append({"at": (at + timedelta(seconds=tasks)).isoformat(), "event": "playbook_on_stats",
                  "ok": dict.fromkeys(hosts, tasks), "changed": dict.fromkeys(hosts, tasks // 5),
                  "failures": {}, "dark": {}})  # fmt: skip
    (directory / "events.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def insert_many(store: Store, table: str, rows: list[dict[str, object]]) -> None:
    """One multi-row insert through the driver (``Store.execute`` is one row at a time)."""
    columns = list(rows[0])
    marker = "%s" if store.dialect == "postgresql" else "?"
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(marker for _ in columns)})"  # noqa: S608
    values = [tuple(row[c] for c in columns) for row in rows]
    if store.dialect == "postgresql":
        with store._conn.cursor() as cur:
            cur.executemany(sql, values)
    else:
        store._conn.executemany(sql, values)


def seed(url: str, count: int, runs_dir: Path, with_logs: int = 60) -> None:
    with Store.open(url) as store:
        now = utcnow()
        with store.transaction():
            releases = [f"2026.12.{n:02d}-1" for n in range(40)]
            insert_many(store, "releases", [
                {"id": rid, "manifest": json.dumps({"id": rid, "components": {"itop": {}}}), "digest": "0" * 64,
                 "added_by": "bench", "added_at": iso(now - timedelta(days=40 - n))}
                for n, rid in enumerate(releases)
            ])  # fmt: skip
            rows = []
            for i in range(count):
                stage = STAGES[i % len(STAGES)]
                started = now - timedelta(minutes=count - i)
                release = f"2026.12.{(i // 250) % 40:02d}-1"
                hosts = [f"{stage}-1", f"{stage}-2"]
                idents = [f"{iso(started)[:10]}T{i:06d}-{p}-{i:08x}" for p in ("prepare", "switch", "verify")]
                result = "failed" if i % 97 == 0 else "succeeded"
                rows.append({
                    "kind": "promote", "release_id": release, "stage": stage, "started_by": f"user{i % 7}",
                    "started_at": iso(started), "finished_at": iso(started + timedelta(seconds=42)), "duration": 42.0,
                    "result": result, "phase": "verify", "verified": int(result == "succeeded"),
                    "hosts": json.dumps(hosts), "switched_hosts": json.dumps(hosts),
                    "runner_idents": json.dumps(idents), "message": "",
                })  # fmt: skip
                if i >= count - with_logs:
                    for ident in idents:
                        run_log(runs_dir / ident, hosts)
            insert_many(store, "deployments", rows)
            for n, stage in enumerate(STAGES):
                release = f"2026.12.{39 - n:02d}-1"
                last = store.one("SELECT MAX(id) FROM deployments WHERE stage = ?", (stage,))
                store.execute(
                    "INSERT INTO stage_state (stage, current_release, previous_release, deployment_id, updated_at, "
                    "updated_by, health) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (stage, release, f"2026.12.{38 - n:02d}-1", last[0] if last else None, iso(now), "bench",
                     "healthy"),
                )  # fmt: skip
        for n in range(30):
            store.approve(f"2026.12.{n:02d}-1", "prod", f"approver{n % 3}", "pprd green", now)
        store.reject("2026.12.10-1", "bench", "a <b>CVE</b> in the ticket module", now)
        store.acquire_lock("pprd", owner="bob", reason="pprd under test", kind="manual", lease=3600, now=now)
        assert store.one("SELECT COUNT(*) FROM deployments") == (count,)


@contextlib.contextmanager
def pg_schema(url: str | None) -> Iterator[str | None]:
    """A schema of its own in the PostgreSQL database ``url`` (dropped afterwards), as the tests do."""
    if url is None:
        yield None
        return
    import psycopg  # noqa: PLC0415 - only with --pg

    schema = f"bench_web_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def start_server(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = Path(sys.executable).parent / "itopctl"
    with log.open("wb") as out:
        server = subprocess.Popen([str(binary), "serve", "--listen", "127.0.0.1:0"], env=env, stdout=out,
                                  stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.poll() is None:
        for line in log.read_text().splitlines():
            if line.startswith("itopctl serve: http://"):
                return server, line.split()[2]
        time.sleep(0.05)
    server.kill()
    raise SystemExit(f"itopctl serve did not start:\n{log.read_text()}")


def rss_kib(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def measure(base: str, path: str, reps: int) -> dict[str, float]:
    """``reps`` GETs of ``path`` on one keep-alive connection after 3 warm-ups; wall times in ms."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    times: list[float] = []
    size = 0
    for n in range(reps + 3):
        t0 = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        elapsed = (time.perf_counter() - t0) * 1000
        if response.status != 200:
            raise SystemExit(f"GET {path}: HTTP {response.status}: {body[:300]!r}")
        size = len(body)
        if n >= 3:
            times.append(elapsed)
    conn.close()
    ordered = sorted(times)
    return {
        "median": statistics.median(ordered),
        "p95": ordered[max(0, round(0.95 * len(ordered)) - 1)],
        "max": ordered[-1],
        "bytes": size,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deployments", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--pg", help="a PostgreSQL URL (an empty database) instead of a SQLite file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp, pg_schema(args.pg) as pg_url:
        root = Path(tmp)
        pipeline = make_project(root / "project")
        url = pg_url or f"sqlite:///{root / 'state.db'}"
        t0 = time.perf_counter()
        seed(url, args.deployments, root / "runs")
        print(f"store: {args.deployments} deployments on {'PostgreSQL' if args.pg else 'SQLite'}, "
              f"seeded in {time.perf_counter() - t0:.1f} s")  # fmt: skip
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root), "LANG": "C.UTF-8",
            "ITOPCTL_STATE_URL": url, "ITOPCTL_PIPELINE": str(pipeline), "ITOPCTL_RUNS_DIR": str(root / "runs"),
            "ITOPCTL_TOKENS_FILE": str(root / "tokens"), "ITOPCTL_USER": "bench",
        }  # fmt: skip
        server, base = start_server(env, root / "serve.log")
        try:
            at_start = rss_kib(server.pid)
            newest = args.deployments
            paths = [
                ("board page", "/"),
                ("board page, one stage", "/?stage=prod"),
                ("board page, an old history page", f"/?before={newest // 2}"),
                ("a deployment's page", f"/deployments/{newest}"),
                ("GET /api/board", "/api/board"),
                ("GET /api/status", "/api/status"),
                ("GET /api/history (50)", "/api/history"),
                ("GET /api/history?limit=500 (the most)", "/api/history?limit=500"),
                ("GET /api/releases", "/api/releases"),
                ("GET /api/check (promote --check)", "/api/check/2026.12.38-1?stage=prod"),
                ("GET /api/version (live poll)", "/api/version"),
            ]
            results = {name: measure(base, path, args.reps) for name, path in paths}
            after = rss_kib(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=10)
    print(f"{'request':38} {'median':>9} {'p95':>9} {'max':>9} {'size':>9}")
    missed = []
    for name, r in results.items():
        flag = "" if r["p95"] < TARGET_MS else "  > target"
        if flag:
            missed.append(name)
        print(f"{name:38} {r['median']:7.1f}ms {r['p95']:7.1f}ms {r['max']:7.1f}ms {r['bytes'] / 1024:7.1f}KB{flag}")
    print(f"server RSS: {at_start['VmRSS'] / 1024:.1f} MiB at start, {after['VmRSS'] / 1024:.1f} MiB after "
          f"{len(paths) * (args.reps + 3)} requests, peak {after['VmHWM'] / 1024:.1f} MiB")  # fmt: skip
    print(f"target: p95 < {TARGET_MS:.0f} ms: " + ("met" if not missed else f"MISSED by {', '.join(missed)}"))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
