# Copyright: (c) 2026, Université de Strasbourg
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The message lifecycle of work queues: from one list of work queues (the collection-wide
``unistra_itop_work_queues``), the RabbitMQ definitions that carry a message from its queue through delayed retries
to a dead-letter queue, and the queue declarations Celery must make to consume them.

For a work queue ``Q`` in a vhost::

    publish --> exchange Q --(Q)--> queue Q --(consumer)--> done
                                      |  rejected / expired (x-dead-letter-exchange)
                                      v
                                  exchange Q.dlx --(Q)--> queue Q.dead   (kept dead_letter_ttl_ms)

    retry:  exchange Q.retry --(Q)--> queue Q.retry --(x-message-ttl = retry_delay_ms, then dead-lettered)--> exchange Q

Both the broker's definitions (:func:`lifecycle_definitions`, for the rabbitmq role) and Celery's declarations
(:func:`celery_queues`, for the celery_worker role) take the arguments of queue ``Q`` from :func:`queue_arguments`:
RabbitMQ refuses a declaration whose arguments differ from the queue's, so they must never be written twice.

Pure functions, no Ansible import: the filter plugin ``unistra.itop.message_lifecycle`` only wires them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Queue and exchange names RabbitMQ, Celery and a policy pattern all take as they are. 200 leaves room for the
# suffixes below within RabbitMQ's 255-byte limit on names.
WORK_QUEUE_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,200}$"
WORK_QUEUE_NAME_RE = re.compile(WORK_QUEUE_NAME_PATTERN)
QUEUE_TYPES = ("classic", "quorum")
STATES = ("present", "absent")
RETRY_SUFFIX = ".retry"
DEAD_LETTER_EXCHANGE_SUFFIX = ".dlx"
DEAD_LETTER_QUEUE_SUFFIX = ".dead"
LIMITS_POLICY_SUFFIX = ".limits"
# RabbitMQ applies one policy to a queue, the one of highest priority: above the default 0, so that a vhost-wide
# policy does not silently replace the lifecycle's limits.
LIFECYCLE_POLICY_PRIORITY = 10

# key: (default, minimum)
_INT_KEYS: dict[str, tuple[int, int]] = {
    "retry_delay_ms": (5000, 1),
    "max_retries": (3, 0),
    "max_length": (0, 0),
    "message_ttl_ms": (0, 0),
    "dead_letter_ttl_ms": (604_800_000, 0),
    "dead_letter_max_length": (0, 0),
}
_KEYS = frozenset({"name", "vhost", "queue_type", "state", *_INT_KEYS})


class WorkQueueError(ValueError):
    """A work queue of ``unistra_itop_work_queues`` is not valid: the message names the item and the key."""

    def __init__(self, item: str, key: str, problem: str) -> None:
        super().__init__(f"unistra_itop_work_queues: {item}: {key} {problem}")
        self.item = item
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class WorkQueue:
    """One work queue, validated, with every default filled in (the defaults are those of :meth:`from_dict`)."""

    name: str
    vhost: str
    queue_type: str
    retry_delay_ms: int
    max_retries: int
    max_length: int
    message_ttl_ms: int
    dead_letter_ttl_ms: int
    dead_letter_max_length: int
    state: str

    @property
    def retry(self) -> str:
        """Name of the retry exchange and of the retry queue."""
        return self.name + RETRY_SUFFIX

    @property
    def dead_letter_exchange(self) -> str:
        return self.name + DEAD_LETTER_EXCHANGE_SUFFIX

    @property
    def dead_letter_queue(self) -> str:
        return self.name + DEAD_LETTER_QUEUE_SUFFIX

    @classmethod
    def from_dict(cls, value: Any, index: int) -> WorkQueue:
        """Validate one item of the list; ``index`` names it in errors until its name is known."""
        label = f"item {index}"
        if not isinstance(value, Mapping):
            raise WorkQueueError(label, "(the item)", f"must be a dict, got {type(value).__name__}")
        name = value.get("name")
        if not isinstance(name, str) or not WORK_QUEUE_NAME_RE.fullmatch(name):
            raise WorkQueueError(label, "name", f"is required: 1 to 200 letters, digits, '.', '_' or '-', got {name!r}")
        label = f"item {index} ({name})"
        unknown = sorted(str(key) for key in value if key not in _KEYS)
        if unknown:
            raise WorkQueueError(label, ", ".join(unknown), f"unknown: the keys are {', '.join(sorted(_KEYS))}")
        vhost = value.get("vhost")
        if not isinstance(vhost, str) or not vhost or not vhost.isprintable():
            raise WorkQueueError(label, "vhost", f"is required: a vhost name such as /unistra, got {vhost!r}")
        queue_type = value.get("queue_type", "classic")
        if queue_type not in QUEUE_TYPES:
            raise WorkQueueError(label, "queue_type", f"must be one of {', '.join(QUEUE_TYPES)}, got {queue_type!r}")
        state = value.get("state", "present")
        if state not in STATES:
            raise WorkQueueError(label, "state", f"must be one of {', '.join(STATES)}, got {state!r}")
        numbers = {key: _int(value, key, default, minimum, label) for key, (default, minimum) in _INT_KEYS.items()}
        return cls(name=name, vhost=vhost, queue_type=queue_type, state=state, **numbers)


def _int(item: Mapping[str, Any], key: str, default: int, minimum: int, label: str) -> int:
    value = item.get(key, default)
    # bool is an int in Python: true is no number of milliseconds
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        zero = " (0 = none)" if minimum == 0 and key != "max_retries" else ""
        raise WorkQueueError(label, key, f"must be an integer >= {minimum}{zero}, got {value!r}")
    return value


def parse_work_queues(items: Any) -> list[WorkQueue]:
    """Validate the whole list: each item, then that no two work queues declare the same name in a vhost."""
    if items is None:
        return []
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence):
        raise WorkQueueError("the list", "(the value)", f"must be a list of dicts, got {type(items).__name__}")
    queues = [WorkQueue.from_dict(item, index) for index, item in enumerate(items)]
    owners: dict[tuple[str, str], int] = {}
    for index, queue in enumerate(queues):
        for declared in (queue.name, queue.retry, queue.dead_letter_exchange, queue.dead_letter_queue):
            other = owners.setdefault((queue.vhost, declared), index)
            if other != index:
                raise WorkQueueError(
                    f"item {index} ({queue.name})",
                    "name",
                    f"declares {declared!r} in {queue.vhost}, as item {other} ({queues[other].name}) does:"
                    " choose distinct names",
                )
    return queues


@dataclass(frozen=True)
class WorkQueueProblem:
    """One thing wrong in a list of work queues, with its place, for a caller that reports them all at once."""

    index: int | None  # the item; None: the list itself
    key: str | None  # the item's key; None: the item as a whole
    problem: str  # what is wrong, without the place ("must be one of classic, quorum, got 'x'")
    text: str  # the whole message, as parse_work_queues raises it

    def __str__(self) -> str:
        return self.text


def _problem(index: int | None, exc: WorkQueueError, key: str | None = None) -> WorkQueueProblem:
    return WorkQueueProblem(index, key or (exc.key if exc.key in _KEYS else None), exc.problem, str(exc))


def work_queue_problems(items: Any) -> list[WorkQueueProblem]:
    """Every problem :func:`parse_work_queues` would stop at, not just its first one; [] when it accepts ``items``.

    The same rules (it calls them): per item its first problem (each unknown key, when that is the problem, then
    the item's next one); names shared within a vhost once every item is valid. For itopctl's manifest check, which
    reports every error of a file with its line; the roles keep calling parse_work_queues (the filters), unchanged.
    """
    if items is None:
        return []
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence):
        try:
            parse_work_queues(items)  # refuses it, with the list's own message
        except WorkQueueError as exc:
            return [_problem(None, exc)]
    found: list[WorkQueueProblem] = []
    for index, item in enumerate(items):
        try:
            WorkQueue.from_dict(item, index)
            continue
        except WorkQueueError as exc:
            keys = {str(key) for key in item} if isinstance(item, Mapping) else set()
            unknown = [key for key in exc.key.split(", ") if key in keys and key not in _KEYS]
            if not unknown:
                found.append(_problem(index, exc))
                continue
            # one problem per unknown key (each has its own line), then the item's next problem, if any
            found += [_problem(index, exc, key) for key in unknown]
        try:
            WorkQueue.from_dict({key: value for key, value in item.items() if str(key) not in unknown}, index)
        except WorkQueueError as exc:
            found.append(_problem(index, exc))
    if not found:
        try:
            parse_work_queues(items)
        except WorkQueueError as exc:
            place = re.match(r"item (\d+) ", exc.item)  # parse_work_queues names it "item <index> (<name>)"
            found.append(_problem(int(place[1]) if place else None, exc))
    return found


def exact_pattern(name: str) -> str:
    """An anchored policy pattern matching ``name`` only (a safe name's one regex metacharacter is '.')."""
    return "^" + name.replace(".", r"\.") + "$"


def queue_arguments(queue: WorkQueue) -> dict[str, Any]:
    """The arguments of the work queue itself: the broker declares it with them, and so must Celery."""
    return {
        "x-queue-type": queue.queue_type,
        "x-dead-letter-exchange": queue.dead_letter_exchange,
        "x-dead-letter-routing-key": queue.name,
    }


def _exchange(queue: WorkQueue, name: str) -> dict[str, Any]:
    return {"name": name, "vhost": queue.vhost, "type": "direct", "durable": True, "state": queue.state}


def _queue(queue: WorkQueue, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "vhost": queue.vhost, "durable": True, "arguments": arguments, "state": queue.state}


def _binding(queue: WorkQueue, source: str, destination: str) -> dict[str, Any]:
    return {
        "source": source,
        "destination": destination,
        "destination_type": "queue",
        "routing_key": queue.name,
        "vhost": queue.vhost,
        "arguments": {},
        "state": queue.state,
    }


def _limits_policy(queue: WorkQueue, target: str, tags: dict[str, Any]) -> list[dict[str, Any]]:
    if not tags:
        return []  # nothing to limit: no policy, neither present nor absent
    return [
        {
            "name": target + LIMITS_POLICY_SUFFIX,
            "vhost": queue.vhost,
            "pattern": exact_pattern(target),
            "apply_to": "queues",
            "tags": tags,
            "priority": LIFECYCLE_POLICY_PRIORITY,
            "state": queue.state,
        }
    ]


def _work_limits(queue: WorkQueue) -> dict[str, Any]:
    tags: dict[str, Any] = {}
    if queue.max_length:
        # a full work queue refuses new work (the publisher sees it) rather than dropping the oldest task
        tags.update({"max-length": queue.max_length, "overflow": "reject-publish"})
    if queue.message_ttl_ms:
        tags["message-ttl"] = queue.message_ttl_ms
    return tags


def _dead_letter_limits(queue: WorkQueue) -> dict[str, Any]:
    tags: dict[str, Any] = {}
    if queue.dead_letter_ttl_ms:
        tags["message-ttl"] = queue.dead_letter_ttl_ms
    if queue.dead_letter_max_length:
        # default overflow (drop-head): a full dead-letter queue forgets its oldest message
        tags["max-length"] = queue.dead_letter_max_length
    return tags


def lifecycle_definitions(work_queues: Any) -> dict[str, list[dict[str, Any]]]:
    """The exchanges, queues, bindings and policies of every work queue, as community.rabbitmq's parameters.

    Each definition carries its work queue's ``state``: a work queue marked absent yields the same names, absent.
    """
    result: dict[str, list[dict[str, Any]]] = {"exchanges": [], "queues": [], "bindings": [], "policies": []}
    for queue in parse_work_queues(work_queues):
        type_only = {"x-queue-type": queue.queue_type}
        result["exchanges"] += [
            _exchange(queue, queue.name),
            _exchange(queue, queue.retry),
            _exchange(queue, queue.dead_letter_exchange),
        ]
        result["queues"] += [
            _queue(queue, queue.name, queue_arguments(queue)),
            _queue(
                queue,
                queue.retry,
                # a message waits retry_delay_ms, then expires back to the work queue
                {
                    **type_only,
                    "x-message-ttl": queue.retry_delay_ms,
                    "x-dead-letter-exchange": queue.name,
                    "x-dead-letter-routing-key": queue.name,
                },
            ),
            _queue(queue, queue.dead_letter_queue, dict(type_only)),
        ]
        result["bindings"] += [
            _binding(queue, queue.name, queue.name),
            _binding(queue, queue.retry, queue.retry),
            _binding(queue, queue.dead_letter_exchange, queue.dead_letter_queue),
        ]
        result["policies"] += _limits_policy(queue, queue.name, _work_limits(queue))
        result["policies"] += _limits_policy(queue, queue.dead_letter_queue, _dead_letter_limits(queue))
    return result


def celery_queues(work_queues: Any) -> list[dict[str, Any]]:
    """The queues Celery declares and consumes (work queues present only), with the broker's exact arguments."""
    return [
        {
            "name": queue.name,
            "vhost": queue.vhost,
            "exchange": queue.name,
            "exchange_type": "direct",
            "routing_key": queue.name,
            "queue_arguments": queue_arguments(queue),
            "retry_exchange": queue.retry,
            "retry_queue": queue.retry,
            "dead_letter_exchange": queue.dead_letter_exchange,
            "dead_letter_queue": queue.dead_letter_queue,
            "max_retries": queue.max_retries,
        }
        for queue in parse_work_queues(work_queues)
        if queue.state == "present"
    ]


def queue_consumers(work_queues: Any, consumers: Any) -> dict[str, int]:
    """How many consumers each work queue present has, by queue name, from the consumers RabbitMQ's management API
    lists (``/api/consumers/<vhost>``, read as the channels register them: the queues' own consumer counts come
    from statistics emitted every few seconds). ``consumers`` is that list, or several such lists (one per vhost).
    A consumer of a queue of the same name in another vhost is not counted."""
    present = [queue for queue in parse_work_queues(work_queues) if queue.state == "present"]
    if not isinstance(consumers, list):
        raise WorkQueueError("consumers", "(the list)", f"must be a list, got {type(consumers).__name__}")
    flat = [c for item in consumers for c in (item if isinstance(item, list) else [item])]
    seen: dict[tuple[str, str], int] = {}
    for consumer in flat:
        queue = consumer.get("queue") if isinstance(consumer, Mapping) else None
        if isinstance(queue, Mapping):
            key = (str(queue.get("vhost")), str(queue.get("name")))
            seen[key] = seen.get(key, 0) + 1
    return {queue.name: seen.get((queue.vhost, queue.name), 0) for queue in present}
