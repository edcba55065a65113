"""Fault injection for tests only: kill itopctl (SIGKILL, as ``kill -9`` or a power cut would) or hold it at a named
point, to prove that every point leaves a state the next command recognises and repairs.

Honoured only when the variable is set, and never set by itopctl itself:

- ``_ITOPCTL_TEST_KILL_AT=<point>[@<n>]``: at the ``n``-th time (default 1) the process reaches ``point``, it
  SIGKILLs itself;
- ``_ITOPCTL_TEST_PAUSE_AT=<point>:<file>``: at ``point`` it creates ``<file>.reached`` and waits (at most a
  minute) until ``<file>`` exists.

The points, in the order a promotion reaches them (tests/orchestrator/test_itopctl_faults.py loops over them):
``locked`` (lock taken, deployment recorded), ``prepared`` (prepare ran and was recorded), ``in-run-<phase>``
(inside a playbook run: it ran, its secrets file still exists, itopctl has recorded nothing of it), ``switched``
(a switch batch ran and was recorded), ``before-verify``, ``verified`` (verify ran and was recorded),
``before-record`` (the deployment's outcome is known, not yet recorded; also after an auto-rollback), and
``before-lock`` (gates read, lock not yet taken; for races).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

KILL_AT = "_ITOPCTL_TEST_KILL_AT"
PAUSE_AT = "_ITOPCTL_TEST_PAUSE_AT"
_reached: dict[str, int] = {}


def point(name: str) -> None:
    """A place where a test may kill or hold this process; nothing at all unless a test variable is set."""
    kill = os.environ.get(KILL_AT)
    pause = os.environ.get(PAUSE_AT)
    if not kill and not pause:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if kill:
        where, _, nth = kill.partition("@")
        if where == name and _reached[name] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)
    if pause:
        where, _, path = pause.partition(":")
        if where == name and path:
            Path(f"{path}.reached").touch()
            deadline = time.monotonic() + 60
            while not Path(path).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
