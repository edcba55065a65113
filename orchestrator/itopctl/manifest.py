"""Release manifests: an id and, per component, an artifact URI with its sha256 (docs/design.md)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import bad_input
from .yamlload import Checker, PathKey, load_yaml_file

RELEASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RESERVED_IDS = frozenset({"current", "shared", "releases"})
SHA256 = re.compile(r"^[0-9a-f]{64}$")
SCHEMES = ("file://", "https://", "s3://")


def check_release_id(value: str) -> str:
    if not RELEASE_ID.match(value) or value in RESERVED_IDS:
        raise bad_input(f"invalid release id {value!r}: expected {RELEASE_ID.pattern}, not current/shared/releases")
    return value


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


def _artifact(checker: Checker, raw: object, where: PathKey, extra: set[str]) -> None:
    item = checker.mapping(raw, where, {"uri", "sha256", *extra})
    uri = checker.string(item.get("uri"), (*where, "uri"))
    if uri and not uri.startswith(SCHEMES):
        checker.error((*where, "uri"), f"unsupported scheme in {uri!r} (expected {', '.join(SCHEMES)})")
    sha = item.get("sha256")
    if not isinstance(sha, str) or not SHA256.match(sha):
        checker.error((*where, "sha256"), "must be 64 lowercase hex digits")


def parse_manifest(data: object, checker: Checker) -> Manifest | None:
    top = checker.mapping(data, (), {"id", "components", "description", "created"})
    if not top:
        if not checker.errors:
            checker.error((), "empty manifest")
        return None
    release_id = checker.string(top.get("id"), ("id",), pattern=RELEASE_ID)
    if release_id in RESERVED_IDS:
        checker.error(("id",), f"{release_id!r} is reserved")
    components = top.get("components")
    if not isinstance(components, dict) or not components:
        checker.error(("components",), "must be a non-empty mapping of component name -> artifact")
    else:
        for name, comp in components.items():
            where: PathKey = ("components", str(name))
            if not re.match(r"^[a-z][a-z0-9_-]*$", str(name)):
                checker.error(where, f"invalid component name {name!r}")
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
                        checker.string(ext.get("name"), (*ext_where, "name"), pattern=re.compile(r"^[A-Za-z0-9_-]+$"))
    if checker.errors or release_id is None:
        return None
    return Manifest(id=release_id, data=json.loads(json.dumps(top, default=str)))


def load_manifest(path: Path) -> Manifest:
    doc = load_yaml_file(path, "manifest")
    checker = Checker(doc)
    manifest = parse_manifest(doc.data, checker)
    if manifest is None:
        raise bad_input(f"invalid manifest {path} ({len(checker.errors)} error(s))", checker.errors)
    return manifest
