"""XenStore transactions as C xenstored 4.17 runs them (``xenstored_transaction.c``).

A transaction reads lazily: the first access to a node inside it records the
node as it is *then* (a private copy of the record and its generation, or
``NO_GENERATION`` if missing); later accesses in the transaction see that
copy. Nodes never touched show the live store, writes made after
TRANSACTION_START included. Commit (``finalize_transaction``) fails with
EAGAIN if any node first accessed by a read has another generation now;
otherwise each modified record replaces the live one, in first-access order,
and each modified node fires one watch event. So a blind write (first access
after another client's change) commits, and a node created then removed in the
transaction fires nothing (it has no perms and no live node to check).

A failed write inside the transaction (``fail_transaction``) makes the commit
fail with ENOMEM. Nodes-per-domain deltas are kept per transaction and checked
at commit (``transaction_fix_domains``).

Cost: an access costs O(1) plus a copy of that one record; a commit costs
O(records accessed). No request is ever replayed.
"""

from __future__ import annotations

from xenpci.xenstore.perms import Perms
from xenpci.xenstore.tree import NO_GENERATION, Node


class Accessed:
    """One node a transaction touched (C ``struct accessed_node``)."""

    __slots__ = ("check_gen", "exact", "fire", "gen", "kids", "live", "modified", "node", "perms")

    def __init__(self, node: Node | None, gen: int, check_gen: bool, perms: Perms | None) -> None:
        self.node = node  # the transaction's record, None if missing/deleted
        self.gen = gen  # generation at first read (check_gen only)
        self.check_gen = check_gen
        self.perms = perms  # the ACL at first access, for watch filtering at commit
        self.modified = False
        self.fire = False
        self.exact = False
        self.kids = False  # the record's child list changed
        # The live node at first access: removed live nodes are stamped DEAD,
        # so comparing its generation is the commit's check, without a lookup.
        self.live: Node | None = None


class Transaction:
    """One open transaction of one connection (C ``struct transaction``)."""

    __slots__ = ("accessed", "fail", "generation", "id", "memory", "node_created", "nodes_delta")

    def __init__(self, tid: int, generation: int) -> None:
        self.id = tid
        self.generation = generation
        # path -> entry, in first-access order (C's list_add_tail).
        self.accessed: dict[str, Accessed] = {}
        self.fail = False
        self.node_created = False
        # owner domid -> change of its node count (C ``changed_domains``).
        self.nodes_delta: dict[int, int] = {}
        # Bytes of private records, charged to the connection's domain.
        self.memory = 0

    def queue_watch(self, path: str, exact: bool) -> None:
        """C ``queue_watches``: a non-exact event replaces an exact one, not the reverse."""
        entry = self.accessed.get(path)
        if entry is None:
            self.fail = True
            return
        if not entry.fire:
            entry.fire = True
            entry.exact = exact
        elif not exact:
            entry.exact = False

    def entry_delta(self, owner: int, delta: int) -> None:
        self.nodes_delta[owner] = self.nodes_delta.get(owner, 0) + delta


__all__ = ["NO_GENERATION", "Accessed", "Transaction"]
