"""The stage lock of a running deployment: renewed while its holder lives, checked before every change (fencing).

A phase can last longer than the lease (a slow prepare, a long verify): renewing only at phase boundaries would
let the lease run out under a live deployment and a second one take the stage. :class:`HeldLock` renews it from a
heartbeat thread every third of the lease, on a connection of its own (SQLite and psycopg connections must not be
shared between threads). :meth:`HeldLock.check` is the fencing check, on the caller's connection: the lock still
carries this deployment's token, or :class:`itopctl.store.LockLost` is raised and the deployment stops before
changing anything more; :meth:`HeldLock.fenced` makes the check and a record one transaction. A lock taken over
is never released by its former holder: every delete and update of a lock is conditioned on its token.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from types import TracebackType

from .store import LockHandle, LockLost, Store


class HeldLock:
    """Use as a context manager around the work done under ``handle``; the lock is given back on exit."""

    def __init__(self, store: Store, handle: LockHandle, lease: int, clock: Callable[[], datetime]) -> None:
        self.store = store
        self.handle = handle
        self.lease = lease
        self.clock = clock
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{handle.record.stage}", daemon=True)

    def __enter__(self) -> HeldLock:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.store.release_handle(self.handle, self.clock())  # a no-op when the lock is someone else's now

    def check(self) -> None:
        """Raise :class:`LockLost` unless this deployment still holds the stage lock."""
        if self.lost:
            self.store.check_holds(self.handle)  # says who has it
            raise LockLost(f"the lock of stage {self.handle.record.stage} was taken over")
        self.store.check_holds(self.handle)

    @contextmanager
    def fenced(self) -> Iterator[None]:
        """A write transaction that first checks the lock is ours: on PostgreSQL the lock row stays locked (FOR
        UPDATE) until the commit, on SQLite writers are serialised, so no takeover can slip in between."""
        with self.store.transaction():
            self.check()
            yield

    def _beat(self) -> None:
        interval = max(0.2, self.lease / 3)
        store: Store | None = None
        try:
            while not self._stop.wait(interval):
                try:
                    store = store or Store.open(self.store.url, migrate=False)
                    if not store.renew_lock(self.handle, self.lease, self.clock()):
                        self.lost = True
                        return
                except Exception:  # a store that is down now may answer at the next beat
                    if store is not None:
                        store.close()
                    store = None
        finally:
            if store is not None:
                store.close()
