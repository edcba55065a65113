"""A stage's switch_order: the pipeline key, the inventory's groups, and the switch runs it gives."""

from __future__ import annotations

from pathlib import Path

import pytest
from itopctl.engine import switch_steps
from itopctl.errors import ItopctlError
from itopctl.pipeline import load_pipeline
from itopctl.runner import PlaybookRunner, inventory_group_hosts

PROD = {
    "rabbitmq": ["data1"],
    "workers": ["worker1"],
    "hub": ["app1", "app2"],
    "itop_web": ["app1", "app2"],
    "itop_db": ["data1"],
}
ORDER = ("rabbitmq", "workers", "hub", "itop_web")


def test_without_an_order_the_hosts_go_in_batches() -> None:
    assert switch_steps(["a", "b", "c"], (), 2, {}) == [("", ["a", "b"]), ("", ["c"])]


def test_each_group_in_turn_in_batches_a_host_once_per_group() -> None:
    hosts = ["app1", "app2", "data1", "worker1"]
    assert switch_steps(hosts, ORDER, 1, PROD) == [
        ("rabbitmq", ["data1"]),
        ("workers", ["worker1"]),
        ("hub", ["app1"]),
        ("hub", ["app2"]),
        ("itop_web", ["app1"]),
        ("itop_web", ["app2"]),
    ]
    assert switch_steps(hosts, ORDER, 2, PROD)[2:] == [("hub", ["app1", "app2"]), ("itop_web", ["app1", "app2"])]


def test_only_prepared_hosts_and_no_empty_step() -> None:
    # app2 was not prepared (not in the run): it is never switched; a group with no host gives no run
    assert switch_steps(["app1", "data1"], (*ORDER, "nowhere"), 1, PROD) == [
        ("rabbitmq", ["data1"]),
        ("hub", ["app1"]),
        ("itop_web", ["app1"]),
    ]


def test_all_in_one_host_is_switched_once_per_component() -> None:
    one = {group: ["dev1"] for group in ORDER}
    assert [group for group, _ in switch_steps(["dev1"], ORDER, 1, one)] == list(ORDER)


def test_inventory_listing_flattens_children() -> None:
    listing = {
        "_meta": {"hostvars": {}},
        "all": {"children": ["ungrouped", "app"]},
        "app": {"children": ["hub", "itop_web"]},
        "hub": {"hosts": ["app1"]},
        "itop_web": {"hosts": ["app1", "app2"]},
        "ungrouped": {},
    }
    groups = inventory_group_hosts(listing)
    assert groups["app"] == ["app1", "app2"]
    assert groups["all"] == ["app1", "app2"]
    assert groups["hub"] == ["app1"]
    assert "_meta" not in groups


def test_the_runner_reads_the_groups_of_a_real_inventory(tmp_path: Path) -> None:
    inventory = tmp_path / "prod.yml"
    inventory.write_text(
        "all:\n  children:\n    hub: {hosts: {app1: {}, app2: {}}}\n    workers: {hosts: {worker1: {}}}\n"
        "    app: {children: {hub: {}}}\n"
    )
    runner = PlaybookRunner(tmp_path / "runs", secrets_base=tmp_path / "secrets")
    groups = runner.inventory_groups(inventory)
    assert groups["hub"] == ["app1", "app2"]
    assert groups["workers"] == ["worker1"]
    assert groups["app"] == ["app1", "app2"]


def test_an_unreadable_inventory_is_bad_input(tmp_path: Path) -> None:
    runner = PlaybookRunner(tmp_path / "runs", secrets_base=tmp_path / "secrets")
    with pytest.raises(ItopctlError) as info:
        runner.inventory_groups(tmp_path / "missing.yml")
    assert info.value.code == 2


def _pipeline(tmp_path: Path, order: str) -> Path:
    (tmp_path / "site.yml").write_text("- hosts: all\n  tasks: []\n")
    path = tmp_path / "pipeline.yml"
    path.write_text(
        "version: 1\ndefaults:\n"
        "  playbooks: {prepare: site.yml, switch: site.yml, verify: site.yml, rollback: site.yml}\n"
        f"  switch_order: {order}\nstages: [dev, {{name: prod, switch_order: [hub]}}]\n"
    )
    return path


def test_the_pipeline_reads_switch_order_per_stage_or_from_defaults(tmp_path: Path) -> None:
    pipeline = load_pipeline(_pipeline(tmp_path, "[rabbitmq, workers, hub, itop_web]"))
    assert pipeline.stage("dev").switch_order == ORDER
    assert pipeline.stage("prod").switch_order == ("hub",)


@pytest.mark.parametrize(
    ("order", "error"),
    [
        ("[hub, hub]", "defaults.switch_order[1]: group 'hub' appears twice"),
        ("hub", "defaults.switch_order: must be a non-empty list"),
        ("[hub, 'not a group']", "defaults.switch_order[1]: 'not a group' does not match"),
    ],
)
def test_a_bad_switch_order_is_refused_with_its_place(tmp_path: Path, order: str, error: str) -> None:
    with pytest.raises(ItopctlError) as info:
        load_pipeline(_pipeline(tmp_path, order))
    assert info.value.code == 2
    assert any(error in detail for detail in info.value.details), info.value.details
