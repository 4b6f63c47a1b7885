"""``disk=[...]`` of xl.cfg: a useful subset of ``docs/misc/xl-disk-configuration.txt``,
and libxl's vbd XenStore layout.

Parsing models ``xlu_disk_parse`` (``tools/libs/util/libxlu_disk_l.l``):
a DISKSPEC is comma-separated; ``key=value`` items and flags may appear
anywhere; the other items are positional, in the order ``target``,
``format``, ``vdev``, ``access`` (an empty positional keeps the default);
``target=`` given by name swallows the rest of the string, commas included,
so it must come last. Defaults: ``format=raw``, ``access=rw``,
``devtype=disk``, ``backendtype`` chosen by libxl (``phy`` for a block
device). ``vdev`` is required.

Supported: ``target``, ``format`` (``raw`` only), ``vdev`` (``xvdX``,
``hdX``, ``sdX`` with an optional partition number, or ``dN``/``dNpM``),
``access`` (``r``/``ro``/``w``/``rw``), ``devtype=disk``,
``backendtype=phy``, ``backend=<domain>`` (``0``/``Domain-0`` only),
``script=``, and the deprecated ``phy:``/``raw:`` prefix form
(``phy:/dev/x,xvda,w``). Anything else (qcow2, qdisk, cdrom, empty
CD-ROM drives, other prefixes, unknown keys) is refused with a message naming it,
where libxlu would accept it: this model has one backend (blkback) and one
kind of target (dom0's block devices).

:func:`vbd_add` writes what ``libxl__device_disk_add`` /
``libxl__device_generic_add`` write (``libxl_disk.c``, ``libxl_device.c``):
``/local/domain/0/backend/vbd/<domid>/<devid>`` (frontend, frontend-id,
online, removable, bootable, state, dev, type, mode, device-type, params,
script, physical-device-path) and ``/local/domain/<domid>/device/vbd/<devid>``
(backend, backend-id, state, virtual-device, device-type), with the
permissions libxl sets (each end owned by its domain, readable by the other).
The device number is ``libxl__device_disk_dev_number``'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from xenpci.toolstack.errors import LibxlErrorCode, ToolstackError
from xenpci.xenstore.client import XsClient, XsTransaction
from xenpci.xenstore.perms import Perms


class DiskSpecError(ToolstackError):
    """A DISKSPEC this model cannot accept; ``spec`` is the offending string."""

    def __init__(self, spec: str, reason: str) -> None:
        self.spec = spec
        self.reason = reason
        super().__init__(f"disk spec {spec!r}: {reason}", LibxlErrorCode.ERROR_INVAL)


_POSITIONAL = ("target", "format", "vdev", "access")
_KEYS = frozenset(
    {"target", "format", "vdev", "access", "devtype", "backendtype", "backend", "script"}
)
_DEPRECATED_POSITIONAL = ("target", "vdev", "access")
_DEPRECATED = re.compile(r"^(phy|raw):/")
_ACCESS = {"r": False, "ro": False, "w": True, "rw": True}


@dataclass(frozen=True, slots=True)
class DiskSpec:
    """One parsed DISKSPEC (``libxl_device_disk`` fields the model uses)."""

    target: str
    vdev: str
    readwrite: bool = True
    format: str = "raw"
    devtype: str = "disk"
    backendtype: str = "phy"
    backend_domid: int = 0
    script: str = "block"

    @property
    def devid(self) -> int:
        return vdev_devid(self.vdev)

    @property
    def mode(self) -> str:
        return "w" if self.readwrite else "r"


_XVD = re.compile(r"^(xvd|hd|sd)([a-z]+)(\d*)$")
_DN = re.compile(r"^d(\d+)(?:p(\d+))?$")


def _letters(text: str) -> int:
    # xvda=0, xvdz=25, xvdaa=26 ... (libxl__device_disk_dev_number's "bijective base 26")
    n = 0
    for ch in text:
        n = n * 26 + (ord(ch) - ord("a") + 1)
    return n - 1


def vdev_devid(vdev: str) -> int:
    """``libxl__device_disk_dev_number``: the ``virtual-device`` number of ``vdev``."""
    m = _DN.match(vdev)
    if m:
        disk, part = int(m.group(1)), int(m.group(2) or 0)
        return _xvd_number(vdev, disk, part)
    m = _XVD.match(vdev)
    if not m:
        raise DiskSpecError(vdev, "vdev must be xvdX, hdX, sdX or dN[pM]")
    kind, disk, part = m.group(1), _letters(m.group(2)), int(m.group(3) or 0)
    if kind == "xvd":
        return _xvd_number(vdev, disk, part)
    if kind == "hd":
        if disk > 3 or part > 63:
            raise DiskSpecError(vdev, "hd supports hda..hdd, partitions 0..63")
        major = (3, 3, 22, 22)[disk]
        return (major << 8) | ((disk & 1) << 6) | part
    if disk > 15 or part > 15:
        raise DiskSpecError(vdev, "sd supports sda..sdp, partitions 0..15")
    return (8 << 8) | (disk << 4) | part


def _xvd_number(vdev: str, disk: int, part: int) -> int:
    if disk < 16 and part < 16:
        return (202 << 8) | (disk << 4) | part
    if disk < (1 << 20) and part < 256:
        return (1 << 28) | (disk << 8) | part  # the extended xvd scheme
    raise DiskSpecError(vdev, "disk or partition number out of range")


def parse_disk_spec(spec: str) -> DiskSpec:
    """Parse one DISKSPEC (``xlu_disk_parse`` for a single string)."""
    values: dict[str, str] = {}
    positional = 0
    order: tuple[str, ...] = _POSITIONAL
    rest = spec
    while True:
        item, sep, tail = rest.partition(",")
        text = item.strip()
        if text.startswith("target="):
            values["target"] = rest.lstrip()[len("target=") :]
            break
        if "=" in text:
            key, _, value = text.partition("=")
            key = key.strip()
            if key not in _KEYS:
                raise DiskSpecError(spec, f"unknown or unsupported key {key!r}")
            if key in values:
                raise DiskSpecError(spec, f"{key} given twice")
            values[key] = value.strip()
        elif text in ("cdrom", "devtype=cdrom"):
            raise DiskSpecError(spec, "cdrom devices are not modelled (blkback serves disks)")
        elif text in ("discard", "no-discard", "direct-io-safe"):
            pass  # hints libxl passes to the backend; blkback here has no use for them
        elif positional == 0 and _DEPRECATED.match(text):
            # The deprecated "phy:/dev/x,xvda,w": the prefix gives format/backend, and
            # the positional order is then target, vdev, access (no format).
            prefix, _, target = text.partition(":")
            if prefix == "phy":
                values["backendtype"] = "phy"
            values["target"] = target
            order = _DEPRECATED_POSITIONAL
            positional = 1
        elif positional == 0 and ":" in text.split("/")[0]:
            raise DiskSpecError(spec, f"the deprecated prefix of {text!r} is not supported")
        else:
            if positional >= len(order):
                raise DiskSpecError(spec, f"too many positional parameters at {text!r}")
            name = order[positional]
            positional += 1
            if text:
                if name in values:
                    raise DiskSpecError(spec, f"{name} given twice")
                values[name] = text
        if not sep:
            break
        rest = tail
    target = values.get("target", "")
    vdev = values.get("vdev", "")
    if not vdev:
        raise DiskSpecError(spec, "no vdev specified")
    if not target:
        raise DiskSpecError(spec, "no target specified (empty CD-ROM drives are not modelled)")
    access = values.get("access", "rw")
    if access not in _ACCESS:
        raise DiskSpecError(spec, f"invalid access {access!r} (r, ro, w or rw)")
    fmt = values.get("format", "raw")
    if fmt != "raw":
        raise DiskSpecError(spec, f"format {fmt!r} is not supported (raw only)")
    devtype = values.get("devtype", "disk")
    if devtype != "disk":
        raise DiskSpecError(spec, f"devtype {devtype!r} is not supported (disk only)")
    backendtype = values.get("backendtype", "phy")
    if backendtype != "phy":
        raise DiskSpecError(spec, f"backendtype {backendtype!r} is not supported (phy only)")
    backend = values.get("backend", "0")
    if backend not in ("0", "Domain-0"):
        raise DiskSpecError(spec, "driver domains are not modelled (backend must be dom0)")
    parsed = DiskSpec(
        target=target,
        vdev=vdev,
        readwrite=_ACCESS[access],
        format=fmt,
        devtype=devtype,
        backendtype=backendtype,
        script=values.get("script", "block"),
    )
    vdev_devid(vdev)  # validate now, not at attach time
    return parsed


def parse_disk_list(specs: list[str]) -> list[DiskSpec]:
    """The ``disk=[...]`` list: each parsed, vdevs unique."""
    disks = [parse_disk_spec(s) for s in specs]
    seen: set[int] = set()
    for d in disks:
        if d.devid in seen:
            raise DiskSpecError(d.vdev, "two disks with the same vdev")
        seen.add(d.devid)
    return disks


def backend_path(backend_domid: int, domid: int, devid: int) -> str:
    return f"/local/domain/{backend_domid}/backend/vbd/{domid}/{devid}"


def frontend_path(domid: int, devid: int) -> str:
    return f"/local/domain/{domid}/device/vbd/{devid}"


def vbd_add(xs: XsClient, domid: int, disk: DiskSpec) -> tuple[str, str]:
    """``libxl__device_disk_add``: write both directories in one transaction."""
    devid = disk.devid
    be = backend_path(disk.backend_domid, domid, devid)
    fe = frontend_path(domid, devid)

    def body(t: XsTransaction) -> None:
        t.write(be, "")
        t.set_perms(be, Perms.of(f"n{disk.backend_domid}", f"r{domid}"))
        for key, value in (
            ("frontend", fe),
            ("frontend-id", str(domid)),
            ("online", "1"),
            ("removable", "0"),
            ("bootable", "1"),
            ("state", "1"),
            ("dev", disk.vdev),
            ("type", disk.backendtype),
            ("mode", disk.mode),
            ("device-type", disk.devtype),
            ("params", disk.target),
            ("script", f"/etc/xen/scripts/{disk.script}"),
            # What the block hotplug script records for a phy target.
            ("physical-device-path", disk.target),
        ):
            t.write(f"{be}/{key}", value)
        t.write(fe, "")
        t.set_perms(fe, Perms.of(f"n{domid}", f"r{disk.backend_domid}"))
        for key, value in (
            ("backend", be),
            ("backend-id", str(disk.backend_domid)),
            ("state", "1"),
            ("virtual-device", str(devid)),
            ("device-type", disk.devtype),
        ):
            t.write(f"{fe}/{key}", value)

    xs.retry_transaction(body)
    return be, fe


def vbd_remove(xs: XsClient, domid: int, devid: int, backend_domid: int = 0) -> None:
    """``libxl__device_destroy`` (forced): remove both directories in one transaction.

    blkback sees its backend directory vanish and tears the device down (the
    ring unmapped, the channel closed, its thread stopped).
    """
    be = backend_path(backend_domid, domid, devid)
    fe = frontend_path(domid, devid)

    def body(t: XsTransaction) -> None:
        for path in (fe, be):
            if t.exists(path):
                t.rm(path)

    xs.retry_transaction(body)
