"""The example stage inventories and the lab: the same wiring (inventories/common/stack.yml, linked), the six groups
of the stack, a placeholder for every secret the wiring uses and nothing real, and the lab's secrets the same keys."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from itopctl.lab import LAB_SECRET_KEYS

REPO = Path(__file__).resolve().parents[2]
STAGES = ("dev", "test", "pprd", "prod")
GROUPS = {"itop_web", "itop_db", "hub", "workers", "rabbitmq", "postgresql"}
STACK = REPO / "inventories/common/stack.yml"


def _vault_names() -> set[str]:
    return set(re.findall(r"\bvault_[a-z0-9_]+", STACK.read_text()))


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_links_the_wiring_and_has_every_secret_as_a_placeholder(stage: str) -> None:
    group_vars = REPO / "inventories" / stage / "group_vars/all"
    assert (group_vars / "stack.yml").is_symlink()
    assert (group_vars / "stack.yml").resolve() == STACK.resolve()
    vault = yaml.safe_load((group_vars / "vault.yml").read_text())
    assert set(vault) == _vault_names()
    assert set(vault.values()) == {"CHANGE-ME-in-the-vault"}


def test_the_lab_writes_the_secrets_the_wiring_uses() -> None:
    assert set(LAB_SECRET_KEYS) == _vault_names()
    assert (REPO / "inventories/lab/group_vars/all/stack.yml").resolve() == STACK.resolve()


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_has_the_stack_groups(stage: str) -> None:
    listing = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(REPO / "inventories" / stage / "hosts.yml"),
         "--list", "--export"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    groups = {
        name for name, entry in json.loads(listing.stdout).items() if isinstance(entry, dict) and "hosts" in entry
    }
    assert groups >= GROUPS, groups
