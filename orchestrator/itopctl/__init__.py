"""itopctl: promote one immutable unistra.itop release through the pipeline's stages (dev -> test -> pprd -> prod).

Commands (``itopctl --help``): ``release add|list|show|reject``, ``deploy``, ``promote``, ``approve``, ``rollback``,
``status``, ``history``, ``lock``, ``unlock``, ``lab up|down``, ``config``. Read commands take ``--json``.

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
130    interrupted by Ctrl-C, stopped at a phase boundary (the deployment record says which)
=====  ==============================================================================================
"""

from __future__ import annotations

__version__ = "0.1.0"
