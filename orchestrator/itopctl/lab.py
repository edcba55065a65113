"""The local lab: per stage a docker network and systemd containers of the stack image, their inventory, and the
lab's secrets.

Topology (docs/design.md, "The lab"): dev and test are one host in all six groups; pprd is an application host and a
data host; prod is N application hosts (iTop + hub), a worker host and a data host (MariaDB, PostgreSQL, RabbitMQ).
Each stage has its network ``<prefix>-<stage>`` with a fixed subnet (172.31.11.0/24 for dev, then one /24 per stage
in the order dev, test, pprd, prod), and containers named ``<prefix>-<stage>-<role><n>`` (``<prefix>-dev-1`` for an
all-in-one stage): the container's name is its host name and its inventory hostname. Every container is labelled
``unistra-itop.lab=<prefix>`` so ``lab down`` removes exactly what ``lab up`` made, and mounts the controller's
artifacts directory read-only at the same path, so a ``file://`` URI means the same on the controller and the hosts.

``lab up`` is idempotent: a running container is left alone, a stopped one is started, a missing one is created (all
of them at once, in threads), a container the topology no longer has (prod with fewer application hosts) is removed.
Each stage's inventory is written where the pipeline reads it, only when its text changes; the secrets file
``group_vars/all/vault.yml`` next to the inventories is written once (random values, 0600) and kept afterwards.

The stack image is built by scripts/stack-image.sh with every Debian package the roles install, read from the roles'
own apt tasks by :func:`stack_packages` (``python -m itopctl.lab packages ROLES_DIR`` prints them).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import shutil
import string
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ExitCode, ItopctlError, bad_input

STACK_IMAGE = "unistra-itop/debian12-stack:latest"
LABEL = "unistra-itop.lab"
# systemd as PID 1 works here with exactly these flags (see STACK-NOTES.md); --privileged does not.
SYSTEMD_FLAGS = ("--cap-add", "SYS_ADMIN", "--cgroupns=private", "--tmpfs", "/run", "--tmpfs", "/run/lock")
# Bind-mounted read-only at the same path into every lab container (scripts/build-releases.py writes there).
ARTIFACTS_DIR = Path("/var/tmp/itopctl-lab-artifacts")  # noqa: S108 -- a fixed, root-owned path, not a temp file

# The host groups the site playbook targets (playbooks/stack.yml), in the order the inventory lists them.
GROUPS = ("itop_web", "itop_db", "hub", "workers", "rabbitmq", "postgresql")
_APP = ("itop_web", "hub", "workers")
_DATA = ("itop_db", "rabbitmq", "postgresql")
# The stages the lab knows, in the order of their subnets: SUBNET_BASE for the first, the next /24 for each next one.
STAGES = ("dev", "test", "pprd", "prod")
SUBNET_BASE = "172.31.11.0/24"
PROD_APP_HOSTS = 2
MAX_PROD_APP_HOSTS = 8

# The secrets of the stack (inventories/common/stack.yml reads them): the same keys as every stage's vault.yml.
LAB_SECRET_KEYS = (
    "vault_itop_db_password",
    "vault_itop_admin_password",
    "vault_hub_db_password",
    "vault_worker_db_password",
    "vault_rabbitmq_erlang_cookie",
    "vault_rabbitmq_admin_password",
    "vault_hub_broker_password",
    "vault_worker_broker_password",
    "vault_itop_broker_password",
)
SECRET_LENGTH = 32  # alphanumeric: safe unquoted in URLs, shells and config files; an Erlang cookie too
SECRETS_FILE = Path("group_vars") / "all" / "vault.yml"


@dataclass(frozen=True)
class LabHost:
    name: str
    groups: tuple[str, ...]


@dataclass(frozen=True)
class LabStage:
    stage: str
    network: str
    subnet: str
    hosts: tuple[str, ...]
    groups: dict[str, tuple[str, ...]]
    """host -> its groups"""
    inventory: str
    created: tuple[str, ...] = field(default=())
    started: tuple[str, ...] = field(default=())
    removed: tuple[str, ...] = field(default=())
    secrets: str | None = None
    """the secrets file written by this run (None: it was there already)"""


# -- topology and files (no docker) --------------------------------------------------------------------------------
def check_prod_app_hosts(count: int) -> None:
    if not 1 <= count <= MAX_PROD_APP_HOSTS:
        raise bad_input(f"--prod-app-hosts must be between 1 and {MAX_PROD_APP_HOSTS} (got {count})")


def check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise bad_input(f"the lab has no stage {stage!r}: it makes {', '.join(STAGES)}")


def topology(stage: str, prefix: str, prod_app_hosts: int = PROD_APP_HOSTS) -> tuple[LabHost, ...]:
    """The hosts of a stage and their groups (docs/design.md, "The lab")."""
    check_stage(stage)
    check_prod_app_hosts(prod_app_hosts)
    base = f"{prefix}-{stage}"
    if stage in ("dev", "test"):
        return (LabHost(f"{base}-1", GROUPS),)
    if stage == "pprd":
        return (LabHost(f"{base}-app1", _APP), LabHost(f"{base}-data1", _DATA))
    apps = tuple(LabHost(f"{base}-app{n}", ("itop_web", "hub")) for n in range(1, prod_app_hosts + 1))
    return (*apps, LabHost(f"{base}-worker1", ("workers",)), LabHost(f"{base}-data1", _DATA))


def stage_subnet(stage: str, base: str = SUBNET_BASE) -> str:
    """The stage's fixed /24: ``base`` for the first stage of STAGES, the next /24 for each next one."""
    check_stage(stage)
    try:
        net = ipaddress.IPv4Network(base)
    except ValueError as exc:
        raise bad_input(f"bad subnet base {base!r}: {exc}") from None
    if net.prefixlen != 24:  # one /24 per stage
        raise bad_input(f"the subnet base must be a /24 (got {base})")
    first = int(net.network_address) + STAGES.index(stage) * 256
    if first + 255 > int(ipaddress.IPv4Address("255.255.255.255")):
        raise bad_input(f"subnet base {base} leaves no room for the stage {stage}")
    return str(ipaddress.IPv4Network((first, 24)))


def inventory_text(stage: str, hosts: Sequence[LabHost], subnet: str) -> str:
    lines = [
        f'# The lab\'s {stage} stage: written by `itopctl lab up` (docs/design.md, "The lab"); containers are hosts.',
        "all:",
        "  vars:",
        "    ansible_connection: docker",
        "    ansible_python_interpreter: /usr/bin/python3",
        f"    lab_stage: {stage}",
        # what itopctl passes as an extra var: a playbook run by hand configures the stage exactly as itopctl does
        f"    deploy_stage: {stage}",
        f"    stack_client_networks: [{subnet}]",
        "  children:",
    ]
    for group in GROUPS:
        members = [h.name for h in hosts if group in h.groups]
        lines += [f"    {group}:", "      hosts:", *(f"        {name}: {{}}" for name in members)]
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str, mode: int = 0o644, *, replace: bool = True) -> bool:
    """Write ``text`` through a temporary file created with ``mode``. With ``replace=False`` an existing file is kept
    (link(2) refuses to overwrite: no window where a concurrent writer's file is lost). True if written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), mode)
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        if replace:
            tmp.replace(path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def write_if_changed(path: Path, text: str) -> bool:
    """Write the file only when its text differs (an unchanged inventory keeps its mtime). True if written."""
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    return _write_atomic(path, text)


def secrets_text(keys: Sequence[str] = LAB_SECRET_KEYS) -> str:
    alphabet = string.ascii_letters + string.digits
    lines = [
        "# The lab's secrets: random values written by `itopctl lab up` when this file is missing (0600, gitignored).",
        "# Kept as they are while the lab lives (its hosts hold them); remove it after `itopctl lab down` for others.",
    ]
    lines += [f'{key}: "{"".join(secrets.choice(alphabet) for _ in range(SECRET_LENGTH))}"' for key in keys]
    return "\n".join(lines) + "\n"


def ensure_secrets(inventory_dir: Path) -> Path | None:
    """Write ``<inventory_dir>/group_vars/all/vault.yml`` if it is missing; return its path if written."""
    path = inventory_dir / SECRETS_FILE
    if path.exists():
        return None
    return path if _write_atomic(path, secrets_text(), 0o600, replace=False) else None


# -- the packages of the stack image -------------------------------------------------------------------------------
# the tasks that install packages: the collection's own action (dpkg asked first) and apt itself
_APT_MODULES = ("unistra.itop.packages", "ansible.builtin.apt", "ansible.legacy.apt", "apt")
_VAR_REF = re.compile(r"^\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}$")


class _AnyTagLoader(yaml.SafeLoader):
    """Task files may hold tags (``!unsafe``, ``!vault``): read their values plainly, the tag does not matter here."""


def _plain(loader: yaml.SafeLoader, _suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_mapping(node)  # type: ignore[arg-type]


_AnyTagLoader.add_multi_constructor("!", _plain)


def _load(path: Path) -> Any:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_AnyTagLoader)  # noqa: S506 -- a SafeLoader subclass


def _tasks(items: Any) -> Iterator[dict[str, Any]]:
    """Every task of a task list, those inside block/rescue/always included."""
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        yield item
        for key in ("block", "rescue", "always"):
            yield from _tasks(item.get(key))


def stack_packages(roles_dir: Path, distro: str = "Debian-12") -> list[str]:
    """The Debian packages the roles' apt tasks install (``state: present``), names resolved from the role's
    ``vars/<distro>.yml`` and ``vars/main.yml``: the one list the stack image is built from."""
    found: set[str] = set()
    for role in sorted(p for p in roles_dir.iterdir() if (p / "tasks").is_dir()):
        known: dict[str, Any] = {}
        for name in ("main.yml", f"{distro}.yml"):  # the OS file wins, as its include does in the roles
            if (role / "vars" / name).is_file():
                known.update(_load(role / "vars" / name) or {})

        def resolve(value: Any, where: str, known: dict[str, Any] = known) -> list[str]:
            if isinstance(value, list):
                return [pkg for item in value for pkg in resolve(item, where)]
            if not isinstance(value, str):
                raise ItopctlError(f"{where}: an apt package name that is not a string: {value!r}", ExitCode.FAILED)
            ref = _VAR_REF.match(value.strip())
            if ref:
                if ref.group(1) not in known:
                    raise ItopctlError(f"{where}: {ref.group(1)} is in neither vars/main.yml nor vars/{distro}.yml",
                                       ExitCode.FAILED)  # fmt: skip
                return resolve(known[ref.group(1)], where)
            if "{{" in value or "{%" in value:
                raise ItopctlError(f"{where}: the stack image reads plain names or one variable, not {value!r}",
                                   ExitCode.FAILED)  # fmt: skip
            return [pkg.strip() for pkg in value.split(",") if pkg.strip()]

        for tasks_file in sorted((role / "tasks").rglob("*.yml")):
            for task in _tasks(_load(tasks_file)):
                module = next((m for m in _APT_MODULES if m in task), None)
                args = task.get(module) if module else None
                if not isinstance(args, dict) or args.get("state", "present") not in ("present", "latest"):
                    continue
                names = args.get("name", args.get("pkg"))
                if names is not None:
                    found.update(resolve(names, f"{tasks_file.relative_to(roles_dir)}: {task.get('name', '?')}"))
    return sorted(found)


# -- docker ----------------------------------------------------------------------------------------------------------
def _docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    if shutil.which("docker") is None:
        raise ItopctlError("docker is not installed (run scripts/lab-image.sh)", ExitCode.FAILED)
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, check=False, timeout=300)
    if check and proc.returncode != 0:
        raise ItopctlError(f"docker {' '.join(args[:2])} failed: {proc.stderr.strip()}", ExitCode.FAILED)
    return proc


def _ensure_network(network: str, subnet: str, prefix: str, stage: str) -> None:
    found = _docker("network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{end}}", network, check=False)
    if found.returncode != 0:
        _docker("network", "create", "--subnet", subnet, "--label", f"{LABEL}={prefix}",
                "--label", f"{LABEL}.stage={stage}", network)  # fmt: skip
    elif found.stdout.split() != [subnet]:
        raise ItopctlError(
            f"the network {network} has the subnet {found.stdout.strip() or '(none set)'}, the lab's {stage} stage "
            f"uses {subnet} (another version of the lab, or another --subnet-base): "
            f"run `itopctl lab down --prefix {prefix}`",
            ExitCode.FAILED,
        )


def _inspect(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The containers that exist among ``names`` (docker inspect prints those it finds, and fails on the others)."""
    proc = _docker("container", "inspect", *names, check=False)
    return {c["Name"].lstrip("/"): c for c in json.loads(proc.stdout or "[]")}


def _check_layout(container: dict[str, Any], network: str, artifacts_dir: Path, prefix: str) -> None:
    name = container["Name"].lstrip("/")
    mounts = {(m.get("Source"), m.get("Destination"), m.get("RW")) for m in container.get("Mounts", [])}
    networks = container.get("NetworkSettings", {}).get("Networks", {}) or {}
    if (str(artifacts_dir), str(artifacts_dir), False) not in mounts or network not in networks:
        raise ItopctlError(
            f"the container {name} lacks the lab's network {network} or the read-only artifacts mount "
            f"{artifacts_dir}: it was made by another version of the lab; run `itopctl lab down --prefix {prefix}`",
            ExitCode.FAILED,
        )


def _run_container(host: LabHost, *, network: str, prefix: str, stage: str, image: str, artifacts_dir: Path) -> None:
    _docker(
        "run", "-d", "--name", host.name, "--hostname", host.name, "--network", network,
        "--label", f"{LABEL}={prefix}", "--label", f"{LABEL}.stage={stage}",
        "-v", f"{artifacts_dir}:{artifacts_dir}:ro",
        *SYSTEMD_FLAGS, image, "/sbin/init",
    )  # fmt: skip


def lab_up(
    stages: Mapping[str, Path],
    *,
    prefix: str,
    prod_app_hosts: int = PROD_APP_HOSTS,
    image: str = STACK_IMAGE,
    artifacts_dir: Path = ARTIFACTS_DIR,
    subnet_base: str = SUBNET_BASE,
) -> list[LabStage]:
    """Make each stage's network and containers (the missing ones at once), start stopped ones, remove those the
    topology no longer has; write each stage's inventory to the path given for it and the secrets next to it."""
    plans = {stage: topology(stage, prefix, prod_app_hosts) for stage in stages}  # all input checked first
    subnets = {stage: stage_subnet(stage, subnet_base) for stage in stages}
    if _docker("image", "inspect", image, check=False).returncode != 0:
        raise ItopctlError(f"the lab's image {image} is missing: build it with scripts/stack-image.sh", ExitCode.FAILED)
    artifacts_dir.mkdir(parents=True, exist_ok=True)

    jobs: list[tuple[str, LabHost, str]] = []  # (stage, host, "create" | "start")
    removed: dict[str, list[str]] = {stage: [] for stage in stages}
    for stage, hosts in plans.items():
        network = f"{prefix}-{stage}"
        _ensure_network(network, subnets[stage], prefix, stage)
        names = [h.name for h in hosts]
        ours = _docker("ps", "-a", "--filter", f"label={LABEL}={prefix}", "--filter", f"label={LABEL}.stage={stage}",
                       "--format", "{{.Names}}").stdout.split()  # fmt: skip
        extra = sorted(set(ours) - set(names))
        if extra:
            _docker("rm", "-f", *extra)
            removed[stage] = extra
        existing = _inspect(names)
        for host in hosts:
            container = existing.get(host.name)
            if container is None:
                jobs.append((stage, host, "create"))
                continue
            _check_layout(container, network, artifacts_dir, prefix)
            if not container["State"]["Running"]:
                jobs.append((stage, host, "start"))

    def run(job: tuple[str, LabHost, str]) -> None:
        stage, host, action = job
        if action == "start":
            _docker("start", host.name)
        else:
            _run_container(host, network=f"{prefix}-{stage}", prefix=prefix, stage=stage, image=image,
                           artifacts_dir=artifacts_dir)  # fmt: skip

    if jobs:
        with ThreadPoolExecutor(max_workers=min(8, len(jobs))) as pool:
            list(pool.map(run, jobs))  # re-raises the first failure

    secrets_dirs: set[Path] = set()  # one secrets file next to the inventories of a directory
    out: list[LabStage] = []
    for stage, path in stages.items():
        hosts = plans[stage]
        write_if_changed(path, inventory_text(stage, hosts, subnets[stage]))
        secrets_file = None if path.parent in secrets_dirs else ensure_secrets(path.parent)
        secrets_dirs.add(path.parent)
        out.append(
            LabStage(
                stage=stage,
                network=f"{prefix}-{stage}",
                subnet=subnets[stage],
                hosts=tuple(h.name for h in hosts),
                groups={h.name: h.groups for h in hosts},
                inventory=str(path),
                created=tuple(h.name for s, h, a in jobs if s == stage and a == "create"),
                started=tuple(h.name for s, h, a in jobs if s == stage and a == "start"),
                removed=tuple(removed[stage]),
                secrets=str(secrets_file) if secrets_file else None,
            )
        )
    return out


def lab_down(prefix: str) -> list[str]:
    """Remove the lab's containers and networks (by label); return what was removed."""
    removed: list[str] = []
    ids = _docker("ps", "-aq", "--filter", f"label={LABEL}={prefix}").stdout.split()
    if ids:
        names = _docker("inspect", "-f", "{{.Name}}", *ids).stdout.split()
        _docker("rm", "-f", *ids)
        removed += [n.lstrip("/") for n in names]
    nets = _docker("network", "ls", "-q", "--filter", f"label={LABEL}={prefix}").stdout.split()
    if nets:
        names = _docker("network", "inspect", "-f", "{{.Name}}", *nets).stdout.split()
        _docker("network", "rm", *nets)
        removed += names
    return removed


def wait_running(hosts: Sequence[str], timeout: float = 60.0) -> None:
    """Wait until systemd in each container reports running or degraded (boot finished). The containers boot side
    by side, so one deadline serves them all."""
    deadline = time.monotonic() + timeout
    for host in hosts:
        while True:
            proc = _docker("exec", host, "systemctl", "is-system-running", check=False)
            if proc.stdout.strip() in ("running", "degraded"):
                break
            if time.monotonic() > deadline:
                raise ItopctlError(f"{host}: systemd did not finish booting ({proc.stdout.strip()})", ExitCode.FAILED)
            time.sleep(0.1)


def main(argv: Sequence[str]) -> int:
    """``python -m itopctl.lab packages ROLES_DIR``: the stack image's packages, one a line (scripts/stack-image.sh)."""
    if list(argv[:1]) != ["packages"] or len(argv) != 2:
        print("usage: python -m itopctl.lab packages ROLES_DIR", file=sys.stderr)
        return ExitCode.BAD_INPUT
    try:
        print("\n".join(stack_packages(Path(argv[1]))))
    except ItopctlError as exc:
        print(f"itopctl.lab: {exc}", file=sys.stderr)
        return exc.code
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
