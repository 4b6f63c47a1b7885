"""XenStore node permissions: the ``<letter><domid>`` lists of ``xenstore.txt``.

Mirrors ``struct xs_permissions`` and ``xs_strings_to_perms``/``xs_perm_to_string``
(``tools/xenstore/xs_lib.c``): entry 0 names the owner and the access of every
domain without an entry of its own; later entries grant per domain. Letters:
``n`` none, ``r`` read, ``w`` write, ``b`` both. Duplicates are kept verbatim,
as the C server keeps them.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass

from xenpci.xenstore.errors import XsError

DOMID_MAX = 0x7FFF  # domid_t is 16 bits; DOMID_FIRST_RESERVED is 0x7ff0


class Access(enum.IntFlag):
    """``XS_PERM_READ``/``XS_PERM_WRITE`` bits (``n`` is neither)."""

    NONE = 0
    READ = 1
    WRITE = 2
    BOTH = 3


def _strtol0(s: str) -> int | None:
    """C ``strtol(s, &end, 0)`` requiring ``*end == 0`` and a non-empty ``s``; None if not."""
    if not s:
        return None
    i, n = 0, len(s)
    while i < n and s[i] in " \t\n\v\f\r":
        i += 1
    neg = False
    if i < n and s[i] in "+-":
        neg = s[i] == "-"
        i += 1
    base = 10
    if s[i : i + 2] in ("0x", "0X") and i + 2 < n and s[i + 2] in _HEX:
        base, i = 16, i + 2
    elif s[i : i + 1] == "0":
        base = 8
    digits = s[i:]
    if not digits or any(c not in _HEX[: base if base != 16 else 22] for c in digits):
        return None
    v = int(digits, base)
    v = -v if neg else v
    return max(-(1 << 63), min((1 << 63) - 1, v))  # LONG_MIN/LONG_MAX


_HEX = "0123456789abcdefABCDEF"
_LETTER_TO_ACCESS = {"n": Access.NONE, "r": Access.READ, "w": Access.WRITE, "b": Access.BOTH}
_ACCESS_TO_LETTER = {v: k for k, v in _LETTER_TO_ACCESS.items()}


@dataclass(frozen=True, slots=True)
class Perm:
    """One entry: a domain and its access, wire form ``"r5"``."""

    domid: int
    access: Access
    # C ``XS_PERM_IGNORE``: the entry names a domain that does not exist (or
    # did not when the ACL was set); ACL checks skip it; GET_PERMS does not show the flag.
    ignore: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.domid <= 0xFFFFFFFF:
            raise ValueError(f"domid {self.domid} out of range")

    @classmethod
    def parse(cls, text: str) -> Perm:
        """Parse ``"b0"`` as ``xs_strings_to_perms`` does; EINVAL for a bad string.

        The domid goes through ``strtol(p, &end, 0)`` into an unsigned int, so
        ``r0x10`` is ``r16``, ``r010`` is ``r8`` and ``r-1`` is 0xffffffff.
        """
        if not text or text[0] not in _LETTER_TO_ACCESS:
            raise XsError("EINVAL", f"bad permission {text[:20]!r}")
        domid = _strtol0(text[1:])
        if domid is None:
            raise XsError("EINVAL", f"bad permission {text[:20]!r}")
        return cls(domid & 0xFFFFFFFF, _LETTER_TO_ACCESS[text[0]])

    def __str__(self) -> str:
        # xs_perm_to_string prints the unsigned id with "%i".
        d = self.domid - (1 << 32) if self.domid >= 1 << 31 else self.domid
        return f"{_ACCESS_TO_LETTER[self.access]}{d}"


@dataclass(frozen=True, slots=True)
class Perms:
    """A node's ACL: owner entry first, then per-domain grants (at least one entry)."""

    entries: tuple[Perm, ...]

    def __post_init__(self) -> None:
        if not self.entries:
            raise ValueError("a permission list needs at least the owner entry")

    @classmethod
    def of(cls, *texts: str) -> Perms:
        """``Perms.of("n0", "r5")``."""
        return cls(tuple(Perm.parse(t) for t in texts))

    @classmethod
    def owner_only(cls, domid: int, access: Access = Access.NONE) -> Perms:
        return cls((Perm(domid, access),))

    @classmethod
    def from_wire(cls, payload: bytes) -> Perms:
        """Parse ``"n0\\0r5\\0"`` (each entry NUL-terminated); EINVAL if empty or bad.

        Interned: every node carrying the same ACL shares one object.
        """
        return _from_wire(payload)

    @classmethod
    def _parse_wire(cls, payload: bytes) -> Perms:
        parts = payload.split(b"\0")
        if parts[-1] != b"":
            raise XsError("EINVAL", "permission list not NUL-terminated")
        parts = parts[:-1]
        if not parts:
            raise XsError("EINVAL", "empty permission list")
        try:
            texts = [p.decode("ascii") for p in parts]
        except UnicodeDecodeError:
            raise XsError("EINVAL", "non-ASCII permission") from None
        return cls(tuple(Perm.parse(t) for t in texts))

    def to_wire(self) -> bytes:
        """``"n0\\0r5\\0"``, the GET_PERMS reply form."""
        return b"".join(str(p).encode() + b"\0" for p in self.entries)

    @property
    def owner(self) -> int:
        return self.entries[0].domid

    def access_for(self, domid: int) -> Access:
        """Access of unprivileged ``domid`` (``perm_for_conn`` steps 2-4)."""
        if domid == self.owner:
            return Access.BOTH
        for p in self.entries[1:]:
            if p.domid == domid and not p.ignore:
                return p.access
        return self.entries[0].access

    def with_owner(self, domid: int) -> Perms:
        """The same list with entry 0's domid replaced (new nodes of an unprivileged creator)."""
        return _with_owner(self, domid)

    def with_ignored(self, exists: Callable[[int], bool]) -> Perms:
        """C ``domain_alloc_permrefs``: mark entries of nonexistent domains IGNORE."""
        if all(exists(p.domid) for p in self.entries):
            return self
        return Perms(
            tuple(p if exists(p.domid) else Perm(p.domid, p.access, True) for p in self.entries)
        )

    def __str__(self) -> str:
        return " ".join(str(p) for p in self.entries)


@functools.lru_cache(maxsize=4096)
def _from_wire(payload: bytes) -> Perms:
    return Perms._parse_wire(payload)


@functools.lru_cache(maxsize=4096)
def _with_owner(perms: Perms, domid: int) -> Perms:
    first = perms.entries[0]
    return Perms((Perm(domid, first.access, first.ignore), *perms.entries[1:]))
