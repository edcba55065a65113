"""One place for each rule: release ids, sha256, URI schemes and names are defined in module_utils/rules.py; the
module applies them, the roles read them through the unistra.itop.rules lookup, and no file holds a copy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from ansible.errors import AnsibleLookupError
from ansible_collections.unistra.itop.plugins.lookup.rules import LookupModule
from ansible_collections.unistra.itop.plugins.module_utils import rules
from ansible_collections.unistra.itop.plugins.module_utils.artifacts import Artifact
from ansible_collections.unistra.itop.plugins.module_utils.rules import ReleaseError, validate_release_id

COLLECTION = Path(__file__).resolve().parents[2] / "collections/ansible_collections/unistra/itop"
IDS = ["r1", "2026.11.28-1", "A_b.c-d", "x" * 64, "x" * 65, "-r1", ".hidden", "r1\n", "r 1", "", "current", "shared"]
SHAS = ["a" * 64, "A" * 64, "a" * 63, "g" * 64, "a" * 64 + "\n"]
URIS = ["file:///srv/a.tar.gz", "https://h/a.zip", "http://h/a.zip", "s3://b/k", "ftp://h/a", "file:/x", "/srv/a"]


def _module_accepts_id(value: str) -> bool:
    try:
        validate_release_id(value)
    except ReleaseError:
        return False
    return True


def _module_accepts_artifact(uri: str, sha: str) -> bool:
    try:
        Artifact.from_dict({"uri": uri, "sha256": sha})
    except ReleaseError:
        return False
    return True


@pytest.mark.parametrize("value", IDS)
def test_the_module_and_the_pattern_agree_on_release_ids(value: str) -> None:
    by_pattern = bool(re.fullmatch(rules.RELEASE_ID_PATTERN, value)) and value not in rules.RESERVED_IDS
    assert _module_accepts_id(value) == by_pattern


def test_the_module_and_the_patterns_agree_on_artifacts() -> None:
    for sha in SHAS:
        assert _module_accepts_artifact("file:///a", sha) == bool(re.fullmatch(rules.SHA256_PATTERN, sha)), sha
    for uri in URIS:
        assert _module_accepts_artifact(uri, "a" * 64) == bool(re.match(rules.URI_PATTERN, uri)), uri


def test_the_lookup_returns_the_rules_and_refuses_unknown_names() -> None:
    lookup = LookupModule()
    assert lookup.run(["release_id_pattern", "reserved_ids"]) == [
        rules.RELEASE_ID_PATTERN,
        ["current", "releases", "shared"],
    ]
    assert lookup.run(list(rules.RULES)) == list(rules.RULES.values())
    with pytest.raises(AnsibleLookupError, match="unknown rule"):
        lookup.run(["release_id_regex"])


def test_no_role_holds_a_copy_of_a_rule() -> None:
    copies = [
        f"{path.relative_to(COLLECTION)}: {pattern}"
        for path in (COLLECTION / "roles").rglob("*.yml")
        for pattern in (rules.RELEASE_ID_PATTERN, rules.SHA256_PATTERN, "[0-9a-f]{64}", "(file|https", "{0,63}")
        if pattern in path.read_text()
    ]
    assert copies == []
    preflight_vars = (COLLECTION / "roles/itop/vars/main.yml").read_text()
    for name in ("release_id_pattern", "reserved_ids", "sha256_pattern", "uri_pattern", "extension_name_pattern"):
        assert f"lookup('unistra.itop.rules', '{name}')" in preflight_vars
