"""Device sources by name: one spec string in, a list of :class:`PciFunction` out.

Specs (the SOURCE argument of ``xenpci pci convert``/``show``):

* ``FILE`` -- every function of an lspci dump; ``FILE@BDF`` -- one of them;
* ``sysfs`` -- every function of this host's ``/sys/bus/pci/devices``;
  ``sysfs:BDF`` -- one of them (read-only);
* ``SCHEME:REST`` for a scheme added with :func:`register_source_scheme`
  (e.g. ``model:nic`` from ``xenpci.devices``); ``dump:FILE`` is built in.

This has no single real counterpart; it plays the role of pciutils' access
methods (``-A dump``/``-A linux-sysfs``, ``-F FILE``) behind one parser.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from xenpci.pci.address import SBDF
from xenpci.pci.dump import load_dump
from xenpci.pci.errors import AddressError, SourceError
from xenpci.pci.function import PciFunction
from xenpci.pci.sysfs import SYSFS_PCI_DEVICES, load_sysfs

SourceLoader = Callable[[str], list[PciFunction]]

_SCHEMES: dict[str, SourceLoader] = {}


def register_source_scheme(name: str, loader: SourceLoader) -> None:
    """Make ``NAME:REST`` specs call ``loader(REST)``; re-registering replaces."""
    if not name.isidentifier() or name in ("sysfs",):
        raise SourceError(name, "scheme must be an identifier other than 'sysfs'")
    _SCHEMES[name] = loader


def source_schemes() -> list[str]:
    """Registered scheme names (for help texts)."""
    return sorted(_SCHEMES)


def _select(functions: list[PciFunction], bdf_text: str, where: str) -> list[PciFunction]:
    try:
        want = SBDF.parse(bdf_text)
    except AddressError as e:
        raise SourceError(where, str(e)) from None
    found = [f for f in functions if f.sbdf == want]
    if not found:
        have = ", ".join(str(f.sbdf) for f in functions) or "none"
        raise SourceError(where, f"no function {want} (have: {have})")
    return found


def open_source(spec: str, *, sysfs_root: str | Path = SYSFS_PCI_DEVICES) -> list[PciFunction]:
    """Load the functions a SOURCE spec names (see the module docstring)."""
    if not spec:
        raise SourceError("<source>", "empty source spec")
    if spec == "sysfs":
        return load_sysfs(sysfs_root)
    scheme, colon, rest = spec.partition(":")
    if colon and scheme == "sysfs":
        try:
            bdf = SBDF.parse(rest)
        except AddressError as e:
            raise SourceError(spec, str(e)) from None
        return load_sysfs(sysfs_root, bdf)
    if colon and scheme in _SCHEMES:
        return _SCHEMES[scheme](rest)
    path_text, at, bdf_text = spec.rpartition("@")
    if at and not Path(spec).exists():
        return _select(load_dump(path_text), bdf_text, spec)
    if not Path(spec).exists():
        known = ", ".join(["sysfs", *source_schemes()])
        raise SourceError(spec, f"no such file, and not a known scheme ({known})")
    return load_dump(spec)


def _dump_scheme(rest: str) -> list[PciFunction]:
    path_text, at, bdf_text = rest.rpartition("@")
    if at and not Path(rest).exists():
        return _select(load_dump(path_text), bdf_text, rest)
    return load_dump(rest)


register_source_scheme("dump", _dump_scheme)
