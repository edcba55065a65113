# Copyright: (c) 2026, Université de Strasbourg
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter unistra.itop.rabbitmq_pending: the items of the rabbitmq role the broker does not hold yet.

Its documentation is in rabbitmq_pending.yml; the logic in module_utils/broker_state.py.
"""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError
from ansible_collections.unistra.itop.plugins.module_utils import broker_state

KINDS = ("users", "vhosts", "policies")


def rabbitmq_pending(wanted: Any, kind: str, reads: Any) -> list[Any]:
    if kind not in KINDS:
        raise AnsibleFilterError(f"rabbitmq_pending: kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if not isinstance(wanted, list):
        raise AnsibleFilterError(f"rabbitmq_pending: the {kind} must be a list, not {type(wanted).__name__}")
    found = broker_state.api_reads(reads if isinstance(reads, list) else [])
    if kind == "users":
        return broker_state.users_pending(
            wanted, found.get("users"), found.get("permissions"), found.get("topic-permissions")
        )
    if kind == "vhosts":
        return broker_state.vhosts_pending(wanted, found.get("vhosts"))
    return broker_state.policies_pending(wanted, found.get("policies"))


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"rabbitmq_pending": rabbitmq_pending}
