"""Release manifests: an id and, per component, an artifact URI with its sha256; and the release's work queues
(``messaging.work_queues``) (docs/design.md, "The whole-stack manifest").

Every rule (release id, sha256, URI schemes, component and extension names, work queues) is the collection's own
(:mod:`itopctl.collection`), so a manifest itopctl accepts is one the release module and the roles accept, and the
reverse. A sha256 may be written in either case; it is stored in lower case, so the same release written twice in
different cases is the same release (same canonical form and digest). The work queues are stored as written (their
defaults are the collection's, filled in where they are applied): the digest covers them, so a release whose queues
differ is another release.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .collection import messaging, rules
from .errors import bad_input
from .yamlload import Checker, PathKey, load_yaml_file

SCHEMES = tuple(f"{scheme}://" for scheme in rules.URI_SCHEMES)


def check_release_id(value: str) -> str:
    """``value`` if the release module would accept it as a release id, else a bad-input error saying why."""
    try:
        return rules.validate_release_id(value)
    except rules.ReleaseError as exc:
        raise bad_input(str(exc)) from None


def _full(checker: Checker, value: object, where: PathKey, pattern: re.Pattern[str], what: str) -> str | None:
    """A non-empty string that fully matches ``pattern`` (as the module checks it), else an error at ``where``."""
    text = checker.string(value, where)
    if text is not None and not pattern.fullmatch(text):
        checker.error(where, f"invalid {what} {text!r} (expected {pattern.pattern})")
        return None
    return text


@dataclass(frozen=True)
class Manifest:
    id: str
    data: dict[str, Any]

    @property
    def canonical(self) -> str:
        """The manifest as stored: sorted keys, no spaces; two manifests are the same release iff this is equal."""
        return json.dumps(self.data, sort_keys=True, separators=(",", ":"))

    @property
    def digest(self) -> str:
        import hashlib  # noqa: PLC0415 - only `release add` needs it; read commands start faster

        return hashlib.sha256(self.canonical.encode()).hexdigest()

    @property
    def components(self) -> list[str]:
        return sorted(self.data["components"])

    @property
    def work_queues(self) -> list[dict[str, Any]]:
        """The release's work queues as written (``messaging.work_queues``; none when absent)."""
        return list((self.data.get("messaging") or {}).get("work_queues") or [])


def _artifact(checker: Checker, raw: object, where: PathKey, extra: set[str]) -> None:
    item = checker.mapping(raw, where, {"uri", "sha256", *extra})
    uri = checker.string(item.get("uri"), (*where, "uri"))
    if uri and not rules.URI_RE.match(uri):
        shown = rules.redact_uri(uri)
        checker.error((*where, "uri"), f"unsupported scheme in {shown!r} (expected {', '.join(SCHEMES)})")
    sha = item.get("sha256")
    if not isinstance(sha, str) or not rules.SHA256_RE.fullmatch(sha):
        checker.error((*where, "sha256"), "must be 64 hex digits (either case; stored in lower case)")


def parse_manifest(data: object, checker: Checker) -> Manifest | None:
    top = checker.mapping(data, (), {"id", "components", "messaging", "description", "created"})
    if not top:
        if not checker.errors:
            checker.error((), "empty manifest")
        return None
    release_id = _full(checker, top.get("id"), ("id",), rules.RELEASE_ID_RE, "release id")
    if release_id in rules.RESERVED_IDS:
        checker.error(("id",), f"{release_id!r} is reserved")
    _components(checker, top.get("components"))
    if "messaging" in top:
        _messaging(checker, top["messaging"])
    if checker.errors or release_id is None:
        return None
    return Manifest(id=release_id, data=_lower_sha256(json.loads(json.dumps(top, default=str))))


def _components(checker: Checker, components: object) -> None:
    """Each component's artifact, and its extensions' (the itop component's core + extensions)."""
    if not isinstance(components, dict) or not components:
        checker.error(("components",), "must be a non-empty mapping of component name -> artifact")
        return
    for name, comp in components.items():
        where: PathKey = ("components", str(name))
        if not rules.COMPONENT_NAME_RE.fullmatch(str(name)):
            checker.error(where, f"invalid component name {name!r} (expected {rules.COMPONENT_NAME_PATTERN})")
        _artifact(checker, comp, where, {"subdir", "extensions"})
        if isinstance(comp, dict) and "extensions" in comp:
            exts = comp["extensions"]
            if not isinstance(exts, list):
                checker.error((*where, "extensions"), "must be a list")
                continue
            for i, ext in enumerate(exts):
                ext_where = (*where, "extensions", i)
                _artifact(checker, ext, ext_where, {"name", "subdir"})
                if isinstance(ext, dict):
                    _full(checker, ext.get("name"), (*ext_where, "name"), rules.EXTENSION_NAME_RE, "extension name")


def _messaging(checker: Checker, raw: object) -> None:
    """``messaging: {work_queues: [...]}``, each work queue by the collection's rules (those of the roles)."""
    where: PathKey = ("messaging",)
    if not isinstance(raw, dict):
        checker.error(where, f"must be a mapping with work_queues, got {type(raw).__name__}")
        return
    checker.mapping(raw, where, {"work_queues"})
    queues = raw.get("work_queues")
    if "work_queues" not in raw or queues is None:
        checker.error((*where, "work_queues"), "must be a list of work queues (write [] for none)")
        return
    for problem in messaging.work_queue_problems(queues):
        place: PathKey = (*where, "work_queues")
        if problem.index is not None:
            place = (*place, problem.index) if problem.key is None else (*place, problem.index, problem.key)
        checker.error(place, problem.problem)


def _lower_sha256(data: dict[str, Any]) -> dict[str, Any]:
    """The manifest with every sha256 in lower case (how it is stored; the module compares in lower case too)."""
    for comp in data["components"].values():
        comp["sha256"] = comp["sha256"].lower()
        for ext in comp.get("extensions") or []:
            ext["sha256"] = ext["sha256"].lower()
    return data


def load_manifest(path: Path) -> Manifest:
    doc = load_yaml_file(path, "manifest")
    checker = Checker(doc)
    manifest = parse_manifest(doc.data, checker)
    if manifest is None:
        raise bad_input(f"invalid manifest {path} ({len(checker.errors)} error(s))", checker.errors)
    return manifest
