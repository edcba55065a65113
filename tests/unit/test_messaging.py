"""The message lifecycle of work queues (module_utils/messaging.py and its filters): the definitions' shape, the
arguments the broker and Celery share, validation, absent propagation and the policies' patterns."""

from __future__ import annotations

import re
from typing import Any

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.unistra.itop.plugins.filter.messaging import FilterModule
from ansible_collections.unistra.itop.plugins.module_utils.messaging import (
    WorkQueueError,
    celery_queues,
    lifecycle_definitions,
    queue_consumers,
)

TICKETS = {"name": "tickets", "vhost": "/unistra", "retry_delay_ms": 2000, "max_retries": 2, "max_length": 100000}
SLOW = {"name": "slow", "vhost": "/unistra"}


def _by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in items}


def test_a_work_queue_gives_three_exchanges_three_queues_three_bindings() -> None:
    lifecycle = lifecycle_definitions([TICKETS])
    assert set(lifecycle) == {"exchanges", "queues", "bindings", "policies"}
    assert lifecycle["exchanges"] == [
        {"name": name, "vhost": "/unistra", "type": "direct", "durable": True, "state": "present"}
        for name in ("tickets", "tickets.retry", "tickets.dlx")
    ]
    queues = _by_name(lifecycle["queues"])
    assert list(queues) == ["tickets", "tickets.retry", "tickets.dead"]
    assert all(q["durable"] and q["vhost"] == "/unistra" and q["state"] == "present" for q in queues.values())
    assert queues["tickets"]["arguments"] == {
        "x-queue-type": "classic",
        "x-dead-letter-exchange": "tickets.dlx",
        "x-dead-letter-routing-key": "tickets",
    }
    # a retried message waits retry_delay_ms, then expires back to the work queue
    assert queues["tickets.retry"]["arguments"] == {
        "x-queue-type": "classic",
        "x-message-ttl": 2000,
        "x-dead-letter-exchange": "tickets",
        "x-dead-letter-routing-key": "tickets",
    }
    assert queues["tickets.dead"]["arguments"] == {"x-queue-type": "classic"}
    assert [
        (b["source"], b["destination"], b["destination_type"], b["routing_key"]) for b in lifecycle["bindings"]
    ] == [
        ("tickets", "tickets", "queue", "tickets"),
        ("tickets.retry", "tickets.retry", "queue", "tickets"),
        ("tickets.dlx", "tickets.dead", "queue", "tickets"),
    ]


def test_policies_are_emitted_only_for_what_is_set() -> None:
    policies = _by_name(lifecycle_definitions([TICKETS])["policies"])
    assert policies["tickets.limits"] == {
        "name": "tickets.limits",
        "vhost": "/unistra",
        "pattern": "^tickets$",
        "apply_to": "queues",
        "tags": {"max-length": 100000, "overflow": "reject-publish"},
        "priority": 10,
        "state": "present",
    }
    assert policies["tickets.dead.limits"]["tags"] == {"message-ttl": 604800000}
    assert policies["tickets.dead.limits"]["pattern"] == r"^tickets\.dead$"
    # nothing set on the work queue: no limits policy at all, not even an absent one
    slow = lifecycle_definitions([SLOW | {"state": "absent"}])["policies"]
    assert [p["name"] for p in slow] == ["slow.dead.limits"]
    none = lifecycle_definitions([SLOW | {"dead_letter_ttl_ms": 0}])["policies"]
    assert none == []
    both = _by_name(
        lifecycle_definitions([SLOW | {"message_ttl_ms": 60000, "dead_letter_max_length": 50, "max_length": 7}])[
            "policies"
        ]
    )
    assert both["slow.limits"]["tags"] == {"max-length": 7, "overflow": "reject-publish", "message-ttl": 60000}
    assert both["slow.dead.limits"]["tags"] == {"message-ttl": 604800000, "max-length": 50}


def test_celery_gets_exactly_the_broker_arguments() -> None:
    lifecycle = lifecycle_definitions([TICKETS, SLOW | {"queue_type": "quorum"}])
    broker = _by_name(lifecycle["queues"])
    for queue in celery_queues([TICKETS, SLOW | {"queue_type": "quorum"}]):
        assert queue["queue_arguments"] == broker[queue["name"]]["arguments"]
    assert celery_queues([TICKETS]) == [
        {
            "name": "tickets",
            "vhost": "/unistra",
            "exchange": "tickets",
            "exchange_type": "direct",
            "routing_key": "tickets",
            "queue_arguments": {
                "x-queue-type": "classic",
                "x-dead-letter-exchange": "tickets.dlx",
                "x-dead-letter-routing-key": "tickets",
            },
            "retry_exchange": "tickets.retry",
            "retry_queue": "tickets.retry",
            "dead_letter_exchange": "tickets.dlx",
            "dead_letter_queue": "tickets.dead",
            "max_retries": 2,
        }
    ]
    assert broker["slow"]["arguments"]["x-queue-type"] == "quorum"
    assert broker["slow.dead"]["arguments"] == {"x-queue-type": "quorum"}


def test_the_outputs_share_no_mutable_dict() -> None:
    queue = celery_queues([TICKETS])[0]
    queue["queue_arguments"]["x-queue-type"] = "changed"
    assert celery_queues([TICKETS])[0]["queue_arguments"]["x-queue-type"] == "classic"


def test_absent_is_carried_to_every_definition_and_celery_leaves_it_out() -> None:
    absent = lifecycle_definitions([TICKETS | {"state": "absent"}])
    present = lifecycle_definitions([TICKETS])
    for kind, items in absent.items():
        assert items, kind
        # the same definitions, by the same names, only absent
        assert items == [item | {"state": "absent"} for item in present[kind]]
    mixed = lifecycle_definitions([TICKETS | {"state": "absent"}, SLOW])
    assert {q["name"] for q in mixed["queues"] if q["state"] == "absent"} == {
        "tickets",
        "tickets.retry",
        "tickets.dead",
    }
    assert [q["name"] for q in celery_queues([TICKETS | {"state": "absent"}, SLOW])] == ["slow"]


def test_names_with_dots_are_escaped_in_the_patterns() -> None:
    policies = _by_name(lifecycle_definitions([{"name": "itop.events", "vhost": "/", "max_length": 1}])["policies"])
    limits, dead = policies["itop.events.limits"]["pattern"], policies["itop.events.dead.limits"]["pattern"]
    assert limits == r"^itop\.events$"
    assert dead == r"^itop\.events\.dead$"
    assert re.fullmatch(limits, "itop.events")
    for other in ("itopXevents", "itop.events.retry", "itop.events.dead", "xitop.events"):
        assert not re.search(limits, other), other
    assert not re.search(dead, "itop.eventsXdead")


def test_no_work_queue_gives_nothing() -> None:
    assert lifecycle_definitions([]) == {"exchanges": [], "queues": [], "bindings": [], "policies": []}
    assert lifecycle_definitions(None)["queues"] == []
    assert celery_queues([]) == []


@pytest.mark.parametrize(
    ("item", "key"),
    [
        ({"vhost": "/u"}, "name"),
        ({"name": "a b", "vhost": "/u"}, "name"),
        ({"name": "a/b", "vhost": "/u"}, "name"),
        ({"name": "x" * 201, "vhost": "/u"}, "name"),
        ({"name": "q"}, "vhost"),
        ({"name": "q", "vhost": ""}, "vhost"),
        ({"name": "q", "vhost": "/u", "queue_type": "stream"}, "queue_type"),
        ({"name": "q", "vhost": "/u", "state": "gone"}, "state"),
        ({"name": "q", "vhost": "/u", "retry_delay_ms": 0}, "retry_delay_ms"),
        ({"name": "q", "vhost": "/u", "retry_delay_ms": "5000"}, "retry_delay_ms"),
        ({"name": "q", "vhost": "/u", "max_retries": -1}, "max_retries"),
        ({"name": "q", "vhost": "/u", "max_length": True}, "max_length"),
        ({"name": "q", "vhost": "/u", "message_ttl_ms": 1.5}, "message_ttl_ms"),
        ({"name": "q", "vhost": "/u", "dead_letter_ttl_ms": -1}, "dead_letter_ttl_ms"),
        ({"name": "q", "vhost": "/u", "dead_letter_max_length": None}, "dead_letter_max_length"),
        ({"name": "q", "vhost": "/u", "ttl": 5}, "ttl"),
    ],
)
def test_a_bad_work_queue_is_refused_naming_the_item_and_the_key(item: dict[str, Any], key: str) -> None:
    with pytest.raises(WorkQueueError) as caught:
        lifecycle_definitions([SLOW, item])
    assert isinstance(caught.value, ValueError)
    assert caught.value.key == key
    assert caught.value.item.startswith("item 1")
    assert key in str(caught.value)
    assert "item 1" in str(caught.value)
    if isinstance(item.get("name"), str) and key != "name":
        assert item["name"] in str(caught.value)


@pytest.mark.parametrize(
    "queues",
    [
        [SLOW, SLOW],
        [{"name": "a", "vhost": "/u"}, {"name": "a.retry", "vhost": "/u"}],
        [{"name": "a", "vhost": "/u"}, {"name": "a.dead", "vhost": "/u"}],
    ],
)
def test_two_work_queues_may_not_declare_the_same_name_in_a_vhost(queues: list[dict[str, Any]]) -> None:
    with pytest.raises(WorkQueueError, match="choose distinct names"):
        lifecycle_definitions(queues)


def test_the_same_name_in_two_vhosts_is_fine() -> None:
    assert len(celery_queues([SLOW, SLOW | {"vhost": "/other"}])) == 2


@pytest.mark.parametrize("value", ["tickets", {"name": "tickets"}, 3, ["tickets"]])
def test_not_a_list_of_dicts_is_refused(value: Any) -> None:
    with pytest.raises(WorkQueueError, match="must be"):
        lifecycle_definitions(value)


def test_the_filters_wire_the_functions_and_turn_errors_into_filter_errors() -> None:
    filters = FilterModule().filters()
    assert filters["message_lifecycle"]([TICKETS]) == lifecycle_definitions([TICKETS])
    assert filters["celery_queues"]([TICKETS]) == celery_queues([TICKETS])
    for name in ("message_lifecycle", "celery_queues"):
        with pytest.raises(AnsibleFilterError, match=r"item 0 \(q\): retry_delay_ms"):
            filters[name]([{"name": "q", "vhost": "/", "retry_delay_ms": -5}])


def _consumer(name: str, vhost: str = "/unistra") -> dict[str, Any]:
    return {"queue": {"name": name, "vhost": vhost}, "consumer_tag": "ctag", "channel_details": {}}


def test_queue_consumers_counts_each_work_queue_present_in_its_own_vhost() -> None:
    gone = {"name": "gone", "vhost": "/unistra", "state": "absent"}
    consumers = [_consumer("tickets"), _consumer("tickets"), _consumer("tickets", "/other"), _consumer("celeryev.x"),
                 _consumer("gone")]  # fmt: skip
    assert queue_consumers([TICKETS, SLOW, gone], consumers) == {"tickets": 2, "slow": 0}
    # one list per vhost read, as a loop registers them
    assert queue_consumers([TICKETS, SLOW], [[_consumer("tickets")], [_consumer("slow"), {"odd": 1}]]) == {
        "tickets": 1,
        "slow": 1,
    }
    assert FilterModule().filters()["queue_consumers"]([TICKETS], []) == {"tickets": 0}


def test_queue_consumers_refuses_what_is_not_work_queues_and_a_list() -> None:
    with pytest.raises(WorkQueueError, match="consumers"):
        queue_consumers([TICKETS], {"queue": {}})
    with pytest.raises(AnsibleFilterError, match="vhost"):
        FilterModule().filters()["queue_consumers"]([{"name": "tickets"}], [])
