"""The ``itopctl`` command line. Errors are :class:`ItopctlError`, caught once here: message + exit code."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from . import __version__, views
from .config import OPTIONS, SERVE_OPTIONS, Settings, load_settings
from .errors import ExitCode, ItopctlError, bad_input
from .manifest import check_release_id, load_manifest
from .pipeline import Pipeline, load_pipeline, parse_duration
from .store import Store, redact_url, utcnow
from .web import serve_arguments


class Context:
    """What a command needs, opened on first use (a read command never imports ansible-runner)."""

    def __init__(self, args: argparse.Namespace, environ: dict[str, str], out: TextIO, err: TextIO) -> None:
        self.args = args
        self.environ = environ
        self.out = out
        self.err = err
        cli_values = {opt.name: getattr(args, opt.name, None) for opt in OPTIONS}
        self.settings: Settings = load_settings(cli_values, environ, getattr(args, "config", None))
        self._store: Store | None = None
        self._pipeline: Pipeline | None = None

    @property
    def store(self) -> Store:
        """The state store; on opening, locks whose itopctl died on this host are found stale (their deployments
        recorded as abandoned) and secrets directories that such an itopctl left are removed."""
        if self._store is None:
            from .runner import default_secrets_base, sweep_secrets  # noqa: PLC0415 - cheap, no ansible import

            self._store = Store.open(str(self.settings.state_url))
            sweep_secrets(default_secrets_base(self.environ))
            for lock in self._store.reap_dead_holders(utcnow(), by=self.user):
                holder = lock.holder.describe() if lock.holder else "?"
                print(
                    f"itopctl: deployment #{lock.deployment_id} on {lock.stage} ({lock.reason}, by {lock.owner}) was "
                    f"abandoned: its itopctl ({holder}) is gone; its lock is released (see `itopctl status`)",
                    file=self.err,
                )
        return self._store

    @property
    def pipeline(self) -> Pipeline:
        if self._pipeline is None:
            self._pipeline = load_pipeline(Path(self.settings.pipeline))
        return self._pipeline

    @property
    def user(self) -> str:
        return str(self.settings.user)

    def orchestrator(self, with_runner: bool) -> Any:
        from .engine import Orchestrator  # noqa: PLC0415
        from .runner import ConsoleDisplay, PlaybookRunner  # noqa: PLC0415

        display = ConsoleDisplay(self.err)
        runner = None
        if with_runner:
            runner = PlaybookRunner(
                Path(self.settings.runs_dir),
                keep=int(self.settings.keep_runs),
                passthrough=self.settings.env_passthrough,
                secret_names=self.settings.secret_env,
                environment=self.pipeline.environment,
                display=display,
                environ=self.environ,
            )
        return Orchestrator(
            self.pipeline,
            self.store,
            runner=runner,
            user=self.user,
            lock_lease=int(self.settings.lock_lease),
            display=display,
        )

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    # -- output -----------------------------------------------------------------------------------------
    def json(self, data: Any) -> None:
        print(views.dumps(data), file=self.out)

    def print(self, text: str = "") -> None:
        print(text, file=self.out)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[("-" if v is None or v == "" else str(v)) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _short(timestamp: str | None) -> str:
    return (timestamp or "")[:19].replace("T", " ")


# -- release ----------------------------------------------------------------------------------------------
def cmd_release_add(ctx: Context, args: argparse.Namespace) -> int:
    manifest = load_manifest(Path(args.manifest))
    added = ctx.store.add_release(manifest, ctx.user, utcnow())
    if args.json:
        ctx.json({"release": manifest.id, "added": added, "digest": manifest.digest})
    else:
        what = "added" if added else "already present, identical"
        ctx.print(f"release {manifest.id} {what} (components: {', '.join(manifest.components)})")
    return ExitCode.OK


def cmd_release_list(ctx: Context, args: argparse.Namespace) -> int:
    releases = views.release_list(ctx.store)
    if args.json:
        ctx.json(releases)
        return ExitCode.OK
    rows = [
        [
            r["id"],
            _short(r["added_at"]),
            r["added_by"],
            ",".join(r["components"]),
            ",".join(r["current_on"]),
            f"REJECTED: {r['rejected']['reason']}" if r["rejected"] else "",
        ]
        for r in releases
    ]
    ctx.print(table(rows, ["release", "added", "by", "components", "current on", "rejected"]))
    return ExitCode.OK


def cmd_release_show(ctx: Context, args: argparse.Namespace) -> int:
    if args.json:
        ctx.json(views.release_show(ctx.store, args.id))
        return ExitCode.OK
    release = ctx.store.require_release(args.id)
    approvals = ctx.store.approvals(release.id)
    deployments = ctx.store.deployments(release_id=release.id, limit=50)
    ctx.print(
        f"release {release.id}  (added {_short(release.added_at)} by {release.added_by}, digest {release.digest})"
    )
    if release.rejected:
        ctx.print(
            f"REJECTED by {release.rejected.rejected_by} at {_short(release.rejected.rejected_at)}: "
            f"{release.rejected.reason}"
        )
    for name, comp in sorted(release.manifest.get("components", {}).items()):
        ctx.print(f"  {name}: {comp.get('uri')} sha256={comp.get('sha256', '')[:12]}...")
        for ext in comp.get("extensions") or []:
            ctx.print(f"    extension {ext.get('name')}: {ext.get('uri')} sha256={ext.get('sha256', '')[:12]}...")
    queues = (release.manifest.get("messaging") or {}).get("work_queues")
    if queues is not None:
        ctx.print("work queues:" if queues else "work queues: none")
        for queue in queues:
            settings = ", ".join(f"{key}={value}" for key, value in queue.items() if key not in ("name", "vhost"))
            ctx.print(f"  {queue.get('name')} (vhost {queue.get('vhost')}){': ' + settings if settings else ''}")
    if approvals:
        ctx.print("approvals:")
        for a in approvals:
            ctx.print(f"  {a.stage}: {a.approver} at {_short(a.approved_at)}: {a.reason}")
    if deployments:
        ctx.print("deployments:")
        ctx.print(_history_table(deployments))
    return ExitCode.OK


def cmd_release_reject(ctx: Context, args: argparse.Namespace) -> int:
    from .engine import record_rejection  # noqa: PLC0415 - the engine imports the runner module

    rejected = record_rejection(ctx.store, args.id, who=ctx.user, reason=args.reason, now=utcnow())
    if args.json:
        ctx.json({"release": args.id, "rejected": True, "new": rejected})
    else:
        ctx.print(f"release {args.id} rejected" if rejected else f"release {args.id} was already rejected")
    return ExitCode.OK


# -- promote / deploy / rollback -------------------------------------------------------------------------
def _print_outcome(ctx: Context, args: argparse.Namespace, outcome: Any) -> int:
    if args.json:
        ctx.json(views.outcome(outcome))
    else:
        for gate in outcome.gates:
            ctx.print(f"gate {gate.gate}: {'ok' if gate.ok else 'BLOCKED'} - {gate.detail}")
        label = {"succeeded": "done", "nothing_to_do": "nothing to do", "ready": "ready", "lock_lost": "STOPPED"}.get(
            outcome.status, outcome.status.upper()
        )
        dep = f" (deployment #{outcome.deployment.id})" if outcome.deployment else ""
        ctx.print(f"{label}: {outcome.message}{dep}")
    return int(outcome.exit_code)


def cmd_promote(ctx: Context, args: argparse.Namespace) -> int:
    check_release_id(args.id)
    stage = args.to if args.command == "promote" else ctx.pipeline.first.name
    allow_drift = args.allow_drift
    if allow_drift is not None and not allow_drift.strip():
        raise bad_input('--allow-drift must say why (e.g. --allow-drift "hotfix of INC-1234 applied by hand")')
    # a no-op promotion confirms on the hosts (one short run): it needs the runner, --check never
    outcome = ctx.orchestrator(with_runner=not args.check).promote(
        args.id, stage, check_only=args.check, allow_drift=allow_drift
    )
    return _print_outcome(ctx, args, outcome)


def cmd_rollback(ctx: Context, args: argparse.Namespace) -> int:
    if args.to:
        check_release_id(args.to)
    outcome = ctx.orchestrator(with_runner=True).rollback(args.stage, to=args.to, restore_db=args.restore_db)
    return _print_outcome(ctx, args, outcome)


def cmd_approve(ctx: Context, args: argparse.Namespace) -> int:
    from .engine import record_approval  # noqa: PLC0415 - the engine imports the runner module

    release, stage, added = record_approval(
        ctx.store, ctx.pipeline, args.id, args.stage, who=ctx.user, reason=args.reason, now=utcnow()
    )
    if args.json:
        ctx.json({"release": release.id, "stage": stage.name, "approver": ctx.user, "new": added})
    else:
        ctx.print(
            f"{ctx.user} approved {release.id} for {stage.name}"
            if added
            else f"{ctx.user} had already approved {release.id} for {stage.name}"
        )
    return ExitCode.OK


# -- status / history ------------------------------------------------------------------------------------
def cmd_status(ctx: Context, args: argparse.Namespace) -> int:
    if args.stage:
        ctx.pipeline.stage(args.stage)
    names = [args.stage] if args.stage else list(ctx.pipeline.names)
    if args.probe:
        return _status_probe(ctx, args, names)
    rows = views.status(ctx.store, names, utcnow())
    if args.json:
        ctx.json(rows)
        return ExitCode.OK
    ctx.print(
        table(
            [
                [
                    r["stage"], r["current"], r["previous"], _short(r["when"]), r["who"], r["health"],
                    f"{r['lock']['owner']} ({r['lock']['kind']}): {r['lock']['reason']}" if r["lock"] else "",
                ]
                for r in rows
            ],
            ["stage", "current", "previous", "when", "who", "health", "lock"],
        )
    )  # fmt: skip
    for r in rows:
        for warning in r["warnings"]:
            ctx.print(f"warning: {r['stage']} (deployment #{r['deployment']}): {warning}")
    return ExitCode.OK


def _status_probe(ctx: Context, args: argparse.Namespace, names: Sequence[str]) -> int:
    """``status --probe``: the recorded state next to what the hosts say (the release engine's info)."""
    from .probe import probe_stage, short_checksum  # noqa: PLC0415 - runs a playbook: only when asked

    states = ctx.store.stage_states()
    orchestrator = ctx.orchestrator(with_runner=True)
    probes = [probe_stage(orchestrator.runner, ctx.pipeline, ctx.pipeline.stage(name)) for name in names]
    drifts = {p.stage: orchestrator.drift(ctx.pipeline.stage(p.stage), p) for p in probes}
    if args.json:
        ctx.json(
            [
                {
                    "stage": p.stage,
                    "recorded": states.get(p.stage),
                    "consistent": p.consistent,
                    "releases": p.releases,
                    "summary": p.summary,
                    "hosts": p.hosts,
                    "unreachable": p.unreachable,
                    "run": p.run,
                    "drift": drifts[p.stage],
                }
                for p in probes
            ]
        )
        return ExitCode.OK
    for p in probes:
        state = states.get(p.stage)
        recorded = f"{state.current_release} ({state.health})" if state else "never deployed"
        drift = drifts[p.stage]
        ctx.print(f"{p.stage}: {p.summary}  [recorded: {recorded}]  {drift.summary}")
        ctx.print(
            table(
                [[h.host, h.app, h.current, h.previous, short_checksum(h.tree, ""), h.lock, h.error]
                 for h in p.hosts]
                + [[host, "", "UNREACHABLE", "", "", "", ""] for host in p.unreachable],
                ["host", "app", "current", "previous", "tree", "host lock", "error"],
            )
        )  # fmt: skip
        for line in drift.drifted:
            ctx.print(f"DRIFT: {line}")
        for line in drift.notes:
            ctx.print(f"note: {line}")
        ctx.print()
    # drift found is an answer, not an error of the command; a script reads --json ("drift")
    return ExitCode.OK


def _history_table(deployments: Sequence[Any]) -> str:
    return table(
        [
            [
                d.id, d.stage, d.kind, d.release_id, d.from_release, d.result, d.phase, d.started_by,
                _short(d.started_at), f"{d.duration:.1f}s" if d.duration is not None else "", len(d.hosts),
                len(d.warnings) or "",
            ]
            for d in deployments
        ],
        ["#", "stage", "kind", "release", "from", "result", "phase", "by", "started", "took", "hosts", "warnings"],
    )  # fmt: skip


def cmd_history(ctx: Context, args: argparse.Namespace) -> int:
    if args.stage:
        ctx.pipeline.stage(args.stage)
    if args.release:
        check_release_id(args.release)
    if args.json:
        ctx.json(views.history(ctx.store, stage=args.stage, release_id=args.release, limit=args.limit or None))
        return ExitCode.OK
    deployments = ctx.store.deployments(stage=args.stage, release_id=args.release, limit=args.limit or None)
    ctx.print(_history_table(deployments) if deployments else "no deployment recorded")
    for d in deployments:
        if d.drift_override:
            ctx.print(f"#{d.id} went over drift: {d.drift_override}")
    return ExitCode.OK


# -- locks -------------------------------------------------------------------------------------------------
def cmd_lock(ctx: Context, args: argparse.Namespace) -> int:
    stage = ctx.pipeline.stage(args.stage)
    lease = parse_duration(args.lease)
    if not lease:
        raise bad_input(f"--lease: not a duration: {args.lease!r} (e.g. 30m, 2h)")
    if not args.reason.strip():
        raise bad_input("--reason must say why")
    handle = ctx.store.acquire_lock(
        stage.name, owner=ctx.user, reason=args.reason, kind="manual", lease=lease, now=utcnow(), force=args.force
    )
    if args.json:
        ctx.json({"lock": handle.record, "event": handle.event})
    else:
        ctx.print(f"{stage.name} locked by {ctx.user} until {_short(handle.record.expires_at)} ({handle.event})")
    return ExitCode.OK


def cmd_unlock(ctx: Context, args: argparse.Namespace) -> int:
    stage = ctx.pipeline.stage(args.stage)
    held = ctx.store.unlock(stage.name, owner=ctx.user, now=utcnow(), force=args.force, reason=args.reason or "")
    if args.json:
        ctx.json({"stage": stage.name, "released": held})
    else:
        ctx.print(f"{stage.name} unlocked (was held by {held.owner})" if held else f"{stage.name} was not locked")
    return ExitCode.OK


def cmd_locks(ctx: Context, args: argparse.Namespace) -> int:
    if args.json:
        ctx.json(views.locks(ctx.store, args.stage, limit=args.limit))
        return ExitCode.OK
    locks = ctx.store.locks()
    events = ctx.store.lock_events(args.stage, limit=args.limit)
    ctx.print(
        table(
            [[lk.stage, lk.owner, lk.kind, lk.reason, _short(lk.expires_at)] for lk in locks.values()],
            ["stage", "owner", "kind", "reason", "expires"],
        )
    )
    ctx.print()
    ctx.print(
        table(
            [[e.id, e.stage, e.event, e.owner, e.previous_owner, e.reason, _short(e.at)] for e in events],
            ["#", "stage", "event", "by", "previous owner", "reason", "at"],
        )
    )
    return ExitCode.OK


# -- lab / config ------------------------------------------------------------------------------------------
def cmd_lab_up(ctx: Context, args: argparse.Namespace) -> int:
    from .lab import check_prod_app_hosts, check_stage, lab_up, wait_running  # noqa: PLC0415

    check_prod_app_hosts(args.prod_app_hosts)
    for name in args.stage:
        check_stage(name)
    names = list(dict.fromkeys(args.stage)) or list(ctx.pipeline.names)
    if args.inventory_dir:
        targets = {name: Path(args.inventory_dir) / f"{name}.yml" for name in names}
    else:  # where the pipeline reads each stage's inventory
        targets = {name: ctx.pipeline.stage(name).inventory for name in names}
    made = lab_up(
        targets,
        prefix=args.prefix,
        prod_app_hosts=args.prod_app_hosts,
        image=args.image,
        artifacts_dir=Path(args.artifacts_dir),
        subnet_base=args.subnet_base,
    )
    wait_running([h for s in made for h in s.hosts])
    if args.json:
        ctx.json(made)
        return ExitCode.OK
    for s in made:
        done = {"created": s.created, "started": s.started, "removed": s.removed}
        changes = "".join(f"; {what} {', '.join(hosts)}" for what, hosts in done.items() if hosts)
        ctx.print(f"{s.stage}: network {s.network} ({s.subnet}), inventory {s.inventory}{changes}")
        for host, groups in s.groups.items():
            ctx.print(f"  {host}: {', '.join(groups)}")
        if s.secrets:
            ctx.print(f"  secrets written: {s.secrets}")
    return ExitCode.OK


def cmd_lab_down(ctx: Context, args: argparse.Namespace) -> int:
    from .lab import lab_down  # noqa: PLC0415

    removed = lab_down(args.prefix)
    if args.json:
        ctx.json({"removed": removed})
    else:
        ctx.print(f"removed: {', '.join(removed)}" if removed else "nothing to remove")
    return ExitCode.OK


def cmd_config(ctx: Context, args: argparse.Namespace) -> int:
    values = {}
    for name, setting in ctx.settings.sources().items():
        value = setting.value
        if name == "state_url":
            value = redact_url(str(value))
        values[name] = {"value": list(value) if isinstance(value, tuple) else value, "source": setting.source}
    if args.json:
        ctx.json(values)
    else:
        ctx.print(table([[k, v["value"], v["source"]] for k, v in values.items()], ["setting", "value", "source"]))
    return ExitCode.OK


def cmd_serve(ctx: Context, args: argparse.Namespace) -> int:
    from .web.command import serve  # noqa: PLC0415 - Flask and waitress only for this command

    return serve(ctx, args)


# -- parser ------------------------------------------------------------------------------------------------
def _cache_argparse_translations() -> None:
    """argparse looks up the gettext catalogue for every help string of every sub-parser (about 60 file
    searches per start, a third of the run time of ``itopctl status``); the answer never changes within a process."""
    translate = getattr(argparse, "_", None)
    if translate is not None and not hasattr(translate, "cache_info"):
        argparse._ = functools.lru_cache(maxsize=256)(translate)  # type: ignore[attr-defined]


def build_parser() -> argparse.ArgumentParser:
    _cache_argparse_translations()
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("settings (defaults < config file < environment < command line)")
    g.add_argument("--config", default=argparse.SUPPRESS, help="TOML config file (default: ./itopctl.toml)")
    for opt in OPTIONS:
        if opt.name in ("env_passthrough", "secret_env") or opt.name in SERVE_OPTIONS:
            continue
        g.add_argument(f"--{opt.name.replace('_', '-')}", default=argparse.SUPPRESS, help=f"{opt.help} [{opt.env}]")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")

    parser = argparse.ArgumentParser(
        prog="itopctl",
        parents=[common],
        description="Promote unistra.itop releases through the pipeline's stages.",
        epilog="exit codes: 0 done, 2 bad input, 3 refused (gate/lock/policy), 4 failed, 5 failed and rolled back, "
        "6 stage lock taken over (stopped), 130 interrupted at a phase boundary, 141 output closed early",
    )
    parser.add_argument("--version", action="version", version=f"itopctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[Context, argparse.Namespace], int], helptext: str, parent: Any = sub) -> Any:
        p = parent.add_parser(name, parents=[common], help=helptext, description=helptext)
        p.set_defaults(func=func)
        return p

    _release_commands(sub, add)
    _deploy_commands(add)
    _lock_commands(add)
    _lab_commands(sub, add)
    add("config", cmd_config, "show the settings and where each comes from")
    p = add("serve", cmd_serve, "the web board: stages, gates, approvals, history; approve and reject when signed in")
    serve_arguments(p)
    return parser


Adder = Callable[..., Any]


def _release_commands(sub: Any, add: Adder) -> None:
    release = sub.add_parser("release", help="add, list, show, reject releases")
    rsub = release.add_subparsers(dest="release_command", required=True, metavar="ACTION")
    p = add("add", cmd_release_add, "record a release manifest (immutable)", rsub)
    p.add_argument("manifest", help="manifest file (YAML or JSON)")
    add("list", cmd_release_list, "list releases", rsub)
    p = add("show", cmd_release_show, "show a release, its approvals and deployments", rsub)
    p.add_argument("id")
    p = add("reject", cmd_release_reject, "reject a release for ever", rsub)
    p.add_argument("id")
    p.add_argument("--reason", required=True)


def _deploy_commands(add: Adder) -> None:
    for name, helptext in (
        ("promote", "promote a release to a stage (gates, lock, prepare, switch in batches, verify)"),
        ("deploy", "deploy a release to the first stage (same as promote --to <first stage>)"),
    ):
        p = add(name, cmd_promote, helptext)
        p.add_argument("id")
        if name == "promote":
            p.add_argument("--to", required=True, metavar="STAGE")
        p.add_argument("--check", action="store_true", help="check the gates only, change nothing")
        p.add_argument(
            "--allow-drift",
            metavar="REASON",
            help="deploy even over hosts that drifted from what itopctl left (switched or edited by hand); the "
            "reason and the drift are recorded on the deployment",
        )

    p = add("approve", cmd_approve, "approve a release for a stage (recorded with who and when)")
    p.add_argument("id")
    p.add_argument("--stage", required=True)
    p.add_argument("--reason", required=True)

    p = add("rollback", cmd_rollback, "roll a stage back to its previous good release (or --to ID)")
    p.add_argument("stage")
    p.add_argument("--to", metavar="ID")
    p.add_argument("--restore-db", action="store_true", help="restore the database dump across a schema change")

    p = add("status", cmd_status, "stages x current, previous, when, who, health, lock")
    p.add_argument("--stage", help="only this stage")
    p.add_argument(
        "--probe",
        action="store_true",
        help="also ask the hosts what they run (the release engine's info on each of the stage's release_roots)",
    )
    p = add("history", cmd_history, "deployments, newest first")
    p.add_argument("--stage")
    p.add_argument("--release")
    p.add_argument("--limit", type=int, default=50, help="0 for all (default 50)")


def _lock_commands(add: Adder) -> None:
    p = add("lock", cmd_lock, "lock a stage (owner, reason, lease); --force takes it over (recorded)")
    p.add_argument("stage")
    p.add_argument("--reason", required=True)
    p.add_argument("--lease", default="1h", help="how long (e.g. 30m, 2h; default 1h)")
    p.add_argument("--force", action="store_true")
    p = add("unlock", cmd_unlock, "release your lock on a stage; --force breaks someone else's (recorded)")
    p.add_argument("stage")
    p.add_argument("--force", action="store_true")
    p.add_argument("--reason")
    p = add("locks", cmd_locks, "current locks and the lock audit trail")
    p.add_argument("--stage")
    p.add_argument("--limit", type=int, default=50)


def _lab_commands(sub: Any, add: Adder) -> None:
    from .lab import ARTIFACTS_DIR, MAX_PROD_APP_HOSTS, PROD_APP_HOSTS, STACK_IMAGE, STAGES, SUBNET_BASE  # noqa: PLC0415

    lab = sub.add_parser("lab", help="the local docker lab")
    lsub = lab.add_subparsers(dest="lab_command", required=True, metavar="ACTION")
    p = add("up", cmd_lab_up, "create the lab's networks, systemd containers, inventories and secrets", lsub)
    p.add_argument(
        "--stage",
        action="append",
        default=[],
        metavar="STAGE",
        help=f"a stage to make, one of {', '.join(STAGES)} (repeatable; default: the pipeline's stages)",
    )
    p.add_argument(
        "--prod-app-hosts",
        type=int,
        default=PROD_APP_HOSTS,
        metavar="N",
        help=f"prod's application hosts (iTop + hub), 1 to {MAX_PROD_APP_HOSTS} (default {PROD_APP_HOSTS})",
    )
    p.add_argument("--prefix", default="lab", help="names of networks and containers: <prefix>-<stage>[-<host>]")
    p.add_argument("--inventory-dir", help="write <dir>/<stage>.yml (default: the pipeline's inventory paths)")
    p.add_argument("--image", default=STACK_IMAGE, help="the containers' image (scripts/stack-image.sh)")
    p.add_argument(
        "--artifacts-dir",
        default=str(ARTIFACTS_DIR),
        help="the controller's artifacts directory, mounted read-only at the same path in every container",
    )
    p.add_argument(
        "--subnet-base",
        default=SUBNET_BASE,
        help=f"the first stage's /24; each next stage the next /24 (default {SUBNET_BASE})",
    )
    p = add("down", cmd_lab_down, "remove the lab's containers and networks", lsub)
    p.add_argument("--prefix", default="lab")


def _pipe_closed(out: TextIO) -> int:
    """``itopctl status | head``: the reader went away. Nothing to say (no one reads), no traceback; the exit code
    a shell gives a command killed by SIGPIPE. Standard output goes to /dev/null so Python's final flush is quiet."""
    try:
        fileno = out.fileno()
    except (OSError, ValueError):  # not a real file (tests)
        return int(ExitCode.PIPE_CLOSED)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fileno)
    os.close(devnull)
    return int(ExitCode.PIPE_CLOSED)


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0) if not isinstance(exc.code, str) else ExitCode.BAD_INPUT
    if not hasattr(args, "json"):
        args.json = False
    ctx: Context | None = None
    try:
        ctx = Context(args, dict(os.environ), out, err)
        code = int(args.func(ctx, args))
        out.flush()  # here, where a closed pipe is caught, not at interpreter exit
        return code
    except BrokenPipeError:
        return _pipe_closed(out)
    except ItopctlError as exc:
        print(f"itopctl: {exc}", file=err)
        return int(exc.code)
    except KeyboardInterrupt:
        print("itopctl: interrupted", file=err)
        return int(ExitCode.INTERRUPTED)
    finally:
        if ctx is not None:
            ctx.close()
