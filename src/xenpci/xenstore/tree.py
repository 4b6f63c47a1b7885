"""The XenStore node database: nodes, paths, and the live tree.

Models the node records of C xenstored 4.17 (``xenstored_core.c``: ``struct
node``, ``is_valid_nodename``, ``canonicalize``, ``get_implicit_path``,
``walk_node_tree``). C keeps one record per path in a hash table keyed by
the full path, each record holding the value, the ACL, the generation and the
NUL-separated child names; a transaction keeps private copies of the records
it touched (see :mod:`xenpci.xenstore.transaction`).

Deliberate difference: the live store here is a tree of mutable nodes whose
child table maps a name to the child node, so a lookup walks the path and no
full path string is stored per node (C's key). Changing a node touches only
that node and, when a child is added or removed, its parent's table: no
ancestor is copied, so a write under ``/local/domain/N`` costs the same with 4
or 4000 domains. Generations follow C: each change stamps the changed record
with ``++generation``; a parent whose child list changes is rewritten, so it
is stamped too.
"""

from __future__ import annotations

from collections.abc import Iterator

from xenpci.abi.xs_wire import XENSTORE_REL_PATH_MAX
from xenpci.xenstore.errors import XsError
from xenpci.xenstore.perms import Perms

# C ``valid_chars``: the only bytes a path may hold (pyxs uses the same set).
VALID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-/_@")
LOCAL_DOMAIN = "/local/domain/"
# The special watch nodes 4.17 knows; other "@" names only ever match nothing.
SPECIAL_NODES = ("@introduceDomain", "@releaseDomain")
# C ``NO_GENERATION``: the generation a transaction records for a missing node.
NO_GENERATION = -1
# Stamped on a live node when it is removed, so a transaction holding it sees the change.
DEAD = -2
# sizeof(struct xs_tdb_record_hdr) and sizeof(struct xs_permissions) in C.
RECORD_HEADER = 24
PERM_SIZE = 8

_VALID_TABLE = str.maketrans("", "", "".join(sorted(VALID_CHARS)))
_DIGITS = frozenset("0123456789")


class Node:
    """One node record: value bytes, ACL, generation, ordered children.

    ``children`` maps each child name to its node in insertion order (C
    appends to the child blob and removes in place, so DIRECTORY order is
    insertion order); ``None`` for a leaf, which saves an empty table per
    leaf. A transaction's private copy of a record is a ``Node`` too: its
    table is a copy whose values are never followed (lookups go by path).
    """

    __slots__ = ("children", "gen", "perms", "value")

    def __init__(
        self, value: bytes, perms: Perms, gen: int, children: dict[str, Node] | None = None
    ) -> None:
        self.value = value
        self.perms = perms
        self.gen = gen
        self.children: dict[str, Node] | None = children or None

    def names(self) -> list[str]:
        return list(self.children) if self.children else []

    def child_names(self) -> bytes:
        """The child-name blob ``"a\\0b\\0"`` (DIRECTORY's reply, in insertion order)."""
        if not self.children:
            return b""
        return ("\0".join(self.children) + "\0").encode()

    def childlen(self) -> int:
        """C ``node->childlen``: bytes of the NUL-terminated child names."""
        kids = self.children
        if not kids:
            return 0
        return sum(map(len, kids)) + len(kids)

    def record_size(self) -> int:
        """C's record size (``write_node_raw``): what the ``node-size`` quota limits.

        24-byte record header, 8 bytes per permission, the value and the
        NUL-terminated child names (so 2015 value bytes fit with one perm).
        """
        return (
            RECORD_HEADER + PERM_SIZE * len(self.perms.entries) + len(self.value) + self.childlen()
        )

    def copy(self) -> Node:
        """A transaction-private copy of this record (C copies the TDB record)."""
        return Node(
            self.value, self.perms, self.gen, dict(self.children) if self.children else None
        )


def prefixes(path: str) -> list[str]:
    """Every ancestor of a canonical path and itself, by depth: ``["/", "/a", "/a/b"]``."""
    if path == "/":
        return ["/"]
    out = ["/"]
    i = path.find("/", 1)
    while i >= 0:
        out.append(path[:i])
        i = path.find("/", i + 1)
    out.append(path)
    return out


def split(path: str) -> list[str]:
    """Components of a canonical absolute path ("/" has none)."""
    return [] if path == "/" else path[1:].split("/")


def parent_of(path: str) -> str:
    """Parent of a canonical path other than "/" (C ``get_parent``)."""
    i = path.rfind("/")
    return "/" if i <= 0 else path[:i]


def child_path(parent: str, name: str) -> str:
    return f"/{name}" if parent == "/" else f"{parent}/{name}"


def ancestors(path: str) -> Iterator[str]:
    """``path`` and each ancestor up to and including "/" (watch matching)."""
    yield path
    while path != "/":
        path = parent_of(path)
        yield path


def implicit_path(domid: int) -> str:
    """``get_implicit_path``: where relative paths of ``domid`` are rooted."""
    return f"{LOCAL_DOMAIN}{domid}"


def local_offset(path: str) -> int:
    """C's ``sscanf(node, "/local/domain/%5u/%n", ...)`` prefix length, or 0.

    ``%5u`` reads at most five characters (an optional sign counts), so a
    six-digit domid does not strip the prefix and its whole path counts.
    """
    if not path.startswith(LOCAL_DOMAIN):
        return 0
    i = len(LOCAL_DOMAIN)
    j = i
    if j < len(path) and path[j] in "+-":
        j += 1
    k = j
    while k < len(path) and k - i < 5 and path[k] in _DIGITS:
        k += 1
    if k == j or k >= len(path) or path[k] != "/":
        return 0
    return k + 1


def is_valid_nodename(path: str, path_max: int) -> bool:
    """C ``is_valid_nodename`` for an already canonical path."""
    if not path.startswith("/"):
        return False
    if path.endswith("/") and path != "/":
        return False
    if "//" in path:
        return False
    if len(path) > local_offset(path) + path_max:
        return False
    return not path.translate(_VALID_TABLE)


def decode_path(raw: bytes) -> str:
    """Request bytes as a path string (latin-1: every byte survives, invalid ones fail later)."""
    return raw.decode("latin-1")


def canonical(raw: bytes, domid: int) -> str:
    """C ``canonicalize``: prefix a relative path with the implicit path; no checks."""
    text = decode_path(raw)
    if text.startswith(("/", "@")):
        return text
    return f"{implicit_path(domid)}/{text}"


def canonicalize(
    raw: bytes, domid: int, *, allow_special: bool = False, path_max: int = XENSTORE_REL_PATH_MAX
) -> str:
    """Validate a request path and make it absolute (C ``canonicalize`` + checks).

    Relative paths are rooted at ``/local/domain/<domid>``. Bad characters,
    ``//``, a trailing ``/``, the empty path and over-long paths are EINVAL
    (``is_valid_nodename``); ``@`` names only where the op takes one
    (``check_watch_path``: only their length is checked).
    """
    text = canonical(raw, domid)
    if text.startswith("@"):
        if not allow_special or len(text) > XENSTORE_REL_PATH_MAX:
            raise XsError("EINVAL", "special path not allowed here")
        return text
    if not raw or not is_valid_nodename(text, path_max):
        raise XsError("EINVAL", "invalid path")
    return text


def watch_path_for(path: str, relative_to: str | None) -> str:
    """C ``get_watch_path``: the event path reported to a watch."""
    if relative_to is not None and path.startswith(relative_to):
        rest = path[len(relative_to) :]
        return rest[1:] if rest.startswith("/") else rest
    return path


class Tree:
    """The live node tree with per-owner accounting.

    ``owned`` counts nodes per owner domid (C ``nbentry``); ``memory`` the
    bytes of node records per owner as C 4.17 charges them (record size plus
    the path, its TDB key).
    """

    __slots__ = ("memory", "owned", "root")

    def __init__(self, root: Node) -> None:
        self.root = root
        self.owned: dict[int, int] = {root.perms.owner: 1}
        self.memory: dict[int, int] = {root.perms.owner: root.record_size() + 1}

    def get(self, path: str) -> Node | None:
        node: Node | None = self.root
        if path == "/":
            return node
        for name in path[1:].split("/"):
            kids = node.children  # type: ignore[union-attr]
            if kids is None:
                return None
            node = kids.get(name)
            if node is None:
                return None
        return node

    def chain(self, path: str) -> list[Node]:
        """The existing nodes along ``path``: root first, up to the first missing one.

        One walk, so looking at every ancestor of a deep path costs O(depth).
        """
        node = self.root
        out = [node]
        if path == "/":
            return out
        for name in path[1:].split("/"):
            kids = node.children
            if kids is None:
                break
            child = kids.get(name)
            if child is None:
                break
            node = child
            out.append(node)
        return out

    def account(self, node: Node, path_len: int, sign: int) -> None:
        """Add (``sign`` 1) or remove (-1) ``node``'s record from its owner's counts."""
        owner = node.perms.owner
        self.owned[owner] = self.owned.get(owner, 0) + sign
        self.memory[owner] = self.memory.get(owner, 0) + sign * (node.record_size() + path_len)


def walk(path: str, node: Node, *, post_order: bool = False) -> list[tuple[str, Node]]:
    """Every (path, node) of a subtree in C's ``walk_node_tree`` order.

    Children are visited in child-list order; ``post_order`` lists each node
    after its whole subtree (C's ``exit`` callback, the order RM deletes
    and fires in), otherwise before it. Iterative: a 2048-byte path can be
    1024 levels deep, past Python's recursion limit.
    """
    out: list[tuple[str, Node]] = []
    if not post_order:
        stack = [(path, node)]
        while stack:
            p, n = stack.pop()
            out.append((p, n))
            if n.children:
                prefix = "" if p == "/" else p
                stack.extend((f"{prefix}/{k}", c) for k, c in reversed(n.children.items()))
        return out
    # Post-order: (path, node, iterator over its children).
    it_stack: list[tuple[str, Node, Iterator[tuple[str, Node]]]] = [
        (path, node, iter(node.children.items() if node.children else ()))
    ]
    while it_stack:
        p, n, it = it_stack[-1]
        nxt = next(it, None)
        if nxt is None:
            it_stack.pop()
            out.append((p, n))
            continue
        k, c = nxt
        cp = f"/{k}" if p == "/" else f"{p}/{k}"
        it_stack.append((cp, c, iter(c.children.items() if c.children else ())))
    return out
