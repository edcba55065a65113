"""Every role documents its defaults: ``meta/argument_specs.yml`` and ``defaults/main.yml`` agree, for each role.

One check for all roles (the collection grows a role per application): every default is an option of at least one
entry point with the same default, and every option that declares a default has it in ``defaults/main.yml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROLES = Path(__file__).resolve().parents[2] / "collections/ansible_collections/unistra/itop/roles"
ROLE_DIRS = sorted(p for p in ROLES.iterdir() if (p / "tasks").is_dir())


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text()) if path.exists() else None


def test_the_collection_has_roles() -> None:
    assert {p.name for p in ROLE_DIRS} >= {"app_release", "itop"}


@pytest.mark.parametrize("role", ROLE_DIRS, ids=[p.name for p in ROLE_DIRS])
def test_argument_specs_match_defaults(role: Path) -> None:
    defaults = _load(role / "defaults/main.yml") or {}
    specs = (_load(role / "meta/argument_specs.yml") or {}).get("argument_specs")
    assert specs, f"{role.name}: meta/argument_specs.yml has no argument_specs"
    documented: dict[str, Any] = {}
    problems = []
    for entry, spec in specs.items():
        for name, option in (spec.get("options") or {}).items():
            if "default" in option:
                if name not in defaults:
                    problems.append(f"{entry}: {name} has a default in the spec but not in defaults/main.yml")
                elif option["default"] != defaults[name]:
                    problems.append(
                        f"{entry}: {name} defaults to {option['default']!r}, defaults/main.yml says {defaults[name]!r}"
                    )
            documented[name] = option
    problems += [
        f"{name} is in defaults/main.yml but in no entry point's options" for name in defaults if name not in documented
    ]
    problems += [
        f"{name} is documented without a description" for name, opt in documented.items() if not opt.get("description")
    ]
    assert problems == []
