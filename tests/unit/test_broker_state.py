"""Which of the rabbitmq role's users, vhosts and policies the broker lacks (module_utils/broker_state.py and the
filter unistra.itop.rabbitmq_pending): the community modules' own rules, from one read of the management API."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.unistra.itop.plugins.filter.broker_state import FilterModule
from ansible_collections.unistra.itop.plugins.module_utils.broker_state import (
    password_matches,
    policies_pending,
    users_pending,
    vhosts_pending,
)
from ansible_collections.unistra.itop.plugins.module_utils.messaging import lifecycle_definitions

pending = FilterModule().filters()["rabbitmq_pending"]


def rabbit_hash(password: str, salt: bytes = b"\x01\x02\x03\x04", hasher: Any = hashlib.sha256) -> str:
    """The broker's stored hash: base64(salt + H(salt + password))."""
    return base64.b64encode(salt + hasher(salt + password.encode()).digest()).decode()


WORKER = {
    "name": "worker",
    "password": "s3cret",
    "tags": [],
    "permissions": [{"vhost": "/unistra", "configure_priv": "^$", "write_priv": "^tickets$", "read_priv": ".*"}],
    "state": "present",
}


def broker_user(name: str = "worker", password: str = "s3cret", tags: Any = None) -> dict[str, Any]:  # noqa: S107
    return {
        "name": name,
        "password_hash": rabbit_hash(password),
        "hashing_algorithm": "rabbit_password_hashing_sha256",
        "tags": tags if tags is not None else [],
    }


def worker_permission(**changed: str) -> dict[str, str]:
    return {"user": "worker", "vhost": "/unistra", "configure": "^$", "write": "^tickets$", "read": ".*", **changed}


def test_the_password_is_checked_against_the_salted_hash() -> None:
    assert password_matches(rabbit_hash("s3cret"), "rabbit_password_hashing_sha256", "s3cret") is True
    assert password_matches(rabbit_hash("s3cret"), "rabbit_password_hashing_sha256", "other") is False
    sha512 = rabbit_hash("s3cret", hasher=hashlib.sha512)
    assert password_matches(sha512, "rabbit_password_hashing_sha512", "s3cret") is True
    # what cannot be checked is not taken as a match
    assert password_matches(rabbit_hash("s3cret"), "rabbit_password_hashing_unknown", "s3cret") is None
    assert password_matches("", None, "s3cret") is None
    assert password_matches("not base64!", None, "s3cret") is None


def test_a_user_held_as_given_is_not_pending() -> None:
    assert users_pending([WORKER], [broker_user()], [worker_permission()], []) == []


@pytest.mark.parametrize(
    ("user", "permissions", "topic"),
    [
        pytest.param(broker_user(password="old"), [worker_permission()], [], id="password changed"),
        pytest.param(broker_user(tags=["monitoring"]), [worker_permission()], [], id="tags differ"),
        pytest.param(broker_user(), [worker_permission(read="^tickets$")], [], id="a permission differs"),
        pytest.param(
            broker_user(), [worker_permission(), worker_permission(vhost="/")], [], id="an extra vhost permission"
        ),
        pytest.param(broker_user(), [], [], id="no permission yet"),
        pytest.param(broker_user(), [worker_permission()], [{"user": "worker", "vhost": "/"}], id="topic permission"),
        pytest.param(None, [], [], id="absent"),
    ],
)
def test_a_user_the_broker_holds_otherwise_is_pending(user: Any, permissions: Any, topic: Any) -> None:
    users = [user] if user else [broker_user("admin")]
    assert users_pending([WORKER], users, permissions, topic) == [WORKER]


def test_tags_compare_as_sets_whatever_their_spelling() -> None:
    admin = {"name": "admin", "password": "a", "tags": ["administrator", "monitoring"], "state": "present"}
    held = [{**broker_user("admin", "a"), "tags": "monitoring,administrator"}]
    perms = [{"user": "admin", "vhost": "/", "configure": "^$", "write": "^$", "read": "^$"}]
    assert users_pending([admin], held, perms, []) == []


def test_without_permissions_only_slash_is_compared_as_the_module_does() -> None:
    plain = {"name": "worker", "password": "s3cret", "state": "present"}
    slash = worker_permission(vhost="/", configure="^$", write="^$", read="^$")
    assert users_pending([plain], [broker_user()], [slash, worker_permission()], []) == []
    assert users_pending([plain], [broker_user()], [worker_permission()], []) == [plain]


def test_a_user_without_a_password_given_is_not_checked_for_one() -> None:
    nopass = {k: v for k, v in WORKER.items() if k != "password"}
    assert users_pending([nopass], [broker_user(password="whatever")], [worker_permission()], []) == []


def test_an_absent_user_is_pending_only_while_the_broker_has_it() -> None:
    guest = {"name": "guest", "state": "absent"}
    assert users_pending([guest], [broker_user("guest")], [], []) == [guest]
    assert users_pending([guest], [broker_user()], [], []) == []


def test_a_read_missing_leaves_every_item_to_the_module() -> None:
    assert users_pending([WORKER], None, [], []) == [WORKER]
    assert users_pending([WORKER], [broker_user()], [worker_permission()], None) == [WORKER]
    assert vhosts_pending([{"name": "/unistra", "state": "present"}], None) == [
        {"name": "/unistra", "state": "present"}
    ]
    assert policies_pending([{"name": "p", "vhost": "/"}], None) == [{"name": "p", "vhost": "/"}]


def test_vhosts_pending_by_state() -> None:
    wanted = [
        {"name": "/unistra", "state": "present"},
        {"name": "/new", "state": "present"},
        {"name": "/old", "state": "absent"},
        {"name": "/gone", "state": "absent"},
    ]
    held = [{"name": "/"}, {"name": "/unistra"}, {"name": "/old"}]
    assert vhosts_pending(wanted, held) == [wanted[1], wanted[2]]


# the lifecycle's own policy, as the role applies it, and as the broker's API gives it back
LIMITS = next(
    p
    for p in lifecycle_definitions([{"name": "tickets", "vhost": "/unistra", "max_length": 100000}])["policies"]
    if p["name"] == "tickets.limits"
)
HELD_LIMITS = {
    "name": LIMITS["name"],
    "vhost": LIMITS["vhost"],
    "pattern": LIMITS["pattern"],
    "apply-to": LIMITS["apply_to"],
    "definition": dict(LIMITS["tags"]),
    "priority": LIMITS["priority"],
}


@pytest.mark.parametrize(
    ("held", "is_pending"),
    [
        pytest.param([HELD_LIMITS], False, id="held as given"),
        pytest.param([], True, id="missing"),
        pytest.param([{**HELD_LIMITS, "pattern": "^tickets.*$"}], True, id="pattern"),
        pytest.param([{**HELD_LIMITS, "apply-to": "all"}], True, id="apply-to"),
        pytest.param([{**HELD_LIMITS, "definition": {"max-length": 10}}], True, id="definition"),
        pytest.param([{**HELD_LIMITS, "priority": 0}], True, id="priority"),
        pytest.param([{**HELD_LIMITS, "vhost": "/"}], True, id="another vhost's"),
    ],
)
def test_a_policy_is_pending_unless_held_as_given(held: list[dict[str, Any]], is_pending: bool) -> None:
    assert policies_pending([LIMITS], held) == ([LIMITS] if is_pending else [])


def test_a_policy_marked_absent_is_pending_while_held() -> None:
    absent = {"name": "tickets.limits", "vhost": "/unistra", "state": "absent"}
    assert policies_pending([absent], [HELD_LIMITS]) == [absent]
    assert policies_pending([absent], []) == []


def uri_results(**reads: Any) -> list[dict[str, Any]]:
    """The results of the role's looped uri task: a read that failed has no JSON and another status."""
    return [
        {"item": path, "status": 200, "json": body}
        if body is not None
        else {"item": path, "status": -1, "msg": "refused"}
        for path, body in reads.items()
    ]


def test_the_filter_reads_the_uri_results() -> None:
    reads = uri_results(users=[broker_user()], permissions=[worker_permission()], **{"topic-permissions": []})
    assert pending([WORKER], "users", reads) == []
    failed = uri_results(users=None, permissions=[worker_permission()], **{"topic-permissions": []})
    assert pending([WORKER], "users", failed) == [WORKER]
    # skipped (not a deploy) or not registered: every item goes to its module
    assert pending([WORKER], "users", []) == [WORKER]
    assert pending([LIMITS], "policies", uri_results(policies=[HELD_LIMITS])) == []


def test_the_filter_refuses_what_it_cannot_compare() -> None:
    with pytest.raises(AnsibleFilterError, match="kind must be one of users, vhosts, policies"):
        pending([WORKER], "queues", [])
    with pytest.raises(AnsibleFilterError, match="the users must be a list"):
        pending({"name": "worker"}, "users", [])
