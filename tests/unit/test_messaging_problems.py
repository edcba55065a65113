"""work_queue_problems (module_utils/messaging.py): every problem of a list of work queues, each with its place, by
the rules parse_work_queues applies, and none where parse_work_queues accepts the list."""

from __future__ import annotations

from typing import Any

import pytest
from ansible_collections.unistra.itop.plugins.module_utils.messaging import (
    WorkQueueError,
    parse_work_queues,
    work_queue_problems,
)

TICKETS = {"name": "tickets", "vhost": "/unistra", "retry_delay_ms": 2000, "max_retries": 2}
SLOW = {"name": "slow", "vhost": "/unistra"}


def _places(items: Any) -> list[tuple[int | None, str | None]]:
    return [(p.index, p.key) for p in work_queue_problems(items)]


CASES: list[Any] = [
    None,
    [],
    [TICKETS, SLOW],
    [{**SLOW, "state": "absent"}],
    "tickets",
    {"tickets": TICKETS},
    [3],
    [{"vhost": "/unistra"}],
    [{**TICKETS, "queue_type": "stream"}],
    [{**TICKETS, "max_retries": True}],
    [{**TICKETS, "retry_delay_ms": 0}],
    [{**TICKETS, "colour": "blue"}],
    [TICKETS, TICKETS],
    [TICKETS, {"name": "tickets.retry", "vhost": "/unistra"}],
    [TICKETS, {**TICKETS, "vhost": "/other"}],
]


@pytest.mark.parametrize("items", CASES, ids=range(len(CASES)))
def test_no_problem_exactly_where_parse_work_queues_accepts(items: Any) -> None:
    try:
        parse_work_queues(items)
        accepted = True
    except WorkQueueError:
        accepted = False
    problems = work_queue_problems(items)
    assert (problems == []) is accepted
    if not accepted:
        # its first problem is the one parse_work_queues raises, word for word
        with pytest.raises(WorkQueueError) as caught:
            parse_work_queues(items)
        assert str(caught.value) in [str(p) for p in problems]


def test_every_item_is_judged_not_only_the_first_bad_one() -> None:
    items = [{"vhost": "/u"}, TICKETS, {**SLOW, "queue_type": "stream"}, 7]
    assert _places(items) == [(0, "name"), (2, "queue_type"), (3, None)]
    problems = work_queue_problems(items)
    assert problems[1].problem == "must be one of classic, quorum, got 'stream'"
    assert (
        problems[1].text
        == "unistra_itop_work_queues: item 2 (slow): queue_type must be one of classic, quorum, got 'stream'"
    )


def test_each_unknown_key_has_its_own_problem_then_the_next_one_of_the_item() -> None:
    items = [{**TICKETS, "ttl": 1, "colour": "blue", "max_retries": -1}]
    assert _places(items) == [(0, "colour"), (0, "ttl"), (0, "max_retries")]
    assert work_queue_problems(items)[0].problem.startswith("unknown: the keys are ")


def test_a_name_declared_twice_in_a_vhost_points_at_the_second_item() -> None:
    problems = work_queue_problems([TICKETS, SLOW, {"name": "tickets", "vhost": "/unistra"}])
    assert [(p.index, p.key) for p in problems] == [(2, "name")]
    assert "as item 0 (tickets) does" in problems[0].problem


def test_the_list_itself() -> None:
    assert _places({"name": "tickets"}) == [(None, None)]
    assert work_queue_problems("tickets")[0].problem == "must be a list of dicts, got str"
