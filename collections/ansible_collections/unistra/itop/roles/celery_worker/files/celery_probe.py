"""What the Celery workers of one release are doing, seen from the broker: installed by unistra.itop.celery_worker.

Run with the venv of the release being checked, in the environment of its units (systemd-run with their
EnvironmentFile=): it reads the broker from the same Celery config module as the workers, so no secret passes
through Ansible. It prints one JSON object and never a secret:

    {"ok": bool, "waited": seconds, "host": hostname,
     "nodes": {node: {"ping": bool, "queues": [...], "missing": [...], "settings": {...}}},
     "queues": {queue: {"messages": n, "consumers": n}}, "problems": [...]}

``wait`` polls until every node answers ``ping``, consumes every queue of its group (``active_queues``) and every
queue has a consumer, or the timeout passes (exit 3); while a node does not answer ``ping`` (it is still starting)
it pings again at once, without asking the others what they consume. ``status`` looks once and also reads the
no-loss settings (``task_acks_late``, ``task_reject_on_worker_lost``, ``worker_prefetch_multiplier``) of each node
(exit 3 if a check fails). Usage:

    celery_probe.py wait|status --node default.r2:tickets,retry --node slow.r2:slow [--timeout 60]

A node given as ``name:q1,q2`` is completed with ``@<this host's name>``, the name the units give their workers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sys
import time
from typing import Any

from celery import Celery

NO_LOSS = {"task_acks_late": True, "task_reject_on_worker_lost": True, "worker_prefetch_multiplier": 1}


def parse_nodes(specs: list[str]) -> dict[str, list[str]]:
    host = socket.gethostname()
    nodes = {}
    for spec in specs:
        name, queues = spec.split(":", 1) if ":" in spec else (spec, "")
        nodes[name if "@" in name else f"{name}@{host}"] = [q for q in queues.split(",") if q]
    return nodes


def queue_counts(app: Celery, queues: set[str]) -> dict[str, dict[str, Any]]:
    counts: dict[str, dict[str, Any]] = {}
    with app.connection_for_read() as conn:
        for queue in sorted(queues):
            channel = conn.channel()
            try:
                declared = channel.queue_declare(queue=queue, passive=True)
                counts[queue] = {"messages": declared.message_count, "consumers": declared.consumer_count}
            except Exception as exc:  # a missing queue closes the channel: report it, go on
                counts[queue] = {"messages": None, "consumers": 0, "error": str(exc).splitlines()[0]}
            finally:
                with contextlib.suppress(Exception):  # already closed by the broker
                    channel.close()
    return counts


def look(
    app: Celery, nodes: dict[str, list[str]], timeout: float, settings: bool, *, wait: bool = False
) -> dict[str, Any]:
    """One look at the nodes. ``wait``: a node not answering ping ends the look there (its queues cannot be asked)."""
    destination = list(nodes)
    # with a destination, ping returns as soon as every node answered; only a node missing costs the timeout
    pongs = {name for reply in app.control.ping(destination=destination, timeout=timeout) or [] for name in reply}
    if wait and not pongs >= set(nodes):
        silent = [node for node in nodes if node not in pongs]
        return {
            "nodes": {node: {"ping": node in pongs} for node in nodes},
            "problems": [f"{node} does not answer ping" for node in silent],
            "queues": {},
            "ok": False,
        }
    inspect = app.control.inspect(destination=destination, timeout=timeout)
    active = inspect.active_queues() or {}
    conf = (inspect.conf(with_defaults=True) or {}) if settings else {}
    report: dict[str, Any] = {"nodes": {}, "problems": []}
    for node, expected in nodes.items():
        consumed = sorted(q["name"] for q in active.get(node) or [])
        entry: dict[str, Any] = {"ping": node in pongs, "queues": consumed}
        entry["missing"] = sorted(set(expected) - set(consumed))
        if not entry["ping"]:
            report["problems"].append(f"{node} does not answer ping")
        elif entry["missing"]:
            report["problems"].append(f"{node} does not consume {', '.join(entry['missing'])}")
        if settings:
            node_conf = conf.get(node) or {}
            entry["settings"] = {key: node_conf.get(key) for key in NO_LOSS}
            wrong = [key for key, value in NO_LOSS.items() if node_conf.get(key) != value]
            if entry["ping"] and wrong:
                report["problems"].append(f"{node} runs without the no-loss settings {', '.join(wrong)}")
        report["nodes"][node] = entry
    report["queues"] = queue_counts(app, {q for queues in nodes.values() for q in queues})
    report["problems"] += [f"queue {q} has no consumer" for q, c in report["queues"].items() if not c["consumers"]]
    report["ok"] = not report["problems"]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["wait", "status"])
    parser.add_argument("--node", action="append", required=True, help="NAME:QUEUE,QUEUE (repeat)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds wait goes on for")
    args = parser.parse_args(argv)
    nodes = parse_nodes(args.node)
    app = Celery(set_as_current=False)
    app.config_from_envvar("CELERY_CONFIG_MODULE")
    start = time.monotonic()
    wait = args.mode == "wait"
    while True:
        report = look(app, nodes, timeout=0.5 if wait else 1.0, settings=not wait, wait=wait)
        if report["ok"] or not wait or time.monotonic() - start > args.timeout:
            break
        if all(entry["ping"] for entry in report["nodes"].values()):  # the ping waited already otherwise
            time.sleep(0.25)
    report["waited"] = round(time.monotonic() - start, 2)
    report["host"] = socket.gethostname()
    print(json.dumps(report, sort_keys=True))
    return 0 if report["ok"] else 3


if __name__ == "__main__":
    sys.exit(main())
