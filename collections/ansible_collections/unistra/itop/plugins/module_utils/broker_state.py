# Copyright: (c) 2026, Université de Strasbourg
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which of the rabbitmq role's definitions the broker does not hold yet, from one read of its management API.

The community.rabbitmq modules the role applies users, vhosts and policies with ask ``rabbitmqctl``, which starts an
Erlang VM each time: about a second per user on every run, even when nothing changes. The role reads the broker once
through the management API (``/api/users``, ``/api/permissions``, ``/api/topic-permissions``, ``/api/vhosts``,
``/api/policies``: a few milliseconds) and hands to those modules only the items these functions find pending.

The rule is the modules' own, so that an item left out here is one the module would have reported unchanged:

- a user is pending when it is absent (state present) or present (state absent), when its password does not match
  the broker's hash, when its tags differ as a set, when its permissions differ (with permissions given, on every
  vhost; without, on ``/``, where the module sets ``^$`` for all three), or when it has topic permissions (the role
  gives none, so the module removes them);
- a vhost is pending when it is absent;
- a policy is pending when it is absent or differs in pattern, apply-to, definition or priority.

Whatever cannot be read (the API not answering yet on a fresh broker, an administrator not created yet, an unknown
hashing algorithm) makes every item of its kind pending: the modules then decide, as before.

Pure functions, no Ansible import: the filter plugins in plugins/filter/broker_state.py only wire them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# RabbitMQ's hashing algorithms (rabbit_password_hashing_*) and their hash functions: the stored hash is
# base64(salt + H(salt + password)), with a salt of four bytes
HASHES = {
    "rabbit_password_hashing_sha256": hashlib.sha256,
    "rabbit_password_hashing_sha512": hashlib.sha512,
    "rabbit_password_hashing_md5": hashlib.md5,
}
SALT_BYTES = 4
NO_ACCESS = "^$"


def password_matches(stored: Any, algorithm: Any, password: str) -> bool | None:
    """True or False when the broker's hash says, None when it cannot (no hash, an unknown algorithm)."""
    hasher = HASHES.get(str(algorithm or "rabbit_password_hashing_sha256"))
    if hasher is None or not isinstance(stored, str) or not stored:
        return None
    try:
        raw = base64.b64decode(stored, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) <= SALT_BYTES:
        return None
    salt, digest = raw[:SALT_BYTES], raw[SALT_BYTES:]
    return hasher(salt + password.encode("utf-8")).digest() == digest


def _tags(value: Any) -> set[str]:
    """Tags as the module compares them: a list or a comma-separated string, flattened, blanks dropped."""
    items: Iterable[Any] = value if isinstance(value, (list, tuple)) else [value]
    found: set[str] = set()
    for item in items:
        if isinstance(item, (list, tuple)):
            found |= _tags(item)
        elif item is not None:
            found |= {tag.strip() for tag in str(item).split(",") if tag.strip()}
    return found


def _wanted_permissions(user: Mapping[str, Any]) -> tuple[dict[str, tuple[str, str, str]], bool]:
    """The permissions the module would set, by vhost, and whether it compares every vhost (permissions given)."""
    given = user.get("permissions") or []
    if not given:
        return {"/": (NO_ACCESS, NO_ACCESS, NO_ACCESS)}, False
    return {
        str(p.get("vhost", "/")): (
            str(p.get("configure_priv") or NO_ACCESS),
            str(p.get("write_priv") or NO_ACCESS),
            str(p.get("read_priv") or NO_ACCESS),
        )
        for p in given
    }, True


def _user_pending(
    user: Mapping[str, Any],
    found: Mapping[str, Any] | None,
    permissions: Sequence[Mapping[str, Any]],
    topic_permissions: Sequence[Mapping[str, Any]],
) -> bool:
    if user.get("state", "present") == "absent":
        return found is not None
    if found is None:
        return True
    password = user.get("password")
    if (
        password is not None
        and password_matches(found.get("password_hash"), found.get("hashing_algorithm"), str(password)) is not True
    ):
        return True
    if _tags(user.get("tags")) != _tags(found.get("tags")):
        return True
    name = user["name"]
    wanted, every_vhost = _wanted_permissions(user)
    held = {
        str(p.get("vhost")): (str(p.get("configure")), str(p.get("write")), str(p.get("read")))
        for p in permissions
        if p.get("user") == name
    }
    if not every_vhost:
        held = {vhost: perms for vhost, perms in held.items() if vhost in wanted}
    if held != wanted:
        return True
    return any(p.get("user") == name for p in topic_permissions)


def users_pending(
    wanted: Sequence[Mapping[str, Any]],
    users: Sequence[Mapping[str, Any]] | None,
    permissions: Sequence[Mapping[str, Any]] | None,
    topic_permissions: Sequence[Mapping[str, Any]] | None,
) -> list[Mapping[str, Any]]:
    """The users of ``wanted`` (the role's items: name, password, tags, permissions, state) the module must apply,
    in their order; every one of them when a read is missing."""
    if users is None or permissions is None or topic_permissions is None:
        return list(wanted)
    by_name = {str(u.get("name")): u for u in users}
    return [
        user
        for user in wanted
        if _user_pending(user, by_name.get(str(user.get("name"))), permissions, topic_permissions)
    ]


def vhosts_pending(
    wanted: Sequence[Mapping[str, Any]], vhosts: Sequence[Mapping[str, Any]] | None
) -> list[Mapping[str, Any]]:
    """The vhosts of ``wanted`` (state present or absent) whose state the broker does not have yet."""
    if vhosts is None:
        return list(wanted)
    names = {str(v.get("name")) for v in vhosts}
    return [v for v in wanted if (str(v.get("name")) in names) != (v.get("state", "present") == "present")]


def _policy_key(vhost: Any, name: Any) -> tuple[str, str]:
    return str(vhost), str(name)


def policies_pending(
    wanted: Sequence[Mapping[str, Any]], policies: Sequence[Mapping[str, Any]] | None
) -> list[Mapping[str, Any]]:
    """The policies of ``wanted`` (name, vhost, pattern, apply_to, tags, priority, state) the module must apply."""
    if policies is None:
        return list(wanted)
    held = {_policy_key(p.get("vhost"), p.get("name")): p for p in policies}
    pending = []
    for policy in wanted:
        found = held.get(_policy_key(policy.get("vhost", "/"), policy.get("name")))
        if policy.get("state", "present") == "absent":
            if found is not None:
                pending.append(policy)
            continue
        same = found is not None and (
            str(found.get("pattern")) == str(policy.get("pattern"))
            and str(found.get("apply-to", "all")) == str(policy.get("apply_to") or "all")
            and found.get("definition") == dict(policy.get("tags") or {})
            and str(found.get("priority", 0)) == str(policy.get("priority", 0))
        )
        if not same:
            pending.append(policy)
    return pending


def api_reads(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The JSON of each read of a looped ``ansible.builtin.uri`` (its item the API path), None where it failed."""
    reads: dict[str, Any] = {}
    for result in results or []:
        ok = result.get("status") == 200 and isinstance(result.get("json"), list)
        reads[str(result.get("item"))] = result.get("json") if ok else None
    return reads
