"""Who holds a lock or a secrets directory, and whether that process is still alive.

A process is named by its host, its pid and its start time (``/proc/<pid>/stat`` field 22, clock ticks since boot,
with the boot id), so a pid the kernel handed to another process since is not mistaken for the holder. Liveness is
only known on the same host: a holder on another control node is "unknown" and its lock waits for its lease.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_PROC = Path("/proc")


@cache
def _boot_id() -> str:
    try:
        return (_PROC / "sys/kernel/random/boot_id").read_text(encoding="ascii").strip()[:8]
    except OSError:
        return "noboot"


def start_time(pid: int) -> str | None:
    """``<boot id>:<start ticks>`` of a running process, None when there is no such process (or a zombie)."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: split after its closing one
    fields = stat[stat.rfind(")") + 2 :].split()
    if not fields or fields[0] in ("Z", "X"):  # dead, waiting for its parent to reap it
        return None
    return f"{_boot_id()}:{fields[19]}"


@dataclass(frozen=True)
class ProcessId:
    host: str
    pid: int
    started: str

    @classmethod
    def me(cls) -> ProcessId:
        pid = os.getpid()
        return cls(socket.gethostname(), pid, start_time(pid) or "unknown")

    def alive(self) -> bool | None:
        """True or False on this host; None when the process runs (or ran) on another host."""
        if self.host != socket.gethostname():
            return None
        return start_time(self.pid) == self.started

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"
