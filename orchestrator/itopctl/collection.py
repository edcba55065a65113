"""The collection's rules, imported from the collection itself: itopctl keeps no copy of them.

Release ids, sha256 checksums, artifact URI schemes, component and extension names and the deploy phases are
defined once, in the collection's ``plugins/module_utils/rules.py`` (pure Python, no Ansible import); the release
module, the roles (through the ``unistra.itop.rules`` lookup) and itopctl all read them there. So are the work
queues' rules (``messaging.py``), which the roles apply to ``unistra_itop_work_queues`` and itopctl to a manifest's
``messaging.work_queues``.

Where the collection is found, first match wins:

1. the repository this itopctl runs from (``<repo>/orchestrator/itopctl`` -> ``<repo>/collections``), which is
   also where the playbooks it runs find it;
2. each directory of ``ANSIBLE_COLLECTIONS_PATH`` (or the older ``ANSIBLE_COLLECTIONS_PATHS``);
3. an ``ansible_collections.unistra.itop`` already importable (a collection installed next to ansible).

``ansible_collections`` is a namespace package (no ``__init__.py``), so putting the directory above it on
``sys.path`` merges it with the collections shipped with ansible.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import ExitCode, ItopctlError

RULES_FILE = Path("ansible_collections/unistra/itop/plugins/module_utils/rules.py")
REPO_COLLECTIONS = Path(__file__).resolve().parents[2] / "collections"


def candidate_dirs(environ: dict[str, str] | None = None) -> list[Path]:
    """Where the collection may be, in the order searched (see the module docstring)."""
    env = os.environ if environ is None else environ
    found = [REPO_COLLECTIONS]
    for name in ("ANSIBLE_COLLECTIONS_PATH", "ANSIBLE_COLLECTIONS_PATHS"):
        found += [Path(p).expanduser() for p in env.get(name, "").split(os.pathsep) if p]
    return found


def collections_dir(environ: dict[str, str] | None = None) -> Path | None:
    """The first candidate directory that holds the collection's ``rules.py``, or None."""
    for directory in candidate_dirs(environ):
        if (directory / RULES_FILE).is_file():
            return directory.resolve()
        # a path given as .../ansible_collections itself (Ansible accepts both forms)
        if directory.name == "ansible_collections" and (directory.parent / RULES_FILE).is_file():
            return directory.parent.resolve()
    return None


def _make_importable() -> None:
    directory = collections_dir()
    if directory is not None:
        if str(directory) not in sys.path:
            sys.path.insert(0, str(directory))
        return
    try:
        import ansible_collections.unistra.itop.plugins.module_utils.rules  # noqa: F401, PLC0415
    except ImportError:
        searched = ", ".join(str(p) for p in candidate_dirs())
        raise ItopctlError(
            "the unistra.itop collection (which defines release ids, checksums and URI schemes) was not found in "
            f"{searched}; run itopctl from the repository checkout, or set ANSIBLE_COLLECTIONS_PATH to the "
            "directory holding ansible_collections/unistra/itop",
            ExitCode.INTERNAL,
        ) from None


_make_importable()

from ansible_collections.unistra.itop.plugins.module_utils import messaging, rules  # noqa: E402

__all__ = ["collections_dir", "messaging", "rules"]
