"""libxl's XenStore layout for PCI passthrough to PV guests.

Mirrors ``tools/libs/light/libxl_pci.c``: ``libxl__create_pci_backend``,
``libxl_create_pci_backend_device``, ``libxl__device_pci_add_xenstore``,
``libxl__device_pci_remove_xenstore`` and the ``/libxl/pci/<bdf>`` bookkeeping
(fact sheet pciback.md §3.2, §3.5, §3.6).

The layout itself is sans-IO: ``*_ops`` functions turn a request (and, for
removal, a snapshot of the backend directory) into a list of XenStore
operations; the thin functions below apply them inside one transaction of any
client that offers read/write/ls/rm/mkdir/set_perms/transaction (an
``xenpci.xenstore.client.XsClient`` or one of its transactions).

Deliberate differences from libxl:
- waiting for the backend's ``state`` is a XenStore watch with a timeout and a
  :class:`BackendStateTimeout` naming the path, the wanted and the last seen
  state (libxl uses an event-loop devstate watch with a 10 s timeout and logs);
- libxl also writes its ``/libxl/<domid>/device/pci/0`` copy of the device and
  the domain's JSON config; we keep neither (the machine holds the config).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from xenpci.abi.xenbus import XenbusState
from xenpci.pci.address import SBDF
from xenpci.toolstack.errors import (
    BackendMissing,
    BackendStateTimeout,
    DeviceNotAttached,
    DomainGone,
    LibxlErrorCode,
    ToolstackError,
)
from xenpci.xenbus import pci_keys
from xenpci.xenstore.errors import ConnectionClosed, XsError
from xenpci.xenstore.perms import Access, Perm, Perms

DEFAULT_TIMEOUT = 10.0  # libxl's LIBXL_DEVICE_MODEL_START_TIMEOUT-style backend wait, seconds
# Per-device key families (``libxl__device_pci_remove_xenstore``): the first three always
# exist for a device and always move on compaction; the rest move only if present.
_ALWAYS_KEYS = ("state", "dev", "key")
_OPTIONAL_KEYS = ("vdev", "opts", "vdevfn", "name")
RDM_POLICIES = ("strict", "relaxed")


# --------------------------------------------------------------------- client protocol


class XsOps(Protocol):
    """The XenStore operations the layout needs (a client or one of its transactions)."""

    def read(self, path: str) -> bytes: ...
    def write(self, path: str, value: bytes | str) -> None: ...
    def ls(self, path: str) -> list[str]: ...
    def rm(self, path: str) -> None: ...
    def mkdir(self, path: str) -> None: ...
    def set_perms(self, path: str, perms: Perms) -> None: ...


class XsClientLike(XsOps, Protocol):
    """A client that can also open transactions and watch nodes."""

    def transaction(self) -> AbstractContextManager[Any]: ...


# --------------------------------------------------------------------- values and paths


def backend_path(domid: int) -> str:
    """``/local/domain/0/backend/pci/<domid>/0`` (backend always dom0, devid always 0)."""
    return pci_keys.backend_path(domid)


def frontend_path(domid: int) -> str:
    """``/local/domain/<domid>/device/pci/0``."""
    return pci_keys.frontend_path(domid)


def libxl_pci_path(sbdf: SBDF) -> str:
    """libxl's private ``/libxl/pci/DDDD-BB-SS-F`` directory (dashes, not colons)."""
    return f"/libxl/pci/{sbdf.segment:04x}-{sbdf.bus:02x}-{sbdf.device:02x}-{sbdf.function:x}"


@dataclass(frozen=True, slots=True)
class PciBackendDevice:
    """One device as libxl records it in the backend (``libxl_device_pci``, PV subset)."""

    sbdf: SBDF
    vdevfn: int = 0
    name: str | None = None
    msitranslate: bool = False
    power_mgmt: bool = False
    permissive: bool = False
    rdm_policy: str = "strict"

    def __post_init__(self) -> None:
        if not 0 <= self.vdevfn <= 0xFF:
            raise ValueError(f"vdevfn 0x{self.vdevfn:x} not in 0..0xff")
        if self.rdm_policy not in RDM_POLICIES:
            raise ValueError(f"rdm_policy {self.rdm_policy!r} not one of {RDM_POLICIES}")
        if self.name is not None and (
            not self.name
            or len(self.name) > 64
            or not all(c.isprintable() and not c.isspace() for c in self.name)
        ):
            raise ValueError(f"device name {self.name!r}: 1..64 graphic characters")

    @property
    def opts(self) -> str:
        """The ``opts-N`` string, in libxl's field order."""
        return (
            f"msitranslate={int(self.msitranslate)},power_mgmt={int(self.power_mgmt)},"
            f"permissive={int(self.permissive)},rdm_policy={self.rdm_policy}"
        )


@dataclass(frozen=True, slots=True)
class PciBackendEntry:
    """A device read back from the backend directory (``libxl_device_pci_list``)."""

    index: int
    sbdf: SBDF
    vdevfn: int
    name: str | None
    opts: str | None
    state: int | None


# --------------------------------------------------------------------- sans-IO operations


@dataclass(frozen=True, slots=True)
class XsWrite:
    path: str
    value: str


@dataclass(frozen=True, slots=True)
class XsMkdir:
    path: str


@dataclass(frozen=True, slots=True)
class XsRm:
    path: str


@dataclass(frozen=True, slots=True)
class XsPathCleanup:
    """``libxl__xs_path_cleanup``: remove ``path``, then each parent left empty.

    A parent goes only while its value is empty and it has no children
    (``xenstore-rm -t``); the walk stops at the first one that is kept, or at
    once if ``path`` did not exist.
    """

    path: str


@dataclass(frozen=True, slots=True)
class XsSetPerms:
    path: str
    perms: Perms


XsOp = XsWrite | XsMkdir | XsRm | XsPathCleanup | XsSetPerms


def backend_perms(domid: int) -> Perms:
    """Backend dir: owner dom0, nobody else, plus read for the guest."""
    return Perms((Perm(0, Access.NONE), Perm(domid, Access.READ)))


def frontend_perms(domid: int) -> Perms:
    """Frontend dir: owner the guest, nobody else, plus read for dom0 (the backend domain)."""
    return Perms((Perm(domid, Access.NONE), Perm(0, Access.READ)))


def create_backend_ops(domid: int, domain_name: str) -> list[XsOp]:
    """``libxl__create_pci_backend``: fresh backend and frontend dirs, state 1 on both."""
    be, fe = backend_path(domid), frontend_path(domid)
    init = str(int(XenbusState.XenbusStateInitialising))
    return [
        XsRm(be),
        XsMkdir(be),
        XsSetPerms(be, backend_perms(domid)),
        XsWrite(f"{be}/frontend", fe),
        XsWrite(f"{be}/frontend-id", str(domid)),
        XsWrite(f"{be}/online", "1"),
        XsWrite(f"{be}/state", init),
        XsWrite(f"{be}/domain", domain_name),
        XsRm(fe),
        XsMkdir(fe),
        XsSetPerms(fe, frontend_perms(domid)),
        XsWrite(f"{fe}/backend", be),
        XsWrite(f"{fe}/backend-id", "0"),
        XsWrite(f"{fe}/state", init),
    ]


def add_device_ops(domid: int, index: int, dev: PciBackendDevice) -> list[XsOp]:
    """``libxl_create_pci_backend_device`` for index N, then ``num_devs`` = N+1."""
    if index < 0:
        raise ValueError(f"device index {index} < 0")
    be = backend_path(domid)
    s = dev.sbdf
    bdf = pci_keys.format_dev(s.segment, s.bus, s.device, s.function)
    ops: list[XsOp] = [
        XsWrite(f"{be}/key-{index}", bdf),
        XsWrite(f"{be}/{pci_keys.dev_key(index)}", bdf),
    ]
    if dev.vdevfn:
        ops.append(XsWrite(f"{be}/vdevfn-{index}", f"{dev.vdevfn:x}"))
    if dev.name is not None:
        ops.append(XsWrite(f"{be}/name-{index}", dev.name))
    ops += [
        XsWrite(f"{be}/opts-{index}", dev.opts),
        XsWrite(f"{be}/{pci_keys.state_key(index)}", str(int(XenbusState.XenbusStateInitialising))),
        XsWrite(f"{be}/num_devs", str(index + 1)),
    ]
    return ops


def mark_closing_ops(domid: int, index: int) -> list[XsOp]:
    """First half of removal: ``state-i`` = 5 (Closing) and backend ``state`` = 7."""
    be = backend_path(domid)
    return [
        XsWrite(f"{be}/{pci_keys.state_key(index)}", str(int(XenbusState.XenbusStateClosing))),
        XsWrite(f"{be}/state", str(int(XenbusState.XenbusStateReconfiguring))),
    ]


def remove_device_ops(domid: int, backend: Mapping[str, str], index: int) -> list[XsOp]:
    """Delete device ``index`` and compact the indices above it down by one.

    ``backend`` maps the backend directory's key names to values (a snapshot read
    in the same transaction). Raises ``ValueError`` if ``num_devs`` is missing or
    ``index`` is not below it.
    """
    be = backend_path(domid)
    num = _num_devs(backend)
    if not 0 <= index < num:
        raise ValueError(f"device index {index} not in 0..{num - 1}")
    ops: list[XsOp] = [XsRm(f"{be}/{k}-{index}") for k in (*_ALWAYS_KEYS, *_OPTIONAL_KEYS)]
    for j in range(index + 1, num):
        for k in (*_ALWAYS_KEYS, *_OPTIONAL_KEYS):
            src = f"{k}-{j}"
            if src in backend:
                ops.append(XsWrite(f"{be}/{k}-{j - 1}", backend[src]))
                ops.append(XsRm(f"{be}/{src}"))
            elif k in _ALWAYS_KEYS:
                # libxl moves these unconditionally; a missing one is a broken backend.
                raise ValueError(f"backend lacks {src} below num_devs={num}")
    ops.append(XsWrite(f"{be}/num_devs", str(num - 1)))
    return ops


def destroy_ops(domid: int) -> list[XsOp]:
    """``libxl__device_destroy``: remove both ends' directories and the parents left empty.

    (``backend/pci/<domid>`` would otherwise outlive the guest.)
    """
    return [XsPathCleanup(frontend_path(domid)), XsPathCleanup(backend_path(domid))]


def _num_devs(backend: Mapping[str, str]) -> int:
    raw = backend.get("num_devs")
    if raw is None:
        raise ValueError("backend has no num_devs")
    try:
        num = int(raw)
    except ValueError:
        raise ValueError(f"num_devs {raw!r} is not a number") from None
    if num < 0:
        raise ValueError(f"num_devs {num} < 0")
    return num


def parse_backend(backend: Mapping[str, str]) -> list[PciBackendEntry]:
    """The devices a backend snapshot lists, in index order (``libxl_device_pci_list``).

    An entry whose ``dev-N`` is missing or malformed is skipped, as libxl's list
    skips what ``sscanf`` cannot parse.
    """
    if "num_devs" not in backend:
        return []
    out: list[PciBackendEntry] = []
    for i in range(_num_devs(backend)):
        raw = backend.get(pci_keys.dev_key(i))
        if raw is None:
            continue
        try:
            sbdf = SBDF.parse(raw)
            vdevfn = int(backend.get(f"vdevfn-{i}", "0"), 16)
        except ValueError:  # AddressError is a ValueError too
            continue
        state_raw = backend.get(pci_keys.state_key(i))
        out.append(
            PciBackendEntry(
                index=i,
                sbdf=sbdf,
                vdevfn=vdevfn,
                name=backend.get(f"name-{i}"),
                opts=backend.get(f"opts-{i}"),
                state=int(state_raw) if state_raw is not None and state_raw.isdigit() else None,
            )
        )
    return out


def apply_ops(xs: XsOps, ops: Iterable[XsOp]) -> None:
    """Apply planned operations in order. ``rm`` of a missing node is not an error here."""
    for op in ops:
        match op:
            case XsWrite(path, value):
                xs.write(path, value)
            case XsMkdir(path):
                xs.mkdir(path)
            case XsRm(path):
                try:
                    xs.rm(path)
                except XsError as e:
                    if e.code != "ENOENT":
                        raise
            case XsPathCleanup(path):
                _path_cleanup(xs, path)
            case XsSetPerms(path, perms):
                xs.set_perms(path, perms)


def _path_cleanup(xs: XsOps, path: str) -> None:
    try:
        xs.rm(path)
    except XsError as e:
        if e.code != "ENOENT":
            raise
        return  # libxl: nothing removed, no parent is touched
    parent = path.rstrip("/")
    while True:
        parent = parent.rpartition("/")[0]
        if not parent:
            return
        value = read_opt(xs, parent)
        if value is None or value != "" or xs.ls(parent):
            return
        xs.rm(parent)


# --------------------------------------------------------------------- thin IO shell

T = TypeVar("T")
_TX_RETRIES = 16


def in_transaction(xs: XsClientLike, fn: Callable[[XsOps], T]) -> T:
    """Run ``fn`` in a transaction, retrying on EAGAIN as libxl's transaction loops do."""
    for _ in range(_TX_RETRIES):
        try:
            with xs.transaction() as t:
                result = fn(t)
            return result
        except XsError as e:
            if e.code != "EAGAIN":
                raise
    raise ToolstackError(
        f"XenStore transaction still conflicting after {_TX_RETRIES} tries",
        LibxlErrorCode.ERROR_FAIL,
    )


def read_opt(xs: XsOps, path: str) -> str | None:
    """Read ``path`` as text, ``None`` if it does not exist."""
    try:
        return xs.read(path).decode()
    except XsError as e:
        if e.code == "ENOENT":
            return None
        raise


def read_dir(xs: XsOps, path: str) -> dict[str, str]:
    """Snapshot a directory's leaf values (``{}`` if absent)."""
    try:
        names = xs.ls(path)
    except XsError as e:
        if e.code == "ENOENT":
            return {}
        raise
    out: dict[str, str] = {}
    for n in names:
        v = read_opt(xs, f"{path}/{n}")
        if v is not None:
            out[n] = v
    return out


_watch_seq = iter(range(1, 1 << 62))
_watch_seq_lock = threading.Lock()


class Cancel:
    """An explicit cancel for the waits of one domain's operations.

    libxl's asynchronous operations end early through ``libxl_ao_abort``; here
    ``xl destroy`` cancels whatever the domain's other operation waits on, and
    that wait ends at once with :class:`DomainGone` (the domain is going) instead
    of waiting out its timeout. A wait that starts after the cancel ends at once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._waiters: list[Callable[[], None]] = []

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            waiters, self._waiters = self._waiters, []
        for wake in waiters:
            wake()

    def subscribe(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` on cancel (now, if already cancelled)."""
        with self._lock:
            if not self._cancelled:
                self._waiters.append(wake)
                return
        wake()

    def unsubscribe(self, wake: Callable[[], None]) -> None:
        with self._lock, suppress(ValueError):
            self._waiters.remove(wake)


def wait_for_backend_state(
    xs: Any,
    domid: int,
    wanted: XenbusState = XenbusState.XenbusStateConnected,
    timeout: float = DEFAULT_TIMEOUT,
    cancel: Cancel | None = None,
) -> None:
    """Block until the backend ``state`` reads ``wanted`` (``libxl__wait_for_backend``).

    A watch on the node, not a poll: each event re-reads it. A second watch on
    ``@releaseDomain`` notices the guest dying meanwhile (as libxl's domain
    death watch does). Raises :class:`BackendMissing` if the node disappears
    (or never existed), :class:`DomainGone` if the guest is released, and
    :class:`BackendStateTimeout` after ``timeout`` seconds. ``cancel`` ends the
    wait with :class:`DomainGone` as soon as it is cancelled.
    """
    path = f"{backend_path(domid)}/state"
    with _watch_seq_lock:
        seq = next(_watch_seq)
    token = f"xenpci-libxl-wait-{seq}"
    death_token = f"xenpci-libxl-death-{seq}"
    done = threading.Event()
    seen: list[int | None] = [None]
    gone = [False]

    def check(*_event: object) -> None:
        try:
            raw = read_opt(xs, path)
        except XsError:
            raw = None
        state: int | None
        try:
            state = int(raw) if raw is not None else None
        except ValueError:
            state = None
        seen[0] = state
        if state is None or state == wanted:
            done.set()

    def death(*_event: object) -> None:
        try:
            alive = bool(xs.is_domain_introduced(domid))
        except XsError:
            alive = False
        if not alive:
            gone[0] = True
            done.set()

    def cancelled() -> None:
        gone[0] = True
        done.set()

    xs.watch(path, token, check)
    xs.watch("@releaseDomain", death_token, death)
    if cancel is not None:
        cancel.subscribe(cancelled)
    try:
        check()  # the registration's own event may already have raced ahead of us
        # A deadline on the machine's clock: the virtual one in deterministic mode.
        executor = getattr(xs, "executor", None)
        ok = executor.wait_until(done.is_set, timeout) if executor else done.wait(timeout)
        if not ok:
            raise BackendStateTimeout(path, int(wanted), seen[0], timeout)
    finally:
        if cancel is not None:
            cancel.unsubscribe(cancelled)
        for p, t in ((path, token), ("@releaseDomain", death_token)):
            with suppress(XsError, ConnectionClosed):
                xs.unwatch(p, t)
    if gone[0]:
        raise DomainGone(domid)
    if seen[0] is None:
        raise BackendMissing(backend_path(domid))


# --------------------------------------------------------------------- libxl entry points


def device_pci_add_xenstore(
    xs: XsClientLike,
    domid: int,
    domain_name: str,
    dev: PciBackendDevice,
    *,
    starting: bool,
    timeout: float = DEFAULT_TIMEOUT,
    cancel: Cancel | None = None,
) -> int:
    """``libxl__device_pci_add_xenstore``: returns the index N the device got.

    When hot-plugging (``starting`` false) to an existing backend, first waits
    for the backend to be Connected, then writes the keys and ``state`` = 7 in
    the same transaction; the first device creates both directories.
    """
    be = backend_path(domid)
    if not starting and read_opt(xs, f"{be}/num_devs") is not None:
        wait_for_backend_state(xs, domid, XenbusState.XenbusStateConnected, timeout, cancel)

    def body(t: XsOps) -> int:
        raw = read_opt(t, f"{be}/num_devs")
        ops: list[XsOp] = []
        if raw is None:
            index = 0
            ops += create_backend_ops(domid, domain_name)
        else:
            index = _num_devs({"num_devs": raw})
            # The same BDF twice would give pciback two dev-N for one device.
            for e in parse_backend(read_dir(t, be)):
                if e.sbdf == dev.sbdf:
                    raise ToolstackError(
                        f"PCI device {dev.sbdf} already in domain {domid}'s backend",
                        LibxlErrorCode.ERROR_INVAL,
                    )
        ops += add_device_ops(domid, index, dev)
        if not starting and raw is not None:
            ops.append(XsWrite(f"{be}/state", str(int(XenbusState.XenbusStateReconfiguring))))
        apply_ops(t, ops)
        return index

    return in_transaction(xs, body)


def device_pci_list(xs: XsOps, domid: int) -> list[PciBackendEntry]:
    """Devices in domain ``domid``'s backend, parsed from ``dev-N`` etc."""
    return parse_backend(read_dir(xs, backend_path(domid)))


def device_pci_remove_xenstore(
    xs: XsClientLike,
    domid: int,
    sbdf: SBDF,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    force: bool = False,
    cancel: Cancel | None = None,
) -> None:
    """``libxl__device_pci_remove_xenstore``: Closing handshake, then delete and compact.

    With ``force`` a backend that does not answer is not waited for (xl
    ``pci-detach -f``, domain destruction): the keys are removed regardless.
    """
    be = backend_path(domid)
    entries = device_pci_list(xs, domid)
    match = [e for e in entries if e.sbdf == sbdf]
    if not match:
        raise DeviceNotAttached(domid, str(sbdf))
    index = match[0].index

    def wait() -> None:
        try:
            wait_for_backend_state(xs, domid, XenbusState.XenbusStateConnected, timeout, cancel)
        except ToolstackError:
            if not force:
                raise

    # A backend already Closing/Closed (the guest is shutting down or gone) will never
    # be Connected again: remove the keys without waiting, as libxl does since 2014
    # ("do not wait for backend on PCI remove when backend already closed").
    state = read_opt(xs, f"{be}/state")
    closed = state in (
        str(int(XenbusState.XenbusStateClosing)),
        str(int(XenbusState.XenbusStateClosed)),
    )
    if not closed:
        wait()
        in_transaction(xs, lambda t: apply_ops(t, mark_closing_ops(domid, index)))
        wait()

    def body(t: XsOps) -> bool:
        snap = read_dir(t, be)
        # Re-find the index: another removal may have compacted meanwhile.
        found = [e for e in parse_backend(snap) if e.sbdf == sbdf]
        if not found:
            raise DeviceNotAttached(domid, str(sbdf))
        last = _num_devs(snap) == 1
        apply_ops(t, remove_device_ops(domid, snap, found[0].index))
        if last:
            apply_ops(t, destroy_ops(domid))
        return last

    in_transaction(xs, body)


def device_destroy(xs: XsClientLike, domid: int) -> None:
    """Remove the PCI backend and frontend directories (``libxl__device_destroy``)."""
    in_transaction(xs, lambda t: apply_ops(t, destroy_ops(domid)))


# --------------------------------------------------------------------- /libxl/pci bookkeeping


def set_assigned_domid(xs: XsOps, sbdf: SBDF, domid: int) -> None:
    """``/libxl/pci/<bdf>/domid`` = domid, written before attach starts."""
    xs.write(f"{libxl_pci_path(sbdf)}/domid", str(domid))


def clear_assigned_domid(xs: XsOps, sbdf: SBDF) -> None:
    """Drop ``/libxl/pci/<bdf>/domid`` (detach done, or attach failed)."""
    apply_ops(xs, [XsRm(f"{libxl_pci_path(sbdf)}/domid")])


def assigned_domid(xs: XsOps, sbdf: SBDF) -> int | None:
    """The guest ``sbdf`` is assigned to according to libxl, if any."""
    raw = read_opt(xs, f"{libxl_pci_path(sbdf)}/domid")
    return int(raw) if raw is not None and raw.isdigit() else None


def set_assignable_name(xs: XsOps, sbdf: SBDF, name: str | None) -> None:
    """Write (or with ``None`` remove) ``/libxl/pci/<bdf>/name``."""
    path = f"{libxl_pci_path(sbdf)}/name"
    if name is None:
        apply_ops(xs, [XsRm(path)])
    else:
        PciBackendDevice(sbdf, name=name)  # validates the name as libxl does
        xs.write(path, name)


def assignable_name(xs: XsOps, sbdf: SBDF) -> str | None:
    return read_opt(xs, f"{libxl_pci_path(sbdf)}/name")


def set_driver_path(xs: XsOps, sbdf: SBDF, driver_path: str | None) -> None:
    """Remember (or forget) the driver the device was bound to before pciback."""
    path = f"{libxl_pci_path(sbdf)}/driver_path"
    if driver_path is None:
        apply_ops(xs, [XsRm(path)])
    else:
        xs.write(path, driver_path)


def driver_path(xs: XsOps, sbdf: SBDF) -> str | None:
    return read_opt(xs, f"{libxl_pci_path(sbdf)}/driver_path")


def resolve_name(xs: XsOps, name: str) -> SBDF | None:
    """Find the device named ``name`` under ``/libxl/pci`` (``libxl_pci_bdf_assignable``)."""
    for d in read_dir_names(xs, "/libxl/pci"):
        if read_opt(xs, f"/libxl/pci/{d}/name") == name:
            return sbdf_from_libxl_dir(d)
    return None


def read_dir_names(xs: XsOps, path: str) -> list[str]:
    try:
        return xs.ls(path)
    except XsError as e:
        if e.code == "ENOENT":
            return []
        raise


def sbdf_from_libxl_dir(name: str) -> SBDF | None:
    """Inverse of :func:`libxl_pci_path`'s last component; ``None`` if malformed."""
    parts = name.split("-")
    if len(parts) != 4:
        return None
    try:
        return SBDF(*(int(p, 16) for p in parts))
    except ValueError:
        return None
