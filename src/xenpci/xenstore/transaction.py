"""XenStore transactions (``xenstored_transaction.c``).

Deliberate difference from C 4.17: a transaction sees a full snapshot of the
store taken at TRANSACTION_START (the spec's wording, and what pyxs's
``test_transaction_commit_retry`` needs), not per-node copies made at first
access. Every path it touches is remembered with the node it had in the
snapshot; at commit each must be unchanged in the live store (same generation,
or still absent; a removed subtree must be untouched), else EAGAIN. The
transaction's modifications are then replayed on the live tree, and their
watch events fire only then.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from xenpci.xenstore.perms import Perms
from xenpci.xenstore.tree import Node, Tree

# One recorded modification: applies itself to a tree, returns its watch events.
Op = Callable[[Tree], list["Event"]]


@dataclass(frozen=True, slots=True)
class Event:
    """A change that fires watches: path, exact-or-subtree match, ACLs that may see it."""

    path: str
    exact: bool
    perms: tuple[Perms, ...]  # Perms of the node (old and new) and of its parent


@dataclass(slots=True)
class Transaction:
    """One open transaction of one connection."""

    id: int
    base: Node  # the snapshot root
    tree: Tree  # the transaction's private view (starts at ``base``)
    touched: dict[str, tuple[bool, Node | None]] = field(default_factory=dict)
    ops: list[Op] = field(default_factory=list)

    def touch(self, path: str, *, subtree: bool = False) -> None:
        """Remember ``path`` as seen in the snapshot (``subtree``: its whole subtree)."""
        seen = self.touched.get(path)
        if seen is None or (subtree and not seen[0]):
            node = Tree(self.base, self.tree.gen_source).get(path)
            self.touched[path] = (subtree, node)

    def conflicts(self, live: Tree) -> bool:
        """True if any touched path changed in ``live`` since the snapshot."""
        for path, (subtree, seen) in self.touched.items():
            now = live.get(path)
            if subtree or now is None or seen is None:
                # A removed subtree must be the very same object: path copying
                # replaces it on any change below it.
                if now is not seen:
                    return True
            elif now.gen != seen.gen:
                return True
        return False
