# Copyright: (c) 2026, Université de Strasbourg
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action unistra.itop.packages: Debian packages present, asking dpkg first (documentation in modules/packages.py).

``ansible.builtin.apt`` opens the whole APT cache, about half a second a task on every run of every role, to find
that the packages are installed. dpkg's own database answers that in milliseconds: apt runs only when a package is
not installed (or a name is more than a plain package name: a version, an architecture, a pattern, a .deb).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.validation import check_type_bool, check_type_int, check_type_list
from ansible.plugins.action import ActionBase

# a Debian package name (Policy 5.6.1): what dpkg-query takes as it is; anything else goes to apt
PLAIN_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
# ${db:Status-Abbrev} is "ii " for a package installed and configured
QUERY_FORMAT = r"${Package}\t${db:Status-Abbrev}\n"
ARGS = ("name", "state", "update_cache", "cache_valid_time")


def not_installed(names: Sequence[str], query_output: str) -> list[str]:
    """The names dpkg does not list as installed ("ii"), in their order: also a name it does not know at all."""
    installed = set()
    for line in query_output.splitlines():
        package, _tab, status = line.partition("\t")
        if status.startswith("ii"):
            installed.add(package.split(":", 1)[0])
    return [name for name in names if name not in installed]


class ActionModule(ActionBase):
    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        unknown = sorted(set(args) - set(ARGS))
        if unknown:
            raise AnsibleActionFail(
                f"unistra.itop.packages: unsupported options {', '.join(unknown)} (it takes {', '.join(ARGS)})"
            )
        names = [str(n) for n in check_type_list(args.get("name"))]
        if not names:
            raise AnsibleActionFail("unistra.itop.packages: name must list at least one package")
        if args.get("state", "present") != "present":
            raise AnsibleActionFail("unistra.itop.packages: only state=present (use ansible.builtin.apt to remove)")
        apt_args = {
            "name": names,
            "state": "present",
            "update_cache": check_type_bool(args.get("update_cache", False)),
            "cache_valid_time": check_type_int(args.get("cache_valid_time", 0)),
        }
        if all(PLAIN_NAME.match(name) for name in names):
            command = "dpkg-query -W -f=" + shlex.quote(QUERY_FORMAT) + " -- " + " ".join(map(shlex.quote, names))
            queried = self._low_level_execute_command(command)
            # exit 1 is "no package matches" for a name dpkg never saw: that one is simply not installed
            if queried.get("rc") in (0, 1):
                missing = not_installed(names, queried.get("stdout", ""))
                if not missing:
                    result.update(changed=False, packages=names, missing=[], msg="all installed (dpkg)")
                    return result
        result.update(
            self._execute_module(module_name="ansible.builtin.apt", module_args=apt_args, task_vars=task_vars)
        )
        result["packages"] = names
        return result
