"""XS_CONTROL commands (``xenstored_control.c``, Xen 4.17).

Covers what ``xenstore-control`` uses outside live update: ``help``, ``check``,
``log``, ``logfile``, ``memreport``, ``print``, ``quota`` (show, ``set``,
per-domain) and ``quota-soft``. Unknown commands get EINVAL, as in C.
Deliberate difference: ``print`` and ``log`` go to an in-memory log list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xenpci.xenstore.domain import QUOTA_HELP
from xenpci.xenstore.errors import XsError
from xenpci.xenstore.tree import walk

if TYPE_CHECKING:
    from xenpci.xenstore.core import XenStore

OK = b"OK\0"

_HELP = (
    ("check", ""),
    ("log", "on|off"),
    ("logfile", "<file>"),
    ("memreport", "[<file>]"),
    ("print", "<string>"),
    ("quota", "[set <name> <val>|<domid>]"),
    ("quota-soft", "[set <name> <val>]"),
    ("help", "<cmd>"),
)


def _text(s: str) -> bytes:
    return s.encode() + b"\0"


def do_control(store: XenStore, args: list[bytes]) -> bytes:
    """Run one CONTROL command; ``args[0]`` is the command name."""
    if not args:
        raise XsError("EINVAL", "no control command")
    cmd = args[0].decode("ascii", "replace")
    rest = [a.decode("ascii", "replace") for a in args[1:]]
    if cmd == "help":
        return _text("".join(f"{name}\t{syntax}\n" for name, syntax in _HELP))
    if cmd == "check":
        # A full walk: every child reachable, every node with an owner entry.
        for _, node in walk("/", store.tree.root):
            if not node.perms.entries:
                raise XsError("EIO", "node without permissions")
        return OK
    if cmd in ("log", "logfile", "memreport"):
        if cmd == "log" and (len(rest) != 1 or rest[0] not in ("on", "off")):
            raise XsError("EINVAL", "log on|off")
        return OK
    if cmd == "print":
        if len(rest) != 1:
            raise XsError("EINVAL", "print <string>")
        store.log.append(rest[0])
        return OK
    if cmd == "quota":
        return _quota(store, rest)
    if cmd == "quota-soft":
        if not rest:
            return _text("Quota settings:\n" + _line("memory", 2097152, "Soft memory quota"))
        raise XsError("EINVAL", "soft quota is fixed")
    raise XsError("EINVAL", f"unknown control command {cmd!r}")


def _line(name: str, value: int, help_: str) -> str:
    return f"{name:<17}: {value:8d} {help_}\n"


def _quota(store: XenStore, rest: list[str]) -> bytes:
    if not rest:
        lines = [_line(n, v, QUOTA_HELP[n]) for n, v in store.quotas.items()]
        return _text("Quota settings:\n" + "".join(lines))
    if rest[0] == "set":
        if len(rest) != 3 or rest[1] not in store.quotas or not rest[2].isdigit():
            raise XsError("EINVAL", "quota set <name> <val>")
        value = int(rest[2])
        if value < 1:
            raise XsError("EINVAL", "quota must be >= 1")
        store.quotas[rest[1]] = value
        return OK
    if len(rest) != 1 or not rest[0].isdigit():
        raise XsError("EINVAL", "quota <domid>")
    domid = int(rest[0])
    if domid not in store.domains:
        raise XsError("ENOENT", f"domain {domid}")
    nodes = store.tree.owned.get(domid, 0)
    watches = store.domain_watch_count.get(domid, 0)
    trans = sum(len(c.transactions) for c in store.connections if c.domid == domid)
    text = f"Domain {domid}:\n" + "".join(
        f"{k:<16}: {v:8d}\n"
        for k, v in (
            ("nodes", nodes),
            ("watches", watches),
            ("transactions", trans),
            ("outstanding", 0),
            ("memory", 0),
        )
    )
    return _text(text)
