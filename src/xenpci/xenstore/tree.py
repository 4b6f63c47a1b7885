"""The XenStore tree: nodes, paths, and path-copying updates.

Models the node database of C xenstored (``xenstored_core.c``: ``struct node``,
``is_valid_nodename``, ``canonicalize``, ``get_implicit_path``). Deliberate
difference: C keeps one mutable hash table plus per-transaction copies of
touched records; we keep an immutable tree and update it by path copying, so a
transaction's snapshot of the whole store is one pointer (oxenstored takes the
same approach). Every change stamps the changed node with a fresh global
generation; a parent whose child list changes is stamped too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from xenpci.abi.xs_wire import XENSTORE_REL_PATH_MAX
from xenpci.xenstore.errors import XsError
from xenpci.xenstore.perms import Perms

# C ``valid_chars``: the only bytes a path may hold (pyxs uses the same set).
VALID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-/_@")
_VALID = re.compile(r"[A-Za-z0-9/_@-]+\Z")
LOCAL_DOMAIN = "/local/domain/"
# The special watch nodes 4.17 knows; other "@" names only ever match nothing.
SPECIAL_NODES = ("@introduceDomain", "@releaseDomain")

_NO_CHILDREN: dict[str, Node] = {}  # shared by every leaf; never mutated


class Node:
    """One node: value bytes, ACL, ordered children, generation.

    Treated as immutable (never assigned after construction); a plain slotted
    class rather than a frozen dataclass because the store makes one per
    update and per node, and frozen-dataclass construction costs twice as much.
    """

    __slots__ = ("children", "gen", "perms", "value")

    def __init__(
        self, value: bytes, perms: Perms, gen: int, children: dict[str, Node] | None = None
    ) -> None:
        self.value = value
        self.perms = perms
        self.gen = gen
        self.children: dict[str, Node] = children if children else _NO_CHILDREN

    def child_names(self) -> bytes:
        """The child-name blob ``"a\\0b\\0"`` (DIRECTORY's reply, in insertion order)."""
        return b"".join(n.encode() + b"\0" for n in self.children)

    def record_size(self) -> int:
        """C's node record size for the ``node-size`` quota.

        24-byte record header, 8 bytes per permission, the value and the
        NUL-terminated child names (so 2015 value bytes fit with one perm).
        """
        return (
            24
            + 8 * len(self.perms.entries)
            + len(self.value)
            + sum(len(n) + 1 for n in self.children)
        )


def split(path: str) -> list[str]:
    """Components of a canonical absolute path ("/" has none)."""
    return [] if path == "/" else path[1:].split("/")


def parent_of(path: str) -> str:
    """Parent of a canonical path other than "/"."""
    i = path.rfind("/")
    return "/" if i == 0 else path[:i]


def ancestors(path: str) -> Iterator[str]:
    """``path`` and each ancestor up to and including "/" (watch matching)."""
    yield path
    while path != "/":
        path = parent_of(path)
        yield path


def implicit_path(domid: int) -> str:
    """``get_implicit_path``: where relative paths of ``domid`` are rooted."""
    return f"{LOCAL_DOMAIN}{domid}"


def _len_for_quota(path: str) -> int:
    """Length checked against ``path-max``: the part after ``/local/domain/<N>/``."""
    if path.startswith(LOCAL_DOMAIN):
        rest = path[len(LOCAL_DOMAIN) :]
        i = 0
        while i < len(rest) and rest[i].isdigit():
            i += 1
        if i and (i == len(rest) or rest[i] == "/"):
            return len(rest[i + 1 :])
    return len(path)


def canonicalize(
    raw: bytes, domid: int, *, allow_special: bool = False, path_max: int = XENSTORE_REL_PATH_MAX
) -> str:
    """Validate a request path and make it absolute (C ``canonicalize`` + checks).

    Relative paths are rooted at ``/local/domain/<domid>``. Bad characters,
    ``//``, a trailing ``/``, the empty path and over-long paths are EINVAL; so
    is an ``@`` name where the operation does not take one. ``path_max`` is the
    store's ``path-max`` quota (C ``quota_max_path_len``), which binds dom0 too.
    """
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise XsError("EINVAL", "path is not ASCII") from None
    if not text:
        raise XsError("EINVAL", "empty path")
    if text[0] == "@":
        if not allow_special:
            raise XsError("EINVAL", f"special path {text[:40]!r} not allowed here")
        if len(text) > XENSTORE_REL_PATH_MAX or not _VALID.match(text):
            raise XsError("EINVAL", "bad special path")
        return text
    path = text if text[0] == "/" else f"{implicit_path(domid)}/{text}"
    if not _VALID.match(path):
        raise XsError("EINVAL", "invalid character in path")
    if "//" in path or (path != "/" and path.endswith("/")):
        raise XsError("EINVAL", "empty path component")
    if _len_for_quota(path) > path_max:
        raise XsError("EINVAL", "path too long")
    return path


def watch_path_for(path: str, relative_to: str | None) -> str:
    """The event path reported to a watch registered relative to ``relative_to``."""
    if relative_to is not None and path.startswith(relative_to + "/"):
        return path[len(relative_to) + 1 :]
    return path


class Tree:
    """A handle on a root that is updated by path copying.

    ``owned`` counts nodes per owner domid: absolute for the live tree, a
    delta for a transaction's private tree (quotas add the two).
    """

    __slots__ = ("gen_source", "owned", "root")

    def __init__(self, root: Node, gen_source: list[int], owned: dict[int, int] | None = None):
        self.root = root
        self.gen_source = gen_source  # one-element list: shared global generation counter
        self.owned = owned if owned is not None else {}

    def next_gen(self) -> int:
        self.gen_source[0] += 1
        return self.gen_source[0]

    def get(self, path: str) -> Node | None:
        node: Node | None = self.root
        for name in split(path):
            assert node is not None
            node = node.children.get(name)
            if node is None:
                return None
        return node

    def nearest(self, path: str) -> tuple[str, Node]:
        """The deepest existing node on ``path`` (itself if it exists) and its path."""
        node = self.root
        at = "/"
        for name in split(path):
            child = node.children.get(name)
            if child is None:
                break
            node = child
            at = f"{at}{name}" if at == "/" else f"{at}/{name}"
        return at, node

    def _replace(self, names: list[str], new: Node | None, parent_gen: bool) -> None:
        """Put ``new`` at ``names`` (None removes it), copying every ancestor.

        ``parent_gen``: the parent's child list changes, so it gets a new generation.
        """
        chain = [self.root]
        for name in names[:-1]:
            chain.append(chain[-1].children[name])
        child: Node | None = new
        for depth in range(len(names) - 1, -1, -1):
            parent = chain[depth]
            kids = dict(parent.children)
            name = names[depth]
            if child is None:
                del kids[name]
            else:
                kids[name] = child
            gen = parent.gen
            if depth == len(names) - 1 and parent_gen:
                gen = self.next_gen()
            child = Node(parent.value, parent.perms, gen, kids or _NO_CHILDREN)
        assert child is not None
        self.root = child

    def _count(self, owner: int, delta: int) -> None:
        self.owned[owner] = self.owned.get(owner, 0) + delta

    def set_value(self, path: str, value: bytes) -> None:
        """Replace an existing node's value (new generation)."""
        old = self.get(path)
        assert old is not None
        new = Node(value, old.perms, self.next_gen(), old.children)
        if path == "/":
            self.root = new
        else:
            self._replace(split(path), new, parent_gen=False)

    def set_perms(self, path: str, perms: Perms) -> None:
        old = self.get(path)
        assert old is not None
        self._count(old.perms.owner, -1)
        self._count(perms.owner, +1)
        new = Node(old.value, perms, self.next_gen(), old.children)
        if path == "/":
            self.root = new
        else:
            self._replace(split(path), new, parent_gen=False)

    def create(self, path: str, value: bytes, perms: Perms) -> None:
        """Add a new leaf under an existing parent."""
        self._count(perms.owner, +1)
        self._replace(split(path), Node(value, perms, self.next_gen()), parent_gen=True)

    def remove(self, path: str) -> list[tuple[str, Node]]:
        """Delete ``path`` and its subtree; return the removed nodes, children first."""
        node = self.get(path)
        assert node is not None and path != "/"
        removed = list(walk(path, node, post_order=True))
        for _, n in removed:
            self._count(n.perms.owner, -1)
        self._replace(split(path), None, parent_gen=True)
        return removed


def walk(path: str, node: Node, *, post_order: bool = False) -> list[tuple[str, Node]]:
    """Every (path, node) of a subtree, parents first or (post_order) children first.

    Iterative: a path of 2048 bytes can be 1024 levels deep, past Python's recursion limit.
    """
    out: list[tuple[str, Node]] = []
    stack = [(path, node)]
    while stack:
        p, n = stack.pop()
        out.append((p, n))
        prefix = "" if p == "/" else p
        stack.extend((f"{prefix}/{name}", c) for name, c in reversed(n.children.items()))
    if post_order:
        # Reversed pre-order visits every child before its parent.
        out.reverse()
    return out
