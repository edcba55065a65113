"""itopctl: promote one immutable unistra.itop release through the pipeline's stages (dev -> test -> pprd -> prod).

Commands (``itopctl --help``): ``release add|list|show|reject``, ``deploy``, ``promote``, ``approve``, ``rollback``,
``status [--probe]``, ``history``, ``lock``, ``unlock``, ``lab up|down``, ``config``. Read commands take ``--json``.

Every command that opens the state store first finds the locks whose itopctl died on this control node (host, pid
and process start time recorded with the lock): they are released at once and their deployments recorded as
``abandoned`` (the stage's health ``unknown`` when hosts may have been switched; ``status --probe`` asks the hosts).

Exit codes (:class:`itopctl.errors.ExitCode`):

=====  ==============================================================================================
code   meaning
=====  ==============================================================================================
0      done (or nothing to do)
1      internal error (a bug or an unforeseen environment problem)
2      usage error or bad input: unknown stage/release, malformed manifest or pipeline, missing inventory
3      refused: a gate (previous stage, soak, approvals, freeze), a lock, a rejected or immutable release;
       nothing was changed
4      the deployment failed (see ``itopctl status`` / ``history``)
5      the deployment failed verification and the switched hosts were rolled back
6      the stage lock was taken over while the deployment ran: it stopped before changing anything more
       (recorded as ``lock_lost``; the new holder's lock is left as it is)
130    interrupted by Ctrl-C, SIGTERM or SIGHUP, stopped at a phase boundary (the deployment record says which)
141    standard output closed early (``itopctl status | head``): quiet exit, as a shell reports SIGPIPE
=====  ==============================================================================================
"""

from __future__ import annotations

__version__ = "0.1.0"
