"""xl domain configuration files (``xl.cfg(5)``) as xl 4.17 reads them.

The file syntax is :mod:`xenpci.toolstack.xlu_cfg` (libxlutil's lexer,
grammar and accessors) and each ``pci=`` entry is
:mod:`xenpci.toolstack.xlu_pci` (``xlu_pci_parse_spec_string``). This module
is the part of xl's ``parse_config_data`` (``tools/xl/xl_parse.c``) that the
toolstack needs, in xl's order and with xl's outcomes:

* ``type=`` is matched as a *prefix* (``strncmp(buf, "hvm", strlen(buf))``:
  ``"h"`` and even ``""`` mean hvm, ``"p"`` means pv), ``builder=`` likewise
  against ``hvm``/``generic``; the two must agree; the default is pv;
* a missing ``name`` is fatal; ``memory``/``vcpus``/``pci_*`` that are not
  numbers (``xlu_cfg_get_long``) are warned about and ignored, as xl does;
* ``pci_permissive`` and friends are read into a C ``int`` (so
  ``0x100000000`` is 0) and preset in every device before its spec is
  parsed, so a spec's ``permissive=`` (even empty: ``atoi("")`` is 0)
  overrides them;
* ``rdm="strategy=host,policy=..."`` sets the default ``rdm_policy``;
* ``pci`` given as a single string is warned about and ignored: the domain
  is created without the device; xl's loop over the list stops at the
  first item that is not a string.
* ``disk=[...]`` entries are DISKSPECs (:mod:`xenpci.toolstack.xldisk`,
  ``xlu_disk_parse``); a bad one fails the file with exit 1, as
  ``parse_disk_config`` does.

Warnings are returned in :attr:`DomainConfig.warnings`, in libxlutil's words,
for the caller to print. Every error class carries ``exit_code`` (xl's exit
status for it); see :data:`LIBXLUTIL_DIVERGENCES` for where we differ on
purpose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from xenpci.toolstack.errors import LibxlErrorCode, ToolstackError
from xenpci.toolstack.xldisk import DiskSpec, DiskSpecError, parse_disk_list
from xenpci.toolstack.xlu_cfg import (
    CfgValue,
    Node,
    Setting,
    XlCfgError,
    XluConfig,
    decode_config,
    parse_cfg,
    tokenize,
)
from xenpci.toolstack.xlu_pci import (
    SPEC_KEYS,
    BdfError,
    PciDefaults,
    PciSpec,
    PciSpecError,
    RdmPolicy,
    parse_bdf,
    parse_pci_spec,
    parse_rdm,
)

DomainType = Literal["pv", "hvm", "pvh"]

LIBXLUTIL_DIVERGENCES: Final = """\
Config and PCI_SPEC_STRING parsing follows Debian's libxlutil 4.17 (xl.cfg(5),
xl-pci-configuration(5)), with these deliberate choices where it has bugs:
  * "\\x" escapes in strings: libxlutil rejects every one (its dequote skips
    a digit and then wants too many); so do we, saying why.
  * "\\NNN" escapes: libxlutil reads the digits as decimal and then drops
    the escape from the string; we do the same (rejecting would refuse files
    xl accepts).
  * A BDF without ".FUNC" ("03:00"): undefined behaviour in libxlutil (it
    reads an unset %n); we reject it as malformed.
  * rdm="...,policy=...": libxlutil inverts the check, so a valid policy
    makes the whole rdm= option fail and an unknown one leaves the policy
    uninitialised; we use a valid policy as the pci rdm_policy default and
    ignore (with a warning) an rdm= that does not parse.
  * A NUL character anywhere in a config is an error (libxlutil aborts on
    one inside a string).
  * Refused here where xl passes them on to libxl: an empty name, memory or
    vcpus below 1, type=pvh, and a type=hvm guest with pci=[...] (passthrough
    to HVM is not modelled) or without exactly one disk=[...] (its emulated
    NVMe controller's backing).
  * Lists nested more than 200 deep are refused (libxlutil: about 5000).
  * A config must be UTF-8. Errors give line and column.
Kept because xl does the same: the last setting of a key wins; numbers may
be quoted (memory = "64"); a non-number memory/vcpus/pci_* is warned about
and ignored; pci = "BDF" (a string, not a list) is warned about and the
domain is created without the device; in a spec "permissive=yes" is 0, an
empty "permissive=" is 0 even with pci_permissive=1, "bdf=" ignores text
after the function, rdm_policy= is case-insensitive; a stray last byte of a
file without a final newline is ignored.
"""

_BOOL_KEYS: Final = ("permissive", "msitranslate", "seize", "power_mgmt")
_CONSUMED: Final = frozenset(
    {"name", "memory", "vcpus", "pci", "disk", "rdm", "type", "builder"}
    | {f"pci_{k}" for k in _BOOL_KEYS}
)


class CfgPciSpecError(XlCfgError):
    """A bad ``pci=`` entry in a file: xl exits ``-rc`` (6 for ``ERROR_INVAL``)."""

    def __init__(self, path: str, line: int, column: int, spec_error: PciSpecError) -> None:
        self.spec = spec_error.spec
        self.rc = spec_error.rc
        self.libxlutil_ub = spec_error.libxlutil_ub
        self.exit_code = -spec_error.rc
        super().__init__(
            path,
            line,
            column,
            spec_error.reason,
            message=f"{path}:{line}:{column}: unable to parse PCI_SPEC_STRING "
            f"`{spec_error.spec}' for passthrough: {spec_error.reason}",
        )


class UnsupportedDomainType(ToolstackError):
    """A config asks for a guest xenpci does not model (yet): xl-style exit 1."""

    exit_code = 1

    def __init__(self, domain_type: str, why: str | None = None) -> None:
        self.domain_type = domain_type
        super().__init__(
            why
            or f'domain type "{domain_type}" is not supported yet: xenpci models PV and '
            'HVM guests only (use type="pv", type="hvm" or leave type unset)',
            LibxlErrorCode.ERROR_INVAL,
        )


class CfgDiskSpecError(XlCfgError):
    """A bad ``disk=`` entry: xl's ``parse_disk_config`` exits 1."""

    def __init__(self, path: str, line: int, column: int, error: DiskSpecError) -> None:
        self.spec = error.spec
        super().__init__(path, line, column, error.message)


@dataclass(frozen=True, slots=True)
class DomainConfig:
    """What the toolstack needs from an xl.cfg file; the rest is in ``extra``.

    ``memory_mib`` is None when the file does not set ``memory`` (libxl then
    applies its own default). ``warnings`` are xl's warnings for this file,
    to be printed by the caller.
    """

    name: str
    memory_mib: int | None = None
    vcpus: int = 1
    pci: tuple[PciSpec, ...] = ()
    disks: tuple[DiskSpec, ...] = ()
    domain_type: DomainType = "pv"
    warnings: tuple[str, ...] = ()
    extra: dict[str, CfgValue] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a domain needs a name")
        if self.memory_mib is not None and self.memory_mib <= 0:
            raise ValueError(f"memory {self.memory_mib} MiB")
        if self.vcpus <= 0:
            raise ValueError(f"vcpus {self.vcpus}")
        if self.domain_type not in ("pv", "hvm", "pvh"):
            raise ValueError(f"domain type {self.domain_type!r}")


def require_supported_type(cfg: DomainConfig) -> None:
    """Refuse a guest xenpci cannot run: PVH, and HVM guests outside what is modelled.

    An HVM guest is the emulated IO model (:mod:`xenpci.emu`): one emulated
    NVMe controller served by a device model from the one ``disk=`` it names
    (that the disk is one of dom0's block devices is the toolstack's check).
    Passthrough to an HVM guest (QEMU's PCI pass-through, ``xen_pt``) is not
    modelled: such a config is refused, not created without its devices.
    """
    if cfg.domain_type == "pv":
        return
    if cfg.domain_type != "hvm":
        raise UnsupportedDomainType(cfg.domain_type)
    if cfg.pci:
        raise UnsupportedDomainType(
            "hvm",
            'PCI passthrough to a type="hvm" guest is not modelled (xenpci passes '
            'devices through to PV guests only): remove pci=[...] or use type="pv"',
        )
    if len(cfg.disks) != 1:
        raise UnsupportedDomainType(
            "hvm",
            f'a type="hvm" guest needs exactly one disk=[...] (its emulated NVMe '
            f"controller's backing), not {len(cfg.disks)}",
        )


def _c_int(value: int) -> int:
    """A C ``long`` assigned to an ``int`` (two's complement truncation)."""
    v = value & 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def _setting_error(cfg: XluConfig, key: str, reason: str) -> XlCfgError:
    s = cfg.find(key)
    line, col = (s.value.line, s.value.column) if s is not None else (1, 1)
    return XlCfgError(cfg.source, line, col, reason)


def _domain_type(cfg: XluConfig) -> DomainType:
    dtype: DomainType | None = None
    t = cfg.get_string("type")
    if t is not None:
        if "hvm".startswith(t):
            dtype = "hvm"
        elif "pv".startswith(t):
            dtype = "pv"
        elif "pvh".startswith(t):
            dtype = "pvh"
        else:
            raise _setting_error(cfg, "type", f"Invalid domain type {t}.")
    b = cfg.get_string("builder")  # deprecated since Xen 4.10, still read
    if b is not None:
        if "hvm".startswith(b):
            btype: DomainType = "hvm"
        elif "generic".startswith(b):
            btype = "pv"
        else:
            raise _setting_error(cfg, "builder", f"Invalid domain type {b}.")
        if dtype is not None and dtype != btype:
            raise _setting_error(
                cfg, "builder", 'Contradicting "builder" and "type" options specified.'
            )
        dtype = btype
    return dtype or "pv"


def _positive(cfg: XluConfig, key: str, what: str) -> int | None:
    v = cfg.get_long(key)
    if v is not None and v < 1:
        raise _setting_error(cfg, key, f"{key} must be at least 1{what}, got {v}")
    return v


def pci_devices(cfg: XluConfig) -> tuple[PciSpec, ...]:
    """The ``pci=`` devices with the file's defaults (the pci part of ``parse_config_data``).

    Raises :class:`CfgPciSpecError` for the first entry that does not parse.
    """
    path = cfg.source
    flags: dict[str, bool] = {}
    for k in ("msitranslate", "power_mgmt", "permissive", "seize"):  # xl's order
        v = cfg.get_long(f"pci_{k}")
        flags[k] = v is not None and _c_int(v) != 0
    rdm_policy: RdmPolicy | None = None
    rdm = cfg.get_string("rdm")
    if rdm is not None:
        ok, rdm_policy = parse_rdm(rdm)
        if not ok:
            s = cfg.find("rdm")
            assert s is not None
            cfg.warnings.append(
                f'{path}:{s.line}: warning: rdm="{rdm}" not understood '
                "(strategy=host,policy=strict|relaxed): ignored"
            )
    defaults = PciDefaults(rdm_policy=rdm_policy, **flags)
    specs: list[PciSpec] = []
    for index, item in enumerate(cfg.get_list("pci") or ()):
        if not isinstance(item.value, str):
            cfg.warnings.append(
                f"{path}:{item.line}: warning: pci entry {index} is a list, not a "
                "PCI_SPEC_STRING: it and the entries after it are ignored, as xl does"
            )
            break
        try:
            specs.append(parse_pci_spec(item.value, defaults))
        except PciSpecError as e:
            off = e.column - 1
            cols = item.cols
            col = cols[off] if off < len(cols) else (cols[-1] + 1 if cols else item.column)
            raise CfgPciSpecError(path, item.line, col, e) from None
    return tuple(specs)


def disk_devices(cfg: XluConfig) -> tuple[DiskSpec, ...]:
    """The ``disk=`` list (``parse_disk_config``): every entry a DISKSPEC string."""
    items = cfg.get_list("disk") or ()
    specs: list[str] = []
    for item in items:
        if not isinstance(item.value, str):
            raise XlCfgError(cfg.source, item.line, item.column, "disk entries must be strings")
        specs.append(item.value)
    try:
        return tuple(parse_disk_list(specs))
    except DiskSpecError as e:
        where = next((i for i in items if i.value == e.spec), None)
        s = cfg.find("disk")
        line, col = (
            (where.line, where.column)
            if where is not None
            else ((s.value.line, s.value.column) if s is not None else (1, 1))
        )
        raise CfgDiskSpecError(cfg.source, line, col, e) from None


def load_domain_config(text: str, path: str = "<string>") -> DomainConfig:
    """Parse an xl.cfg file's text into a :class:`DomainConfig` as xl does."""
    cfg = parse_cfg(text, path)
    domain_type = _domain_type(cfg)
    name = cfg.get_string("name")
    if name is None:
        raise XlCfgError(path, 1, 1, "Domain name must be specified.")
    if not name:
        raise _setting_error(cfg, "name", "Domain name must not be empty.")
    memory = _positive(cfg, "memory", " MiB")
    vcpus = _positive(cfg, "vcpus", "")
    specs = pci_devices(cfg)
    disks = disk_devices(cfg)
    extra = {s.key: s.value.plain() for s in cfg.settings() if s.key not in _CONSUMED}
    return DomainConfig(
        name=name,
        memory_mib=memory,
        vcpus=vcpus or 1,
        pci=tuple(specs),
        disks=disks,
        domain_type=domain_type,
        warnings=tuple(cfg.warnings),
        extra=extra,
    )


def load_domain_config_file(path: str | Path) -> DomainConfig:
    """Read and parse an xl.cfg file (one-line :class:`XlCfgError` if not UTF-8)."""
    p = Path(path)
    return load_domain_config(decode_config(p.read_bytes(), str(p)), str(p))


__all__ = [
    "LIBXLUTIL_DIVERGENCES",
    "SPEC_KEYS",
    "BdfError",
    "CfgDiskSpecError",
    "CfgPciSpecError",
    "CfgValue",
    "DiskSpec",
    "DomainConfig",
    "DomainType",
    "Node",
    "PciDefaults",
    "PciSpec",
    "PciSpecError",
    "RdmPolicy",
    "Setting",
    "UnsupportedDomainType",
    "XlCfgError",
    "XluConfig",
    "decode_config",
    "disk_devices",
    "load_domain_config",
    "load_domain_config_file",
    "parse_bdf",
    "parse_cfg",
    "parse_pci_spec",
    "parse_rdm",
    "pci_devices",
    "require_supported_type",
    "tokenize",
]
