"""itopctl and the release module apply the same rules: one table of ids, checksums and URIs, both judges.

The rules live once, in the collection's module_utils/rules.py (itopctl imports them through itopctl.collection);
this proves the two validations agree case by case, so a manifest itopctl stores never fails on a host for a rule
itopctl did not check, and itopctl never refuses what the module would take.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ansible_collections.unistra.itop.plugins.module_utils import rules
from ansible_collections.unistra.itop.plugins.module_utils.artifacts import Artifact
from itopctl import collection, pipeline
from itopctl.errors import ItopctlError
from itopctl.manifest import check_release_id, load_manifest, parse_manifest
from itopctl.yamlload import Checker, load_yaml_file

SHA = "ab" * 32
IDS = ["2026.11.28-1", "r1", "A", "a" * 64, "a" * 65, "current", "shared", "releases", "-r1", ".r1", "../etc",
       "r 1", "r/1", "r1\n", "", "é1"]  # fmt: skip
SHAS = [SHA, SHA.upper(), "AbCd" * 16, "ab" * 31, "ab" * 33, "g" * 64, SHA + "\n", ""]
URIS = ["file:///srv/a.tgz", "https://x/a.tgz", "http://x/a.tgz", "s3://bucket/a.tgz", "ftp://x/a.tgz",
        "gopher://x", "file:/x", "HTTP://x/a.tgz", "/srv/a.tgz", "s3:/bucket"]  # fmt: skip


def _module_accepts_id(value: str) -> bool:
    try:
        rules.validate_release_id(value)
    except rules.ReleaseError:
        return False
    return True


def _module_accepts_artifact(uri: str, sha: str) -> bool:
    try:
        Artifact.from_dict({"uri": uri, "sha256": sha})
    except rules.ReleaseError:
        return False
    return True


def _itopctl_accepts(tmp_path: Path, release_id: str, uri: str, sha: str) -> bool:
    path = tmp_path / "m.yml"
    doc = {"id": release_id, "components": {"sample": {"uri": uri, "sha256": sha}}}
    path.write_text(json.dumps(doc))  # JSON is YAML, and keeps "\n" inside a value
    try:
        load_manifest(path)
    except ItopctlError:
        return False
    return True


def _itopctl_accepts_id(value: str) -> bool:
    try:
        check_release_id(value)
    except ItopctlError:
        return False
    return True


@pytest.mark.parametrize("release_id", IDS)
def test_release_ids_agree(tmp_path: Path, release_id: str) -> None:
    module = _module_accepts_id(release_id)
    assert _itopctl_accepts(tmp_path, release_id, "file:///srv/a.tgz", SHA) == module
    assert _itopctl_accepts_id(release_id) == module


@pytest.mark.parametrize("sha", SHAS)
def test_sha256_agree(tmp_path: Path, sha: str) -> None:
    assert _itopctl_accepts(tmp_path, "r1", "file:///srv/a.tgz", sha) == _module_accepts_artifact("file:///a", sha)


@pytest.mark.parametrize("uri", URIS)
def test_uris_agree(tmp_path: Path, uri: str) -> None:
    assert _itopctl_accepts(tmp_path, "r1", uri, SHA) == _module_accepts_artifact(uri, SHA)


def test_the_table_covers_both_answers(tmp_path: Path) -> None:
    """A table where every case passes (or every case fails) would prove nothing."""
    assert {_module_accepts_id(i) for i in IDS} == {True, False}
    assert {_module_accepts_artifact("file:///a", s) for s in SHAS} == {True, False}
    assert {_module_accepts_artifact(u, SHA) for u in URIS} == {True, False}
    assert _itopctl_accepts(tmp_path, "r1", "http://x/a.tgz", SHA.upper())  # both once refused by itopctl


def test_uppercase_sha256_is_stored_in_lower_case(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower.yml", tmp_path / "upper.yml"
    ext = {"name": "unistra-ticket", "uri": "https://x/t.tgz", "sha256": "CD" * 32}
    for path, sha in ((lower, SHA), (upper, SHA.upper())):
        doc = {"id": "r1", "components": {"itop": {"uri": "s3://b/i.tgz", "sha256": sha, "extensions": [ext]}}}
        path.write_text(json.dumps(doc))
    a, b = load_manifest(lower), load_manifest(upper)
    assert b.data["components"]["itop"]["sha256"] == SHA
    assert b.data["components"]["itop"]["extensions"][0]["sha256"] == "cd" * 32
    assert a.digest == b.digest  # the same release, however its checksums are written


@pytest.mark.parametrize(
    ("component", "extension"),
    [("itop", "unistra-ticket"), ("hub", "ext.v2"), ("Itop", "x"), ("itop", "-x"), ("a" * 33, "x"), ("x", "a" * 65)],
)
def test_names_follow_the_collection_patterns(tmp_path: Path, component: str, extension: str) -> None:
    path = tmp_path / "m.yml"
    comp = {"uri": "file:///a", "sha256": SHA, "extensions": [{"name": extension, "uri": "file:///b", "sha256": SHA}]}
    path.write_text(json.dumps({"id": "r1", "components": {component: comp}}))
    doc = load_yaml_file(path, "manifest")
    expected = bool(rules.COMPONENT_NAME_RE.fullmatch(component) and rules.EXTENSION_NAME_RE.fullmatch(extension))
    assert (parse_manifest(doc.data, Checker(doc)) is not None) == expected


def test_phases_come_from_the_collection() -> None:
    assert set(pipeline.PHASES) <= set(rules.DEPLOY_PHASES)
    assert tuple(p for p in rules.DEPLOY_PHASES if p != "full") == pipeline.PHASES
    assert collection.rules is rules  # one module, not a copy


def test_the_collection_is_found_in_the_repository() -> None:
    found = collection.collections_dir({})
    assert found is not None and (found / collection.RULES_FILE).is_file()
    assert collection.collections_dir({"ANSIBLE_COLLECTIONS_PATH": str(found / "ansible_collections")}) == found


def test_no_copy_of_the_patterns_in_the_orchestrator() -> None:
    source = Path(collection.__file__).parent
    # (a stage name happens to follow the component name pattern: it is another rule, itopctl's own)
    for pattern in (rules.RELEASE_ID_PATTERN, rules.SHA256_PATTERN, rules.URI_PATTERN, "[0-9a-f]{64}", 's3://"'):
        for path in source.glob("*.py"):
            assert pattern not in path.read_text(encoding="utf-8"), (pattern, path)
