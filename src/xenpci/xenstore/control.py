"""XS_CONTROL commands (``tools/xenstore/xenstored_control.c``, Xen 4.17).

One row per command in :data:`COMMANDS`, in C's ``cmds[]`` order, so ``help``
lists what C lists (``live-update`` included) with C's parameter texts. The
argument checks are C's: the count of NULs in the payload is the argument
count (``xs_count_strings``), ``check``/``help`` take none, numbers are read
with C ``atoi``, and every refusal is EINVAL unless C says otherwise. Quotas
are listed in C's ``hard_quotas[]`` order with its descriptions.

Deliberate differences:

* ``logfile`` and ``memreport`` write only inside the directory the daemon was
  given (:func:`configure`, ``xenpci xenstored --control-dir``): a name outside
  it is EACCES, and without a directory ``logfile`` is EACCES. As in C,
  ``memreport`` with no log file set, or a file that cannot be opened, is
  EBADF, which C sends as EINVAL (EBADF is not in ``xsd_errors``). The log
  file receives ``print`` lines; C also traces every request there.
  ``memreport`` writes a short usage report, not talloc's tree.
* ``live-update`` keeps C's session rules and texts (``-f`` checks the file,
  ``-c``, ``-a``), but ``-s`` cannot replace this daemon's code: it ends the
  session and answers with a text saying so, where C would exec the new binary.
* ``quota <domid>`` shows ``memory`` as C counts ``domain->memory`` (nodes,
  watches, transactions, queued output) and ``outstanding`` as the replies
  the domain's connections have not yet had written to their peers.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xenpci.xenstore.errors import XsError
from xenpci.xenstore.tree import walk

if TYPE_CHECKING:
    from xenpci.xenstore.core import Connection, XenStore

OK = b"OK\0"

#: C's ``hard_quotas[]``: CONTROL ``quota`` name -> description, in C's order.
HARD_QUOTAS: dict[str, str] = {
    "nodes": "Nodes per domain",
    "watches": "Watches per domain",
    "transactions": "Transactions per domain",
    "outstanding": "Outstanding requests per domain",
    "transaction-nodes": "Max. number of accessed nodes per transaction",
    "memory": "Total Xenstore memory per domain (error level)",
    "node-size": "Max. size of a node",
    "path-max": "Max. length of a node path",
    "permissions": "Max. number of permissions per node",
}
#: C's ``soft_quotas[]`` (the key in ``store.quotas`` is ``memory-soft``).
SOFT_QUOTAS: dict[str, str] = {"memory": "Total Xenstore memory per domain (warning level)"}
SOFT_MEMORY_DEFAULT = 2097152  # quota_memory_per_domain_soft, 2 MB
LU_DEFAULT_TIMEOUT = 60


@dataclass(slots=True)
class _LiveUpdate:
    conn: Connection | None  # the connection that began it (``lu_status->conn``)
    filename: str
    cmdline: str | None = None


@dataclass(slots=True)
class _State:
    """Per-store CONTROL state: C's trace file, log switch and live-update session."""

    files_dir: str | None = None
    logfile: str | None = None
    logging: bool = True
    live_update: _LiveUpdate | None = None


_STATES: weakref.WeakKeyDictionary[XenStore, _State] = weakref.WeakKeyDictionary()


def _state(store: XenStore) -> _State:
    st = _STATES.get(store)
    if st is None:
        st = _STATES[store] = _State()
    return st


def configure(store: XenStore, files_dir: str | None) -> None:
    """Let ``logfile``/``memreport`` write inside ``files_dir`` (None: nowhere)."""
    _state(store).files_dir = os.path.realpath(files_dir) if files_dir is not None else None


def c_atoi(raw: bytes | str) -> int:
    """glibc ``atoi``: ``(int)strtol(s, NULL, 10)`` (spaces, a sign, digits; 0 if none)."""
    s = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    s = s.lstrip(" \t\n\v\f\r")
    sign = 1
    if s[:1] in ("+", "-"):
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    digits = ""
    for ch in s:
        if not "0" <= ch <= "9":
            break
        digits += ch
    value = sign * int(digits) if digits else 0
    value = max(-(1 << 63), min((1 << 63) - 1, value))  # strtol clamps to long
    value &= 0xFFFFFFFF  # then the cast to int keeps the low 32 bits
    return value - (1 << 32) if value & 0x80000000 else value


def _text(s: str) -> bytes:
    return s.encode() + b"\0"


# -- commands: (store, conn, args) -> reply payload ------------------------------------
Command = Callable[["XenStore", "Connection | None", list[str]], bytes]


def _check(store: XenStore, conn: Connection | None, args: list[str]) -> bytes:
    if args:
        raise XsError("EINVAL", "check takes no arguments")
    # check_store(): a full walk; every node must carry an owner entry.
    for _, node in walk("/", store.tree.root):
        if not node.perms.entries:
            raise XsError("EIO", "node without permissions")
    return OK


def _log(store: XenStore, conn: Connection | None, args: list[str]) -> bytes:
    if len(args) != 1 or args[0] not in ("on", "off"):
        raise XsError("EINVAL", "log on|off")
    _state(store).logging = args[0] == "on"
    return OK


def _live_update(store: XenStore, conn: Connection | None, args: list[str]) -> bytes:
    st = _state(store)
    lu = st.live_update
    if lu is not None and lu.conn is not None and lu.conn.closed:
        st.live_update = None  # the session was its connection's (a talloc child in C)
    if not args:
        raise XsError("EINVAL", "live-update needs a sub-operation")
    op = args[0]
    if op == "-a":
        if len(args) != 1:
            raise XsError("EINVAL", "live-update -a takes no argument")
        if st.live_update is None:
            return _text("No live-update session active.")
        st.live_update = None
        return OK
    if op == "-c":
        if len(args) != 2:
            raise XsError("EINVAL", "live-update -c <cmdline>")
        if st.live_update is None or st.live_update.conn is not conn:
            return _text("Not in live-update session.")
        st.live_update.cmdline = args[1]
        return OK
    if op == "-s":
        rest = args[1:]
        i = 0
        while i < len(rest):
            if rest[i] == "-t" and i < len(rest) - 1:
                i += 1
            elif rest[i] != "-F":
                raise XsError("EINVAL", "live-update -s [-F] [-t <timeout>]")
            i += 1
        if st.live_update is None or st.live_update.conn is not conn:
            return _text("Not in live-update session.")
        st.live_update = None
        return _text("Live update is not supported by this daemon.")
    if op == "-f" and len(args) == 2:
        # lu_binary(): the file must exist and be executable by someone.
        try:
            mode = os.stat(args[1]).st_mode
        except OSError:
            return _text("File not accessible.")
        if not mode & 0o111:
            return _text("File not executable.")
        if st.live_update is not None:
            return _text("live-update session already active.")
        st.live_update = _LiveUpdate(conn, args[1])
        return OK
    raise XsError("EINVAL", "unknown live-update sub-operation")  # lu_arch


def _allowed_file(store: XenStore, name: str) -> str:
    """``name`` inside the configured directory, or EACCES."""
    base = _state(store).files_dir
    if base is None:
        raise XsError("EACCES", "no directory configured for control files")
    path = os.path.realpath(os.path.join(base, name))
    if os.path.commonpath([base, path]) != base or path == base:
        raise XsError("EACCES", f"{name} is outside {base}")
    return path


def _append(path: str, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise XsError("EINVAL", f"cannot open {path}: {e.strerror}") from None
    with os.fdopen(fd, "a") as f:
        f.write(text)


def _logfile(store: XenStore, conn: Connection | None, args: list[str]) -> bytes:
    if len(args) != 1:
        raise XsError("EINVAL", "logfile <file>")
    path = _allowed_file(store, args[0])
    _append(path, "")  # reopen_log(): the file exists from now on
    _state(store).logfile = path
    return OK


def _memreport(store: XenStore, conn: Connection | None, args: list[str]) -> bytes:
    if len(args) > 1:
        raise XsError("EINVAL", "memreport [<file>]")
    if args:
        path = _allowed_file(store, args[0])
    else:
        logfile = _state(store).logfile
        if logfile is None:
            raise XsError("EINVAL", "no log file")
        path = logfile
    nodes = sum(1 for _ in walk("/", store.tree.root))
    lines = [
        f"xenstored memory report {time.strftime('%Y-%m-%d %H:%M:%S')}",
        f"nodes: {nodes}",
        f"connections: {len(store.connections)}",
    ]
    for domid in sorted(store.domains):
        lines.append(f"domain {domid}: " + _usage_line(store, domid))
    _append(path, "\n".join(lines) + "\n")
    return OK


def _print(store: XenStore, conn: Connection | None, args: list[str]) -> bytes:
    if len(args) != 1:
        raise XsError("EINVAL", "print <string>")
    store.log.append(args[0])
    st = _state(store)
    if st.logfile is not None and st.logging:
        _append(st.logfile, f"control: {args[0]}\n")
    return OK


def _show(store: XenStore, table: dict[str, str], soft: bool) -> bytes:
    lines = []
    for name, descr in table.items():
        value = _quota_value(store, name, soft)
        lines.append(f"{name:<17}: {value:8d} {descr}\n")
    return _text("Quota settings:\n" + "".join(lines))


def _quota_value(store: XenStore, name: str, soft: bool) -> int:
    if soft:
        return store.quotas.setdefault("memory-soft", SOFT_MEMORY_DEFAULT)
    return store.quotas[name]


def _quota_set(store: XenStore, args: list[str], table: dict[str, str], soft: bool) -> bytes:
    if len(args) != 2:
        raise XsError("EINVAL", "set <name> <val>")
    value = c_atoi(args[1])
    if value < 1:
        raise XsError("EINVAL", "quota must be >= 1")
    if args[0] not in table:
        raise XsError("EINVAL", f"no quota {args[0]!r}")
    store.quotas["memory-soft" if soft else args[0]] = value
    return OK


def _usage(store: XenStore, domid: int) -> dict[str, int]:
    nodes = store.tree.owned.get(domid, 0)
    watches = store.domain_watch_count.get(domid, 0)
    trans = sum(len(c.transactions) for c in store.connections if c.domid == domid)
    outstanding = sum(c.outstanding for c in store.connections if c.domid == domid)
    # C domain->memory: nodes, watches, transactions and the output queued for
    # its connections (every transport's queue is the store connection's).
    return {
        "nodes": nodes,
        "watches": watches,
        "transactions": trans,
        "outstanding": outstanding,
        "memory": store.memory_used(domid),
    }


def _usage_line(store: XenStore, domid: int) -> str:
    return " ".join(f"{k}={v}" for k, v in _usage(store, domid).items())


def _quota(store: XenStore, conn: Connection | None, args: list[str]) -> bytes:
    if not args:
        return _show(store, HARD_QUOTAS, False)
    if args[0] == "set":
        return _quota_set(store, args[1:], HARD_QUOTAS, False)
    if len(args) != 1:
        raise XsError("EINVAL", "quota <domid>")
    domid = c_atoi(args[0])
    if domid not in store.domains:
        raise XsError("ENOENT", f"domain {domid}")  # domain_get_quota
    usage = _usage(store, domid)
    text = f"Domain {domid}:\n" + "".join(f"{k:<16}: {v:8d}\n" for k, v in usage.items())
    return _text(text)


def _quota_soft(store: XenStore, conn: Connection | None, args: list[str]) -> bytes:
    if not args:
        return _show(store, SOFT_QUOTAS, True)
    if args[0] == "set":
        return _quota_set(store, args[1:], SOFT_QUOTAS, True)
    raise XsError("EINVAL", "quota-soft [set <name> <val>]")


def _help(store: XenStore, conn: Connection | None, args: list[str]) -> bytes:
    if args:
        raise XsError("EINVAL", "help takes no arguments")
    return _text("".join(f"{row.name}\t{row.params}\n" for row in COMMANDS))


@dataclass(frozen=True, slots=True)
class ControlCommand:
    """One row of C's ``cmds[]``: name, handler, parameter text, ``max_pars``."""

    name: str
    run: Command
    params: str
    max_pars: int = 0  # the command included; 0 = no limit


COMMANDS: tuple[ControlCommand, ...] = (
    ControlCommand("check", _check, ""),
    ControlCommand("log", _log, "on|off"),
    ControlCommand(
        "live-update",
        _live_update,
        "[-c <cmdline>] [-F] [-t <timeout>] <file>\n"
        f"    Default timeout is {LU_DEFAULT_TIMEOUT} seconds.",
        5,
    ),
    ControlCommand("logfile", _logfile, "<file>"),
    ControlCommand("memreport", _memreport, "[<file>]"),
    ControlCommand("print", _print, "<string>"),
    ControlCommand("quota", _quota, "[set <name> <val>|<domid>]"),
    ControlCommand("quota-soft", _quota_soft, "[set <name> <val>]"),
    ControlCommand("help", _help, ""),
)
_BY_NAME = {row.name: row for row in COMMANDS}


def do_control(store: XenStore, args: list[bytes], conn: Connection | None = None) -> bytes:
    """Run one CONTROL request; ``args`` are the payload's NUL-terminated strings."""
    if not args:
        raise XsError("EINVAL", "no control command")  # get_string() found no NUL
    row = _BY_NAME.get(args[0].decode("ascii", "replace"))
    if row is None:
        raise XsError("EINVAL", f"unknown control command {args[0]!r}")
    if row.max_pars:
        args = args[: row.max_pars]
    return row.run(store, conn, [a.decode("utf-8", "replace") for a in args[1:]])
