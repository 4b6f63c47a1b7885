"""``xenpci xenstored``: run the XenStore daemon in the foreground.

Serves :class:`xenpci.xenstore.XenStore` on a Unix socket that Debian's
``xenstore-utils`` and ``pyxs`` reach through ``XENSTORED_PATH``; SIGTERM or
SIGINT stops it cleanly (sockets unlinked). A socket that cannot be made (a
missing directory, a path longer than ``sun_path`` allows) is one line on
stderr and exit status 1, as C xenstored's ``barf_perror``; nothing is left
bound. ``--control-dir`` is the only place xenstore-control's ``logfile`` and
``memreport`` may write.

The daemon process tunes Python's cyclic garbage collector once its start-up
objects exist: they are frozen out of every later collection, and the
youngest generation runs after 20,000 net allocations instead of 700. Every
request allocates a few short-lived objects (its frame, its reply) that
reference counting frees; the default threshold made a gen-0 pass (and every
tenth one a gen-1 pass) a regular share of a request's cost, and a big store
made the rare full pass walk every node. Only this process: a library user's
collector settings are theirs.

Readiness: once its sockets are bound and its signal handlers are set, the
daemon sends ``READY=1`` to the service manager as C xenstored does
(``sd_notify(1, "READY=1")`` in ``xenstored_core.c``'s ``main`` after
``initialize_fds``): one datagram on the ``AF_UNIX`` socket named by
``$NOTIFY_SOCKET`` (an absolute path, or ``@name`` for the abstract
namespace), which is then removed from the environment (``unset_environment``
= 1). No ``NOTIFY_SOCKET``, or one that cannot be reached, changes nothing:
C ignores ``sd_notify``'s result too. Deliberate differences: libsystemd is
not used (the protocol is one datagram); C's ``SD_NOTICE "xenstored is
ready"`` stderr line is not printed (our own "listening on" line says it);
``vsock:`` addresses are not supported.
"""

from __future__ import annotations

import errno
import gc
import os
import signal
import socket
from types import FrameType
from typing import Annotated

import typer

from xenpci.xenstore import XenStore, control
from xenpci.xenstore.server import XenstoredServer


def _parse_domain_socket(spec: str) -> tuple[int, str]:
    domid, sep, path = spec.partition(":")
    if not sep or not domid.isdigit() or not path or int(domid) == 0 or int(domid) >= 0x7FF0:
        raise typer.BadParameter(f"expected DOMID:PATH with 0 < DOMID < 32752, got {spec!r}")
    return int(domid), path


def xenstored(
    socket_path: Annotated[
        str | None,
        typer.Option(
            "--socket", help="Socket path (default: $XENSTORED_PATH, else ./xenstored.sock)"
        ),
    ] = None,
    ro_socket: Annotated[
        str | None, typer.Option("--ro-socket", help="Read-only socket (writes get EROFS)")
    ] = None,
    domain_socket: Annotated[
        list[str] | None,
        typer.Option(
            "--domain-socket",
            help="DOMID:PATH, a socket whose clients act as unprivileged domain DOMID "
            "(test hook for permissions and quotas); repeatable",
        ),
    ] = None,
    control_dir: Annotated[
        str | None,
        typer.Option(
            "--control-dir",
            help="Directory where xenstore-control's logfile and memreport may write "
            "(default: none, they are refused)",
        ),
    ] = None,
) -> None:
    """Run a XenStore daemon (wire-compatible with C xenstored 4.17) in the foreground."""
    path = socket_path or os.environ.get("XENSTORED_PATH") or "xenstored.sock"
    domains = dict(_parse_domain_socket(s) for s in domain_socket or [])
    store = XenStore()
    if control_dir is not None:
        if not os.path.isdir(control_dir):
            typer.echo(f"xenstored: --control-dir {control_dir}: not a directory", err=True)
            raise typer.Exit(1)
        control.configure(store, control_dir)
    # One thread serves every socket: the only caller of the store.
    server = XenstoredServer(store, path, ro_socket, domains, sole_user=True)
    _tune_gc()
    try:
        server.start()
    except OSError as e:
        # C xenstored: barf_perror("Could not bind socket ...") and exit 1.
        where = e.filename or path
        typer.echo(f"xenstored: cannot listen on {where}: {e.strerror or e}", err=True)
        raise typer.Exit(1) from None

    def _stop(signum: int, frame: FrameType | None) -> None:
        server.request_stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    typer.echo(f"xenstored: listening on {path}", err=True)
    sd_notify("READY=1")
    try:
        server.serve_forever()
    finally:
        server.stop()
        typer.echo("xenstored: stopped", err=True)


def sd_notify(state: str) -> int:
    """``sd_notify(1, state)``: tell the service manager ``state``.

    Returns what libsystemd's does: 1 once sent, 0 without ``NOTIFY_SOCKET``,
    a negative errno when it could not be sent (``-EINVAL`` for an address
    that is neither absolute nor abstract, as for libsystemd 252). Whatever the outcome
    ``NOTIFY_SOCKET`` is gone from the environment afterwards, so nothing this
    process starts notifies in its name.
    """
    address = os.environ.pop("NOTIFY_SOCKET", None)
    if address is None:
        return 0
    # sun_path is 108 bytes: a path needs its terminating NUL, an abstract name its
    # leading one and (as libsystemd counts) a spare byte.
    name = os.fsencode(address)
    if address.startswith("/"):
        if len(name) > 107:
            return -errno.ENAMETOOLONG
        target = address
    elif address.startswith("@") and 1 < len(name) <= 107:
        target = "\0" + address[1:]  # Linux abstract namespace
    else:
        return -errno.EINVAL
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), target)
    except OSError as e:
        return -(e.errno or errno.EIO)  # no manager listening: the daemon runs on regardless
    return 1


#: Gen-0 threshold in the daemon (CPython's default is 700); see the docstring.
GC_GEN0 = 20_000


def _tune_gc() -> None:
    gc.collect()
    gc.freeze()  # start-up objects (modules, typer's app) are never garbage
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0, gen1, gen2)


def register(app: typer.Typer) -> None:
    """Add ``xenstored`` to the ``xenpci`` app."""
    app.command("xenstored")(xenstored)
