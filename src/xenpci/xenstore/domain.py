"""Domains known to xenstored and their quotas (``xenstored_domain.c``).

Models the domain table (INTRODUCE, RELEASE, RESUME, SET_TARGET) and the
per-domain quotas of C xenstored 4.17 with its defaults and its error for each.
Deliberate difference: without a hypervisor nothing maps a ring here; a
transport (:mod:`xenpci.xenstore.ring`) attaches itself to an introduced domain.
Quotas bind unprivileged identities only, as in C.
"""

from __future__ import annotations

from dataclasses import dataclass

# C 4.17 defaults (``xenstored_core.c`` globals), by CONTROL ``quota`` name.
DEFAULT_QUOTAS: dict[str, int] = {
    "nodes": 1000,  # -E, ENOSPC
    "node-size": 2048,  # -S, ENOSPC
    "watches": 128,  # -W, E2BIG in 4.17 (count > 128 fails, so 129 fit)
    "transactions": 10,  # -t, ENOSPC (count > 10 fails)
    "permissions": 5,  # -A, ENOSPC
    "transaction-nodes": 1024,  # ENOSPC
    "path-max": 2048,  # -M, EINVAL for everyone (tree.canonicalize)
    "outstanding": 20,
    "memory": 2621440,  # 2.5 MiB hard
}

QUOTA_HELP: dict[str, str] = {
    "nodes": "Max. number of nodes per domain",
    "node-size": "Max. size of a node",
    "watches": "Max. number of watches per domain",
    "transactions": "Max. number of transactions per domain",
    "permissions": "Max. number of permissions per node",
    "transaction-nodes": "Max. number of accessed nodes per transaction",
    "path-max": "Max. length of a node path",
    "outstanding": "Max. number of outstanding requests per domain",
    "memory": "Max. memory usage per domain",
}

DOMID_SELF = 0x7FF0


@dataclass(slots=True)
class Domain:
    """One introduced domain (``struct domain``)."""

    domid: int
    gfn: int = 0
    evtchn: int = 0
    target: int | None = None
    shutdown_reported: bool = False
