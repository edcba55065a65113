# Copyright: (c) 2026, Université de Strasbourg
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters of the message lifecycle: unistra.itop.message_lifecycle, unistra.itop.celery_queues and
unistra.itop.queue_consumers.

Their documentation is in message_lifecycle.yml, celery_queues.yml and queue_consumers.yml; the logic in
module_utils/messaging.py.
"""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError
from ansible_collections.unistra.itop.plugins.module_utils import messaging


def message_lifecycle(work_queues: Any) -> dict[str, list[dict[str, Any]]]:
    try:
        return messaging.lifecycle_definitions(work_queues)
    except messaging.WorkQueueError as error:
        raise AnsibleFilterError(str(error)) from error


def celery_queues(work_queues: Any) -> list[dict[str, Any]]:
    try:
        return messaging.celery_queues(work_queues)
    except messaging.WorkQueueError as error:
        raise AnsibleFilterError(str(error)) from error


def queue_consumers(work_queues: Any, consumers: Any) -> dict[str, int]:
    try:
        return messaging.queue_consumers(work_queues, consumers)
    except messaging.WorkQueueError as error:
        raise AnsibleFilterError(str(error)) from error


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "message_lifecycle": message_lifecycle,
            "celery_queues": celery_queues,
            "queue_consumers": queue_consumers,
        }
