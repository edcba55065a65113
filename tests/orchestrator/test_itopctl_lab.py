"""The lab without docker: its topology, subnets, inventory text, secrets file and the stack image's package list,
and `lab up`'s decisions (create, start, remove, leave alone) against a fake docker."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from itopctl import lab
from itopctl.cli import main
from itopctl.errors import ExitCode, ItopctlError

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "collections" / "ansible_collections" / "unistra" / "itop" / "roles"


def test_the_topology_of_each_stage() -> None:
    everything = lab.GROUPS
    assert lab.topology("dev", "lab") == (lab.LabHost("lab-dev-1", everything),)
    assert lab.topology("test", "x") == (lab.LabHost("x-test-1", everything),)
    assert {h.name: set(h.groups) for h in lab.topology("pprd", "lab")} == {
        "lab-pprd-app1": {"itop_web", "hub", "workers"},
        "lab-pprd-data1": {"itop_db", "postgresql", "rabbitmq"},
    }
    assert {h.name: set(h.groups) for h in lab.topology("prod", "lab")} == {
        "lab-prod-app1": {"itop_web", "hub"},
        "lab-prod-app2": {"itop_web", "hub"},
        "lab-prod-worker1": {"workers"},
        "lab-prod-data1": {"itop_db", "postgresql", "rabbitmq"},
    }
    assert [h.name for h in lab.topology("prod", "lab", 3)][:3] == ["lab-prod-app1", "lab-prod-app2", "lab-prod-app3"]
    for stage in lab.STAGES:
        hosts = lab.topology(stage, "lab", 8)
        assert all(h.groups for h in hosts)  # every host is in a group
        assert {g for h in hosts for g in h.groups} == set(lab.GROUPS)  # every group has a host


@pytest.mark.parametrize("count", [0, -1, 9])
def test_prod_app_hosts_out_of_range_is_bad_input(count: int) -> None:
    with pytest.raises(ItopctlError, match="between 1 and 8") as caught:
        lab.topology("prod", "lab", count)
    assert caught.value.code == ExitCode.BAD_INPUT


def test_an_unknown_stage_is_bad_input() -> None:
    with pytest.raises(ItopctlError, match=r"no stage 'qa'.*dev, test, pprd, prod") as caught:
        lab.topology("qa", "lab")
    assert caught.value.code == ExitCode.BAD_INPUT


def test_fixed_subnets_per_stage() -> None:
    assert [lab.stage_subnet(s) for s in lab.STAGES] == [f"172.31.{n}.0/24" for n in (11, 12, 13, 14)]
    assert lab.stage_subnet("pprd", "10.9.0.0/24") == "10.9.2.0/24"
    for bad in ("10.9.0.0/16", "nonsense", "255.255.254.0/24"):
        with pytest.raises(ItopctlError):
            lab.stage_subnet("prod", bad)


def test_the_inventory_lists_the_groups_and_the_stage_vars(tmp_path: Path) -> None:
    text = lab.inventory_text("prod", lab.topology("prod", "lab"), "172.31.14.0/24")
    data = yaml.safe_load(text)["all"]
    assert data["vars"] == {
        "ansible_connection": "docker",
        "ansible_python_interpreter": "/usr/bin/python3",
        "lab_stage": "prod",
        "deploy_stage": "prod",
        "stack_client_networks": ["172.31.14.0/24"],
    }
    assert {g: list(v["hosts"]) for g, v in data["children"].items()} == {
        "itop_web": ["lab-prod-app1", "lab-prod-app2"],
        "itop_db": ["lab-prod-data1"],
        "hub": ["lab-prod-app1", "lab-prod-app2"],
        "workers": ["lab-prod-worker1"],
        "rabbitmq": ["lab-prod-data1"],
        "postgresql": ["lab-prod-data1"],
    }
    # and Ansible reads it so
    path = tmp_path / "prod.yml"
    path.write_text(text)
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(path), "--list"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    listed = json.loads(proc.stdout)
    assert listed["workers"]["hosts"] == ["lab-prod-worker1"]
    assert listed["_meta"]["hostvars"]["lab-prod-app2"]["stack_client_networks"] == ["172.31.14.0/24"]


def test_an_unchanged_inventory_is_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dev.yml"
    assert lab.write_if_changed(path, "a\n")
    os.utime(path, (1, 1))
    assert not lab.write_if_changed(path, "a\n")
    assert path.stat().st_mtime == 1
    assert lab.write_if_changed(path, "b\n")
    assert path.read_text() == "b\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["dev.yml"]  # no temporary file left


def test_the_secrets_file_is_made_once_private_and_random(tmp_path: Path) -> None:
    written = lab.ensure_secrets(tmp_path)
    path = tmp_path / "group_vars" / "all" / "vault.yml"
    assert written == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    values = yaml.safe_load(path.read_text())
    assert tuple(values) == lab.LAB_SECRET_KEYS
    assert all(isinstance(v, str) and len(v) == 32 and v.isascii() and v.isalnum() for v in values.values())
    assert len(set(values.values())) == len(values)
    assert values["vault_rabbitmq_erlang_cookie"].isalnum()
    before = path.read_text()
    assert lab.ensure_secrets(tmp_path) is None  # kept as it is
    assert path.read_text() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["vault.yml"]


def test_the_secret_keys_are_the_plans() -> None:
    assert set(lab.LAB_SECRET_KEYS) == {
        "vault_itop_db_password", "vault_itop_admin_password", "vault_hub_db_password", "vault_worker_db_password",
        "vault_rabbitmq_erlang_cookie", "vault_rabbitmq_admin_password", "vault_hub_broker_password",
        "vault_worker_broker_password", "vault_itop_broker_password",
    }  # fmt: skip


def test_an_existing_secrets_file_is_never_replaced_even_by_a_racing_writer(tmp_path: Path) -> None:
    """A file that appears between the check and the write (another `lab up`) wins: link(2) does not overwrite."""
    path = tmp_path / "group_vars" / "all" / "vault.yml"
    path.parent.mkdir(parents=True)
    path.write_text("theirs\n")
    assert not lab._write_atomic(path, "ours\n", 0o600, replace=False)
    assert path.read_text() == "theirs\n"


# -- the stack image's packages ------------------------------------------------------------------------------------
def test_the_stack_packages_are_those_of_the_roles() -> None:
    packages = lab.stack_packages(ROLES)
    debian = {}
    for role in ("itop", "postgresql", "rabbitmq"):
        debian.update(yaml.safe_load((ROLES / role / "vars" / "Debian-12.yml").read_text()))
    expected = {*debian["_itop_web_packages"], *debian["_itop_db_packages"], *debian["_postgresql_packages"],
                *debian["_rabbitmq_packages"], "python3-venv", "postgresql-client", "python3-boto3"}  # fmt: skip
    assert set(packages) == expected
    assert packages == sorted(set(packages))


def _role(root: Path, name: str, tasks: str, debian: str = "") -> None:
    (root / name / "tasks").mkdir(parents=True)
    (root / name / "tasks" / "main.yml").write_text(tasks)
    if debian:
        (root / name / "vars").mkdir()
        (root / name / "vars" / "Debian-12.yml").write_text(debian)


def test_stack_packages_reads_blocks_variables_and_skips_removals(tmp_path: Path) -> None:
    _role(tmp_path, "one", """\
- name: A block
  block:
    - name: Install
      ansible.builtin.apt: {name: "{{ _one_packages }}", state: present}
  rescue:
    - name: Remove
      ansible.builtin.apt: {name: gone, state: absent}
- name: Only the cache
  ansible.builtin.apt: {update_cache: true}
- name: Tagged
  ansible.builtin.apt:
    name: !unsafe plain
""", "_one_packages: [a, b]\n")  # fmt: skip
    _role(tmp_path, "two", "- ansible.builtin.apt: {name: c}\n")
    assert lab.stack_packages(tmp_path) == ["a", "b", "c", "plain"]


@pytest.mark.parametrize(
    ("name", "message"),
    [('"{{ _nowhere }}"', "_nowhere is in neither"), ('"{{ a ~ b }}"', "plain names or one variable")],
)
def test_stack_packages_refuses_what_it_cannot_read(tmp_path: Path, name: str, message: str) -> None:
    _role(tmp_path, "one", f"- ansible.builtin.apt: {{name: {name}}}\n")
    with pytest.raises(ItopctlError, match=message):
        lab.stack_packages(tmp_path)


def test_the_packages_command_of_the_stack_image_script() -> None:
    proc = subprocess.run([sys.executable, "-m", "itopctl.lab", "packages", str(ROLES)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == lab.stack_packages(ROLES)
    bad = subprocess.run([sys.executable, "-m", "itopctl.lab"], capture_output=True, text=True, check=False)
    assert bad.returncode == ExitCode.BAD_INPUT and "usage" in bad.stderr


# -- lab up against a fake docker ----------------------------------------------------------------------------------
class FakeDocker:
    """Enough of docker's CLI for lab_up: networks, containers (running or not), their inspect JSON."""

    def __init__(self, artifacts: Path) -> None:
        self.artifacts = str(artifacts)
        self.networks: dict[str, str] = {}
        self.containers: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        self.calls.append(args)
        out, rc = "", 0
        match args:
            case ("image", "inspect", _):
                pass
            case ("network", "inspect", _, _, name):
                rc = 0 if name in self.networks else 1
                out = f"{self.networks.get(name, '')} "
            case ("network", "create", "--subnet", subnet, *_, name):
                self.networks[name] = subnet
            case ("ps", "-a", "--filter", prefix, "--filter", stage, "--format", _):
                out = "\n".join(n for n, c in self.containers.items() if {prefix, stage} <= c["labels"])
            case ("container", "inspect", *names):
                found = [self.inspect(n) for n in names if n in self.containers]
                out, rc = json.dumps(found), 0 if len(found) == len(names) else 1
            case ("rm", "-f", *names):
                for name in names:
                    del self.containers[name]
            case ("start", name):
                self.containers[name]["running"] = True
            case ("run", "-d", "--name", name, *rest):
                labels = {f"label={rest[i + 1]}" for i, a in enumerate(rest) if a == "--label"}
                mounts = [rest[i + 1] for i, a in enumerate(rest) if a == "-v"]
                network = rest[rest.index("--network") + 1]
                self.containers[name] = {"running": True, "labels": labels, "mounts": mounts, "network": network}
            case _:
                raise AssertionError(f"unexpected docker call {args}")
        return subprocess.CompletedProcess(["docker", *args], rc, out, "")

    def inspect(self, name: str) -> dict[str, Any]:
        c = self.containers[name]
        mounts = [{"Source": m.split(":")[0], "Destination": m.split(":")[1], "RW": not m.endswith(":ro")}
                  for m in c["mounts"]]  # fmt: skip
        return {"Name": f"/{name}", "State": {"Running": c["running"]}, "Mounts": mounts,
                "NetworkSettings": {"Networks": {c["network"]: {}}}}  # fmt: skip

    def made(self, action: str) -> list[str]:
        return sorted(call[3] if action == "run" else call[1] for call in self.calls if call[0] == action)


@pytest.fixture
def docker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeDocker:
    fake = FakeDocker(tmp_path / "artifacts")
    monkeypatch.setattr(lab, "_docker", fake)
    return fake


def _up(tmp_path: Path, *stages: str, **kw: Any) -> list[lab.LabStage]:
    return lab.lab_up({s: tmp_path / "inv" / f"{s}.yml" for s in stages}, prefix="t",
                      artifacts_dir=tmp_path / "artifacts", **kw)  # fmt: skip


def test_lab_up_makes_the_topology_and_a_rerun_changes_nothing(docker: FakeDocker, tmp_path: Path) -> None:
    made = _up(tmp_path, "dev", "test", "pprd", "prod")
    assert docker.networks == {f"t-{s}": f"172.31.{n}.0/24" for s, n in zip(lab.STAGES, (11, 12, 13, 14), strict=True)}
    assert len(docker.made("run")) == 1 + 1 + 2 + 4
    run = next(c for c in docker.calls if c[:4] == ("run", "-d", "--name", "t-prod-app1"))
    art = str(tmp_path / "artifacts")
    assert run[4:6] == ("--hostname", "t-prod-app1") and f"{art}:{art}:ro" in run
    assert "--label" in run and "unistra-itop.lab=t" in run and "unistra-itop.lab.stage=prod" in run
    assert run[-2:] == (lab.STACK_IMAGE, "/sbin/init") and all(f in run for f in lab.SYSTEMD_FLAGS)
    assert (tmp_path / "artifacts").is_dir()
    assert made[3].created == ("t-prod-app1", "t-prod-app2", "t-prod-worker1", "t-prod-data1")
    assert made[0].secrets == str(tmp_path / "inv" / "group_vars" / "all" / "vault.yml")
    assert all(s.secrets is None for s in made[1:])  # one file, next to all the inventories
    inventories = {s: (tmp_path / "inv" / f"{s}.yml").read_text() for s in lab.STAGES}

    docker.calls.clear()
    again = _up(tmp_path, "dev", "test", "pprd", "prod")
    assert docker.made("run") == docker.made("start") == docker.made("rm") == []
    assert all(not (s.created or s.started or s.removed or s.secrets) for s in again)
    assert inventories == {s: (tmp_path / "inv" / f"{s}.yml").read_text() for s in lab.STAGES}


def test_lab_up_starts_stopped_hosts_and_follows_the_prod_app_host_count(docker: FakeDocker, tmp_path: Path) -> None:
    _up(tmp_path, "prod", prod_app_hosts=3)
    docker.containers["t-prod-worker1"]["running"] = False
    docker.calls.clear()
    made = _up(tmp_path, "prod", prod_app_hosts=1)
    assert (made[0].removed, made[0].started, made[0].created) == (
        ("t-prod-app2", "t-prod-app3"),
        ("t-prod-worker1",),
        (),
    )
    assert sorted(docker.containers) == ["t-prod-app1", "t-prod-data1", "t-prod-worker1"]
    children = yaml.safe_load((tmp_path / "inv" / "prod.yml").read_text())["all"]["children"]
    assert list(children["itop_web"]["hosts"]) == ["t-prod-app1"]
    made = _up(tmp_path, "prod", prod_app_hosts=2)
    assert made[0].created == ("t-prod-app2",)


def test_lab_up_refuses_what_an_older_lab_made(docker: FakeDocker, tmp_path: Path) -> None:
    docker.networks["t-dev"] = ""
    with pytest.raises(
        ItopctlError, match=r"t-dev has the subnet \(none set\).*another --subnet-base.*lab down --prefix t"
    ):
        _up(tmp_path, "dev")
    docker.networks["t-dev"] = "172.31.11.0/24"
    docker.containers["t-dev-1"] = {"running": True, "labels": set(), "mounts": [], "network": "t-dev"}
    with pytest.raises(ItopctlError, match=r"t-dev-1 lacks .* read-only artifacts mount"):
        _up(tmp_path, "dev")


def test_lab_up_checks_its_input_before_touching_docker(docker: FakeDocker, tmp_path: Path) -> None:
    with pytest.raises(ItopctlError, match="no stage 'qa'"):
        _up(tmp_path, "dev", "qa")
    assert docker.calls == []


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--prod-app-hosts", "0"], "between 1 and 8"), (["--prod-app-hosts", "9"], "between 1 and 8"),
     (["--stage", "dev", "--stage", "qa"], "no stage 'qa'")],
)  # fmt: skip
def test_lab_up_bad_input_exits_2(args: list[str], message: str, tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = main(["lab", "up", "--inventory-dir", str(tmp_path), *args], out=out, err=err)
    assert code == ExitCode.BAD_INPUT
    assert message in err.getvalue()
