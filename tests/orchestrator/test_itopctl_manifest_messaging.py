"""A whole-stack manifest's ``messaging.work_queues``: judged by the collection's own rules (those the roles apply
to unistra_itop_work_queues), every error with its file:line, covered by the digest, shown by ``release show``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.unistra.itop.plugins.module_utils.messaging import WorkQueueError, parse_work_queues
from itopctl.errors import ExitCode, ItopctlError
from itopctl.manifest import load_manifest
from itopctl_support import Project

SHA = "ab" * 32
HEAD = f"""\
id: demo-1
components:
  itop:
    uri: file:///var/tmp/a/itop.zip
    sha256: {SHA}
    subdir: web
    extensions:
      - {{name: unistra-fixture-ticket, uri: "file:///var/tmp/a/t.tar.gz", sha256: {SHA}}}
  hub: {{uri: "file:///var/tmp/a/hub.tar.gz", sha256: {SHA}}}
"""
QUEUES = """\
messaging:
  work_queues:
    - {name: tickets, vhost: /unistra, retry_delay_ms: 2000, max_retries: 2}
    - name: slow
      vhost: /unistra
"""


def write(tmp_path: Path, text: str, name: str = "m.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def errors_of(tmp_path: Path, text: str, name: str = "m.yml") -> str:
    """The bad-input message of the manifest ``text`` written as ``name``."""
    with pytest.raises(ItopctlError) as info:
        load_manifest(write(tmp_path, text, name))
    return f"exit {info.value.code}: {info.value}"


def test_work_queues_are_part_of_the_release(tmp_path: Path) -> None:
    manifest = load_manifest(write(tmp_path, HEAD + QUEUES))
    assert manifest.components == ["hub", "itop"]
    assert manifest.work_queues == [
        {"name": "tickets", "vhost": "/unistra", "retry_delay_ms": 2000, "max_retries": 2},
        {"name": "slow", "vhost": "/unistra"},
    ]
    assert json.loads(manifest.canonical)["messaging"]["work_queues"][1] == {"name": "slow", "vhost": "/unistra"}
    # the digest covers them: another queue setting is another release
    other = load_manifest(write(tmp_path, HEAD + QUEUES.replace("2000", "3000"), "other.yml"))
    assert other.digest != manifest.digest
    # stored as written: an explicit default is not the same text, so not the same release either
    explicit = load_manifest(
        write(tmp_path, HEAD + QUEUES.replace("vhost: /unistra\n", "vhost: /unistra\n      state: present\n"), "e.yml")
    )
    assert explicit.digest != manifest.digest
    # no messaging at all: a release without work queues (the sample component's manifests)
    assert load_manifest(write(tmp_path, HEAD, "none.yml")).work_queues == []


def test_removal_is_state_absent(tmp_path: Path) -> None:
    text = HEAD + QUEUES.replace("      vhost: /unistra\n", "      vhost: /unistra\n      state: absent\n")
    assert load_manifest(write(tmp_path, text)).work_queues[1]["state"] == "absent"


def test_every_error_with_its_line(tmp_path: Path) -> None:
    text = HEAD + (
        "messaging:\n"  # line 10
        "  exchanges: []\n"
        "  work_queues:\n"
        "    - {name: tickets, vhost: /unistra, colour: blue}\n"
        "    - name: slow\n"
        "      vhost: /unistra\n"
        "      queue_type: stream\n"  # line 16
        "      max_retries: -1\n"
        "    - {name: 'bad name', vhost: /unistra}\n"
        "    - {name: tickets, vhost: /unistra}\n"
    )
    message = errors_of(tmp_path, text, "bad.yml")
    assert message.startswith(f"exit {ExitCode.BAD_INPUT}: ")
    assert "bad.yml:11: messaging.exchanges: unknown key (expected one of: work_queues)" in message
    assert "bad.yml:13: messaging.work_queues[0].colour: unknown: the keys are " in message
    assert "bad.yml:16: messaging.work_queues[1].queue_type: must be one of classic, quorum, got 'stream'" in message
    assert "bad.yml:18: messaging.work_queues[2].name: is required: 1 to 200 letters" in message
    # names shared within a vhost are judged once every item is valid
    assert "declares 'tickets'" not in message


def test_a_name_declared_twice(tmp_path: Path) -> None:
    text = HEAD + QUEUES + "    - {name: tickets, vhost: /unistra}\n"
    message = errors_of(tmp_path, text, "twice.yml")
    assert (
        "twice.yml:15: messaging.work_queues[2].name: declares 'tickets' in /unistra, as item 0 (tickets) does"
        in message
    )


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ("messaging: [tickets]\n", "m.yml:10: messaging: must be a mapping with work_queues, got list"),
        ("messaging: {}\n", "messaging.work_queues: must be a list of work queues (write [] for none)"),
        ("messaging:\n  work_queues: {tickets: {}}\n", "m.yml:11: messaging.work_queues: must be a list of dicts"),
        ("messaging:\n  work_queues: [3]\n", "m.yml:11: messaging.work_queues[0]: must be a dict, got int"),
    ],
)
def test_structural_errors(tmp_path: Path, block: str, expected: str) -> None:
    assert expected in errors_of(tmp_path, HEAD + block)


WORK_QUEUE_CASES: list[Any] = [
    [],
    [{"name": "tickets", "vhost": "/unistra"}],
    [{"name": "tickets", "vhost": "/unistra", "queue_type": "quorum", "max_length": 10, "state": "absent"}],
    [{"name": "tickets"}],
    [{"name": "tickets", "vhost": "/unistra", "retry_delay_ms": "2s"}],
    [{"name": "tickets", "vhost": "/unistra", "max_retries": False}],
    [{"name": "tickets", "vhost": "/unistra", "state": "gone"}],
    [{"name": "a", "vhost": "/u"}, {"name": "a", "vhost": "/u"}],
    [{"name": "a", "vhost": "/u"}, {"name": "a", "vhost": "/v"}],
    [{"name": "a.dead", "vhost": "/u"}, {"name": "a", "vhost": "/u"}],
]


@pytest.mark.parametrize("queues", WORK_QUEUE_CASES, ids=range(len(WORK_QUEUE_CASES)))
def test_itopctl_and_the_roles_agree(tmp_path: Path, queues: Any) -> None:
    try:
        parse_work_queues(queues)
        roles_accept = True
    except WorkQueueError:
        roles_accept = False
    doc = {
        "id": "r1",
        "components": {"hub": {"uri": "file:///a.tgz", "sha256": SHA}},
        "messaging": {"work_queues": queues},
    }
    try:
        load_manifest(write(tmp_path, json.dumps(doc)))
        itopctl_accepts = True
    except ItopctlError:
        itopctl_accepts = False
    assert itopctl_accepts is roles_accept


def test_release_show_lists_extensions_and_work_queues(sqlite_project: Project) -> None:
    project = sqlite_project
    path = write(project.root, HEAD + QUEUES, "demo-1.yml")
    assert project.run("release", "add", str(path)).code == 0
    shown = project.run("release", "show", "demo-1")
    assert shown.code == 0
    lines = shown.out.splitlines()
    assert "    extension unistra-fixture-ticket: file:///var/tmp/a/t.tar.gz sha256=abababababab..." in lines
    assert "work queues:" in lines
    assert "  tickets (vhost /unistra): max_retries=2, retry_delay_ms=2000" in lines
    assert "  slow (vhost /unistra)" in lines
    as_json = project.run("release", "show", "demo-1", "--json").json()
    assert as_json["release"]["manifest"]["messaging"]["work_queues"][0]["name"] == "tickets"
    # immutable: the same id with one more work queue is another release, refused
    more = write(project.root, HEAD + QUEUES + "    - {name: bulk, vhost: /unistra}\n", "demo-1-more.yml")
    refused = project.run("release", "add", str(more))
    assert refused.code == ExitCode.REFUSED and "immutable" in refused.err
