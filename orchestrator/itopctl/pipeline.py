"""``pipeline.yml``: the stages a release goes through, in order, and what each one requires.

Example (every key but ``stages[].name`` is optional; ``defaults`` is inherited by each stage)::

    defaults:
      inventory: inventories/lab/{stage}.yml      # {stage} is replaced by the stage name
      playbooks: {prepare: playbooks/deploy.yml, switch: playbooks/deploy.yml,
                  verify: playbooks/verify.yml, rollback: playbooks/rollback.yml}
      batch_size: 1
      auto_rollback: true
    ansible:
      collections_path: collections             # relative to this file
      environment: {ANSIBLE_FORCE_COLOR: "0"}
      strategy: mitogen                         # linear (Ansible's own, the default) or mitogen
    stages:
      - dev
      - name: prod
        batch_size: 2
        verify: {checks: [{name: home, url: "https://itop/", contains: "iTop"}]}
        gates:
          soak: 24h                               # on the previous stage
          approvals: {count: 2}                   # distinct approvers, not the promoter
          freeze:
            - {start: "2026-12-20T00:00:00+01:00", end: "2027-01-04T08:00:00+01:00", reason: winter break}
            - {weekdays: [fri, sat, sun], from: "16:00", to: "23:59", timezone: Europe/Paris}
        sentry: {url: "https://sentry.example.org/", org: unistra, project: itop, token_env: SENTRY_AUTH_TOKEN}
        release_roots: {itop: /srv/itop, hub: /srv/hub}   # what `itopctl status --probe` reads on each host
        switch_order: [rabbitmq, workers, hub, itop_web]  # inventory groups switched in turn, each in batches

Without ``stages`` the pipeline is dev, test, pprd, prod. Validation reports every error with its place.

Every playbook run gets these extra vars (docs/design.md, "Site playbooks"): ``release_id``, ``release_manifest``,
``deploy_stage``, ``deploy_owner``, ``deploy_phase`` (prepare | switch | verify | rollback), ``deploy_batch_size``,
``deploy_verify_checks`` (the stage's ``verify.checks``), ``itopctl_deployment_id``, the stage's ``extra_vars``;
a switch run also gets ``deploy_batch`` (1, 2, ...; itopctl limits each run to one batch of hosts) and, with a
``switch_order``, ``deploy_switch_group`` (the group whose component this run switches on its batch), a rollback
``rollback_to`` and ``restore_db``. One playbook can serve every phase by looking at ``deploy_phase``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, time, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .collection import rules
from .errors import bad_input
from .yamlload import Checker, PathKey, load_yaml_file

DEFAULT_STAGES = ("dev", "test", "pprd", "prod")
# the collection's phases (rules.DEPLOY_PHASES) but "full": itopctl runs prepare and switch apart, so that a failed
# prepare switches nothing
PHASES = tuple(phase for phase in rules.DEPLOY_PHASES if phase != "full")
STAGE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
GROUP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # an Ansible group name that is a valid variable name
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> int | None:
    """``90``, ``"90s"``, ``"30m"``, ``"24h"``, ``"2d"`` -> seconds; None when not a duration."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return int(match.group(1)) * _UNIT[match.group(2)]
    return None


@dataclass(frozen=True)
class FreezeWindow:
    """Either an absolute period (start/end) or a weekly one (weekdays + from/to times in a time zone)."""

    reason: str
    start: datetime | None = None
    end: datetime | None = None
    weekdays: tuple[int, ...] = ()
    from_time: time | None = None
    to_time: time | None = None
    timezone: str = "UTC"

    def contains(self, moment: datetime) -> bool:
        if self.start is not None and self.end is not None:
            return self.start <= moment < self.end
        zone: tzinfo = ZoneInfo(self.timezone)
        local = moment.astimezone(zone)
        clock = local.time().replace(tzinfo=None)
        assert self.from_time is not None and self.to_time is not None
        # "to: 23:59" means up to the end of that minute
        end = self.to_time.replace(second=59, microsecond=999999) if self.to_time.second == 0 else self.to_time
        if self.from_time <= end:
            return local.weekday() in self.weekdays and self.from_time <= clock <= end
        # a window across midnight (from 22:00 to 06:00) belongs to the weekday it starts on
        yesterday = (local.weekday() - 1) % 7
        return (local.weekday() in self.weekdays and clock >= self.from_time) or (
            yesterday in self.weekdays and clock <= end
        )

    def describe(self) -> str:
        if self.start is not None and self.end is not None:
            span = f"{self.start.isoformat()} -> {self.end.isoformat()}"
        else:
            days = ",".join(WEEKDAYS[d] for d in self.weekdays)
            assert self.from_time is not None and self.to_time is not None
            span = f"{days} {self.from_time:%H:%M}-{self.to_time:%H:%M} {self.timezone}"
        return f"{span} ({self.reason})" if self.reason else span


@dataclass(frozen=True)
class VerifyCheck:
    name: str
    url: str
    contains: str = ""
    status: int = 200


@dataclass(frozen=True)
class SentryConfig:
    """Where to record releases and deploys. The token is never here: only the NAME of the variable holding it."""

    url: str
    org: str
    project: str
    token_env: str = "SENTRY_AUTH_TOKEN"  # noqa: S105 - the NAME of a variable, not a token
    environment: str = ""


@dataclass(frozen=True)
class Gates:
    soak_seconds: int = 0
    approvals: int = 0
    freeze: tuple[FreezeWindow, ...] = ()


@dataclass(frozen=True)
class Stage:
    name: str
    index: int
    inventory: Path
    playbooks: Mapping[str, Path]
    batch_size: int = 1
    auto_rollback: bool = True
    verify_checks: tuple[VerifyCheck, ...] = ()
    gates: Gates = field(default_factory=Gates)
    sentry: SentryConfig | None = None
    extra_vars: Mapping[str, Any] = field(default_factory=dict)
    release_roots: Mapping[str, str] = field(default_factory=dict)
    switch_order: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pipeline:
    path: Path
    stages: tuple[Stage, ...]
    environment: Mapping[str, str] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise bad_input(f"unknown stage {name!r}; the pipeline {self.path} has: {', '.join(self.names)}")

    def previous(self, stage: Stage) -> Stage | None:
        return self.stages[stage.index - 1] if stage.index > 0 else None

    @property
    def first(self) -> Stage:
        return self.stages[0]


def _parse_clock(checker: Checker, value: object, path: PathKey) -> time | None:
    if isinstance(value, int) and not isinstance(value, bool):  # YAML 1.1 reads 16:00 as sexagesimal 960
        value = f"{value // 60:02d}:{value % 60:02d}"
    if isinstance(value, str):
        try:
            return time.fromisoformat(value)
        except ValueError:
            pass
    checker.error(path, f"must be a time of day HH:MM, got {value!r}")
    return None


def _parse_moment(checker: Checker, value: object, path: PathKey) -> datetime | None:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            checker.error(path, f"must be an ISO 8601 date-time, got {value!r}")
            return None
    else:
        checker.error(path, f"must be an ISO 8601 date-time, got {value!r}")
        return None
    if moment.tzinfo is None:
        checker.error(path, "needs a UTC offset (e.g. 2026-12-20T00:00:00+01:00 or ...Z)")
        return None
    return moment


def _weekly(checker: Checker, raw: dict[str, Any], where: PathKey) -> FreezeWindow | None:
    days_raw = raw.get("weekdays")
    days: list[int] = []
    if not isinstance(days_raw, list) or not days_raw:
        checker.error((*where, "weekdays"), "a window needs start/end, or weekdays with from/to")
    else:
        for j, day in enumerate(days_raw):
            if str(day).lower()[:3] in WEEKDAYS:
                days.append(WEEKDAYS.index(str(day).lower()[:3]))
            else:
                checker.error((*where, "weekdays", j), f"unknown weekday {day!r} (mon..sun)")
    from_time = _parse_clock(checker, raw.get("from", "00:00"), (*where, "from"))
    to_time = _parse_clock(checker, raw.get("to", "23:59"), (*where, "to"))
    zone = str(raw.get("timezone", "UTC"))
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        checker.error((*where, "timezone"), f"unknown time zone {zone!r}")
        return None
    if not days or from_time is None or to_time is None:
        return None
    reason = str(raw.get("reason", ""))
    return FreezeWindow(reason=reason, weekdays=tuple(days), from_time=from_time, to_time=to_time, timezone=zone)


def _window(checker: Checker, item: object, where: PathKey) -> FreezeWindow | None:
    raw = checker.mapping(item, where, {"start", "end", "weekdays", "from", "to", "timezone", "reason"})
    if "start" not in raw and "end" not in raw:
        return _weekly(checker, raw, where)
    start = _parse_moment(checker, raw.get("start"), (*where, "start"))
    end = _parse_moment(checker, raw.get("end"), (*where, "end"))
    if start is None or end is None:
        return None
    if end <= start:
        checker.error((*where, "end"), "must be after start")
        return None
    return FreezeWindow(reason=str(raw.get("reason", "")), start=start, end=end)


def _freeze(checker: Checker, value: object, path: PathKey) -> tuple[FreezeWindow, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        checker.error(path, "must be a list of windows")
        return ()
    windows = (_window(checker, item, (*path, i)) for i, item in enumerate(value))
    return tuple(w for w in windows if w is not None)


def _gates(checker: Checker, value: object, path: PathKey) -> Gates:
    raw = checker.mapping(value, path, {"soak", "approvals", "freeze"})
    soak = 0
    if "soak" in raw:
        parsed = parse_duration(raw["soak"])
        if parsed is None:
            checker.error((*path, "soak"), f"must be a duration like 90s, 30m, 24h, 2d; got {raw['soak']!r}")
        else:
            soak = parsed
    approvals = 0
    if "approvals" in raw:
        appr = checker.mapping(raw["approvals"], (*path, "approvals"), {"count"})
        count = checker.integer(appr.get("count"), (*path, "approvals", "count"), 0)
        approvals = count or 0
    return Gates(soak_seconds=soak, approvals=approvals, freeze=_freeze(checker, raw.get("freeze"), (*path, "freeze")))


def _checks(checker: Checker, value: object, path: PathKey) -> tuple[VerifyCheck, ...]:
    raw = checker.mapping(value, path, {"checks"})
    items = raw.get("checks", [])
    if items is None:
        return ()
    if not isinstance(items, list):
        checker.error((*path, "checks"), "must be a list")
        return ()
    out: list[VerifyCheck] = []
    for i, item in enumerate(items):
        where = (*path, "checks", i)
        check = checker.mapping(item, where, {"name", "url", "contains", "status"})
        name = checker.string(check.get("name"), (*where, "name"))
        url = checker.string(check.get("url"), (*where, "url"))
        status = checker.integer(check.get("status", 200), (*where, "status"), 100)
        if name and url and status:
            out.append(VerifyCheck(name=name, url=url, contains=str(check.get("contains", "")), status=status))
    return tuple(out)


def _sentry(checker: Checker, value: object, path: PathKey) -> SentryConfig | None:
    if value is None:
        return None
    raw = checker.mapping(value, path, {"url", "org", "project", "token_env", "environment", "token"})
    if "token" in raw:
        checker.error((*path, "token"), "never put a token in the pipeline: name its environment variable in token_env")
    url = checker.string(raw.get("url"), (*path, "url"))
    org = checker.string(raw.get("org"), (*path, "org"))
    project = checker.string(raw.get("project"), (*path, "project"))
    token_env = checker.string(raw.get("token_env", "SENTRY_AUTH_TOKEN"), (*path, "token_env"), pattern=ENV_NAME)
    env = raw.get("environment", "")
    if not (url and org and project and token_env):
        return None
    return SentryConfig(url=url, org=org, project=project, token_env=token_env, environment=str(env or ""))


def _roots(checker: Checker, value: object, path: PathKey) -> dict[str, str]:
    """``release_roots``: application name -> its root on the hosts (may use Ansible variables)."""
    roots: dict[str, str] = {}
    for name, root in checker.mapping(value, path, None).items():
        text = checker.string(root, (*path, name))
        if text:
            roots[str(name)] = text
    return roots


_STAGE_KEYS = {
    "name",
    "inventory",
    "playbooks",
    "batch_size",
    "auto_rollback",
    "verify",
    "gates",
    "sentry",
    "extra_vars",
    "release_roots",
    "switch_order",
}


def _switch_order(checker: Checker, value: object, path: PathKey) -> tuple[str, ...]:
    """``switch_order``: inventory groups, switched one after the other, each in batches (empty: all hosts)."""
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        checker.error(path, "must be a non-empty list of inventory group names")
        return ()
    order: list[str] = []
    for i, item in enumerate(value):
        name = checker.string(item, (*path, i), pattern=GROUP_NAME)
        if name is None:
            continue
        if name in order:
            checker.error((*path, i), f"group {name!r} appears twice")
            continue
        order.append(name)
    return tuple(order)


def _strategy(checker: Checker, value: object) -> dict[str, str]:
    """``ansible.strategy``: ``linear`` (Ansible's own) or ``mitogen`` (the Mitogen strategy: one Python interpreter
    kept per host for the whole run instead of one per task; the hosts' connection must then be given by its short
    name, e.g. ``ansible_connection: docker`` or ``ssh``, which Mitogen takes over). The plugin directory comes from
    the installed ``ansible_mitogen`` package (a dependency of itopctl)."""
    name = checker.string(value, ("ansible", "strategy"))
    if name is None or name == "linear":
        return {}
    if name != "mitogen":
        checker.error(("ansible", "strategy"), f"must be linear or mitogen, not {name!r}")
        return {}
    try:
        return mitogen_environment()
    except ImportError:
        checker.error(
            ("ansible", "strategy"),
            "mitogen is not installed in itopctl's Python: install it (pip install -c constraints.txt mitogen) "
            "or use strategy: linear",
        )
        return {}


def mitogen_environment() -> dict[str, str]:
    """The variables that make ansible-playbook run with the installed Mitogen strategy (ImportError without it)."""
    import ansible_mitogen  # type: ignore[import-untyped]  # noqa: PLC0415 - only for the pipelines that ask

    plugins = Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"
    return {"ANSIBLE_STRATEGY": "mitogen_linear", "ANSIBLE_STRATEGY_PLUGINS": str(plugins)}


def _environment(checker: Checker, value: object, base: Path) -> dict[str, str]:
    """``ansible:`` -> the variables every run gets (paths resolved against the pipeline's directory)."""
    ansible = checker.mapping(value, ("ansible",), {"collections_path", "roles_path", "environment", "strategy"})
    environment: dict[str, str] = {}
    if "strategy" in ansible:
        environment.update(_strategy(checker, ansible["strategy"]))
    for key, item in checker.mapping(ansible.get("environment"), ("ansible", "environment"), None).items():
        if not ENV_NAME.match(key):
            checker.error(("ansible", "environment", key), "not a valid environment variable name")
        else:
            environment[key] = str(item)
    for key, var in (("collections_path", "ANSIBLE_COLLECTIONS_PATH"), ("roles_path", "ANSIBLE_ROLES_PATH")):
        if key in ansible:
            paths = checker.string(ansible[key], ("ansible", key))
            if paths:
                environment[var] = ":".join(str((base / p).resolve()) for p in paths.split(":"))
    return environment


class _StageReader:
    """Reads one ``stages[i]`` entry, falling back to ``defaults`` key by key."""

    def __init__(self, checker: Checker, defaults: dict[str, Any], base: Path) -> None:
        self.checker = checker
        self.defaults = defaults
        self.base = base

    def pick(self, raw: dict[str, Any], where: PathKey, key: str) -> tuple[Any, PathKey]:
        if key in raw:
            return raw[key], (*where, key)
        return self.defaults.get(key), ("defaults", key)

    def playbooks(self, raw: dict[str, Any], where: PathKey, name: str) -> dict[str, Path]:
        checker = self.checker
        own = raw.get("playbooks") if isinstance(raw.get("playbooks"), dict) else {}
        merged = {
            **checker.mapping(self.defaults.get("playbooks"), ("defaults", "playbooks"), set(PHASES)),
            **checker.mapping(raw.get("playbooks"), (*where, "playbooks"), set(PHASES)),
        }
        playbooks: dict[str, Path] = {}
        for phase in PHASES:
            if merged.get(phase) is None:
                checker.error((*where, "playbooks"), f"no {phase!r} playbook (set it here or in defaults.playbooks)")
                continue
            place = (*where, "playbooks", phase) if phase in (own or {}) else ("defaults", "playbooks", phase)
            playbook = checker.string(merged[phase], place)
            if playbook:
                playbooks[phase] = self.base / playbook.replace("{stage}", name)
        return playbooks

    def stage(self, raw: dict[str, Any], where: PathKey, name: str, index: int) -> Stage:
        checker = self.checker
        inv_value, inv_path = self.pick(raw, where, "inventory")
        inventory = self.base / f"inventories/{name}"
        if inv_value is not None:
            inv = checker.string(inv_value, inv_path)
            if inv:
                inventory = self.base / inv.replace("{stage}", name)
        batch_value, batch_path = self.pick(raw, where, "batch_size")
        batch = checker.integer(1 if batch_value is None else batch_value, batch_path, 1)
        ar_value, ar_path = self.pick(raw, where, "auto_rollback")
        auto_rollback = checker.boolean(True if ar_value is None else ar_value, ar_path)
        return Stage(
            name=name,
            index=index,
            inventory=inventory,
            playbooks=self.playbooks(raw, where, name),
            batch_size=batch or 1,
            auto_rollback=True if auto_rollback is None else auto_rollback,
            verify_checks=_checks(checker, *self.pick(raw, where, "verify")),
            gates=_gates(checker, *self.pick(raw, where, "gates")),
            sentry=_sentry(checker, *self.pick(raw, where, "sentry")),
            extra_vars=checker.mapping(*self.pick(raw, where, "extra_vars"), None),
            release_roots=_roots(checker, *self.pick(raw, where, "release_roots")),
            switch_order=_switch_order(checker, *self.pick(raw, where, "switch_order")),
        )


def load_pipeline(path: Path) -> Pipeline:
    """Load and validate a pipeline file; raise one bad-input error listing every problem with its place."""
    doc = load_yaml_file(path, "pipeline file")
    checker = Checker(doc)
    base = path.parent.resolve()
    top = checker.mapping(doc.data, (), {"version", "defaults", "stages", "ansible"})
    if doc.data is not None and not isinstance(doc.data, dict):
        raise bad_input(f"malformed pipeline {path}", checker.errors)
    if "version" in top and top["version"] != 1:
        checker.error(("version",), f"unsupported version {top['version']!r} (this itopctl reads version 1)")
    reader = _StageReader(checker, checker.mapping(top.get("defaults"), ("defaults",), _STAGE_KEYS - {"name"}), base)
    environment = _environment(checker, top.get("ansible"), base)

    raw_stages = top.get("stages", list(DEFAULT_STAGES))
    if not isinstance(raw_stages, list) or not raw_stages:
        checker.error(("stages",), "must be a non-empty list of stages")
        raw_stages = []
    stages: list[Stage] = []
    for index, item in enumerate(raw_stages):
        where: PathKey = ("stages", index)
        raw = checker.mapping({"name": item} if isinstance(item, str) else item, where, _STAGE_KEYS)
        name = checker.string(raw.get("name"), (*where, "name"), pattern=STAGE_NAME) if raw else None
        if name is None:
            continue
        if name in {s.name for s in stages}:
            checker.error((*where, "name"), f"stage {name!r} appears twice")
            continue
        stages.append(reader.stage(raw, where, name, len(stages)))
    if stages and stages[0].gates.soak_seconds:
        checker.error(("stages", 0, "gates", "soak"), "the first stage has no previous stage to soak on")
    if checker.errors:
        raise bad_input(f"invalid pipeline {path} ({len(checker.errors)} error(s))", checker.errors)
    return Pipeline(path=path.resolve(), stages=tuple(stages), environment=environment)
