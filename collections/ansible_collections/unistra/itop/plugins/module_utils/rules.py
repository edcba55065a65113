# Copyright: (c) 2026, Université de Strasbourg
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rules every part of the collection applies to what it is given: release ids, checksums, artifact URI schemes,
relative paths; and the one error type, :class:`ReleaseError`, whose message tells the operator what to do.

Defined once here; the module, the roles (through the module) and itopctl import them.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlparse

# The rules, as patterns every consumer can use: Python (full match), Jinja's `match` test in the roles' preflight
# (through the unistra.itop.rules lookup) and itopctl's manifest checks. Nowhere else are they written.
RELEASE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
RESERVED_IDS = frozenset({"current", "shared", "releases"})
SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"  # either case; stored lower case
URI_SCHEMES = ("file", "https", "http", "s3")  # http is as safe as the others: the sha256 is checked before use
URI_PATTERN = r"^(" + "|".join(URI_SCHEMES) + r")://"
COMPONENT_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"  # itop, hub, worker... (a manifest's components)
EXTENSION_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # unpacked to extensions/<name>
DEPLOY_PHASES = ("prepare", "switch", "full", "verify", "rollback")

RELEASE_ID_RE = re.compile(RELEASE_ID_PATTERN)
SHA256_RE = re.compile(SHA256_PATTERN)
URI_RE = re.compile(URI_PATTERN)
COMPONENT_NAME_RE = re.compile(COMPONENT_NAME_PATTERN)
EXTENSION_NAME_RE = re.compile(EXTENSION_NAME_PATTERN)

RULES: dict[str, object] = {
    "release_id_pattern": RELEASE_ID_PATTERN,
    "reserved_ids": sorted(RESERVED_IDS),
    "sha256_pattern": SHA256_PATTERN,
    "uri_schemes": list(URI_SCHEMES),
    "uri_pattern": URI_PATTERN,
    "component_name_pattern": COMPONENT_NAME_PATTERN,
    "extension_name_pattern": EXTENSION_NAME_PATTERN,
    "deploy_phases": list(DEPLOY_PHASES),
}


class ReleaseError(Exception):
    """The one error type: its message tells the operator what went wrong and what to do."""


class MissingLibraryError(ReleaseError):
    """A Python library needed for this request (boto3 for s3://) is not installed on the target."""

    def __init__(self, library: str, purpose: str) -> None:
        super().__init__(f"the Python library {library} is required for {purpose}; install it on the target host")
        self.library = library


# --------------------------------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------------------------------


def validate_release_id(value: Any) -> str:
    """Return ``value`` if it is a safe release id, else raise :class:`ReleaseError`."""
    if not isinstance(value, str) or not value:
        raise ReleaseError("a release id is required (option release)")
    if not RELEASE_ID_RE.fullmatch(value):
        raise ReleaseError(
            f"invalid release id {value!r}: use 1 to 64 characters among letters, digits, '.', '_' and '-', "
            "starting with a letter or a digit (e.g. 2026.11.28-1)"
        )
    if value in RESERVED_IDS:
        raise ReleaseError(f"invalid release id {value!r}: 'current', 'shared' and 'releases' are reserved names")
    return value


def safe_relpath(value: Any, what: str, *, allow_empty: bool = True) -> str:
    """Normalise a relative path given by the caller; refuse absolute paths and ``..``."""
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ReleaseError(f"{what} must be a string, got {type(value).__name__}")
    if "\0" in value:
        raise ReleaseError(f"{what} {value!r} contains a NUL character")
    if value.startswith("/"):
        raise ReleaseError(f"{what} {value!r} must be a path relative to the release, not an absolute path")
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ReleaseError(f"{what} {value!r} must not contain '..'")
    norm = "/".join(parts)
    if not norm and not allow_empty:
        raise ReleaseError(f"{what} must not be empty")
    return norm


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def redact_uri(uri: str) -> str:
    """Drop any user:password@ from a URI before it goes into a message."""
    parsed = urlparse(uri)
    if parsed.username is None and parsed.password is None:
        return uri
    host = parsed.hostname or ""
    if parsed.port:
        host = f"{host}:{parsed.port}"
    return parsed._replace(netloc=f"***@{host}").geturl()
