"""``PCI_SPEC_STRING``, BDF and ``rdm=`` parsing as libxlutil 4.17 does it.

Mirrors ``tools/libs/util/libxlu_pci.c`` (``parse_bdf``, ``parse_vslot``,
``parse_key_val``, ``xlu_pci_parse_spec_string``, ``xlu_pci_parse_bdf``,
``xlu_rdm_parse``) including the C library calls it leans on, because they
decide what is accepted: glibc ``sscanf("%x")`` (skips leading white space,
takes a sign and a ``0x`` prefix, wraps to 32 bits), ``atoi`` for the
boolean options (``permissive=yes`` is 0, ``permissive=`` is 0 and overrides
the file's ``pci_permissive``), and libxl's case-insensitive enum parser for
``rdm_policy`` (``RELAXED``, and even ``invalid``, which libxl's
``libxl__device_pci_setdefault`` then turns into ``strict``). Repeated
options: the last one wins, as in libxlutil.

Deliberate differences (listed for users in
:data:`xenpci.toolstack.xlcfg.LIBXLUTIL_DIVERGENCES`):

* a BDF without ``.FUNC`` (``03:00``): libxlutil reads ``%n`` that sscanf
  never set (undefined behaviour, so any answer); we reject it;
* ``xlu_rdm_parse`` inverts its policy check (a valid ``policy=`` fails the
  whole ``rdm=`` option, an unknown one succeeds and leaves the policy
  uninitialised); we implement the evident intent: a valid policy is used,
  an unknown one makes ``rdm=`` fail.

Each error names the offset in the input where libxlutil gave up and the
libxl error code it returns (``ERROR_INVAL``, or ``ERROR_FAIL`` for an
unknown ``rdm_policy``), which xl turns into its exit status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from xenpci.pci.address import SBDF
from xenpci.toolstack.xlu_cfg import LONG_MAX, LONG_MIN, XlCfgError, c_digits, c_sign

RdmPolicy = Literal["strict", "relaxed"]
ERROR_FAIL: Final = -3
ERROR_INVAL: Final = -6
_HEX: Final = frozenset("0123456789abcdefABCDEF")
_ULONG_MAX: Final = (1 << 64) - 1
SPEC_KEYS: Final = frozenset(
    ("bdf", "vslot", "permissive", "msitranslate", "seize", "power_mgmt", "rdm_policy", "name")
)


class PciSpecError(XlCfgError):
    """A malformed ``PCI_SPEC_STRING`` given on the command line (xl exits 2).

    ``column`` is 1-based in the spec; ``rc`` is libxlutil's return code;
    ``libxlutil_ub`` says the input reaches libxlutil's undefined behaviour
    (so no oracle can say what xl does with it).
    """

    exit_code = 2

    def __init__(
        self,
        spec: str,
        column: int,
        reason: str,
        *,
        rc: int = ERROR_INVAL,
        libxlutil_ub: bool = False,
        what: str = "PCI_SPEC_STRING",
    ) -> None:
        self.spec = spec
        self.rc = rc
        self.libxlutil_ub = libxlutil_ub
        super().__init__(
            "<command line>",
            1,
            column,
            reason,
            message=f'malformed {what} "{spec}": column {column}: {reason}',
        )


class BdfError(PciSpecError):
    """A malformed BDF given on the command line (``xlu_pci_parse_bdf``; xl exits 2)."""

    def __init__(self, spec: str, column: int, reason: str, *, libxlutil_ub: bool = False) -> None:
        super().__init__(spec, column, reason, libxlutil_ub=libxlutil_ub, what="BDF")


@dataclass(frozen=True, slots=True)
class PciSpec:
    """One parsed spec (libxl's ``libxl_device_pci``) after defaults.

    ``sbdf`` is None only for a spec naming an assignable device (``name=``,
    which may be empty, as libxlutil allows: the lookup then fails).
    ``vslot`` is the requested virtual slot or None (never 0, which libxl's
    ``vdevfn`` cannot tell from "none"); ``all_functions`` is
    libxl's ``vfunc_mask = LIBXL_PCI_FUNC_ALL`` (``.*``), with function 0.
    """

    sbdf: SBDF | None
    vslot: int | None = None
    permissive: bool = False
    msitranslate: bool = False
    seize: bool = False
    power_mgmt: bool = False
    rdm_policy: RdmPolicy = "strict"
    name: str | None = None
    all_functions: bool = False

    def __post_init__(self) -> None:
        if (self.sbdf is None) == (self.name is None):
            raise ValueError("exactly one of bdf and name must be given")
        if self.vslot is not None and not 0 <= self.vslot <= 0x1F:
            raise ValueError(f"vslot 0x{self.vslot:x} not in 0..0x1f")
        if self.rdm_policy not in ("strict", "relaxed"):
            raise ValueError(f"rdm_policy {self.rdm_policy!r}")
        if self.all_functions and (self.sbdf is None or self.sbdf.function != 0):
            raise ValueError("all_functions needs a bdf with function 0")

    @property
    def vdevfn(self) -> int:
        """libxl's ``vdevfn`` (``vslot << 3``; 0 when no slot was requested)."""
        return 0 if self.vslot is None else self.vslot << 3


@dataclass(frozen=True, slots=True)
class PciDefaults:
    """The defaults xl puts in each device before parsing its spec.

    ``rdm_policy`` None is libxl's ``LIBXL_RDM_RESERVE_POLICY_INVALID``
    (no ``rdm=`` policy), which ends up ``strict``.
    """

    permissive: bool = False
    msitranslate: bool = False
    seize: bool = False
    power_mgmt: bool = False
    rdm_policy: RdmPolicy | None = None


# -- the C library, as libxlutil calls it ----------------------------------------


def scan_hex(s: str, i: int) -> tuple[int, int] | None:
    """glibc ``sscanf(s + i, "%x%n")``: (value, end index), or None if no conversion."""
    n = len(s)
    i, neg = c_sign(s, i)
    digits = ""
    if i < n and s[i] == "0":
        digits, i = "0", i + 1
        if i < n and s[i] in "xX":
            i += 1  # glibc consumes the x even when no digit follows
    j = i
    while j < n and s[j] in _HEX:
        j += 1
    digits += s[i:j]
    if not digits:
        return None
    v = c_digits(digits, 16)
    if v > _ULONG_MAX:
        v = _ULONG_MAX  # strtoul's ERANGE result, then stored as unsigned int
    elif neg:
        v = -v & _ULONG_MAX
    return v & 0xFFFFFFFF, j


def atoi(s: str) -> int:
    """C ``atoi``: ``(int)strtol(s, NULL, 10)`` (prefix only, garbage is 0)."""
    n = len(s)
    i, neg = c_sign(s)
    j = i
    while j < n and "0" <= s[j] <= "9":
        j += 1
    if j == i:
        return 0
    v = c_digits(s[i:j], 10) * (-1 if neg else 1)
    v = max(LONG_MIN, min(LONG_MAX, v))
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def _ascii_lower(s: str) -> str:
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in s)


_RDM_POLICIES: Final[dict[str, RdmPolicy | None]] = {
    "strict": "strict",
    "relaxed": "relaxed",
    "invalid": None,  # LIBXL_RDM_RESERVE_POLICY_INVALID has a name too
}


def rdm_policy_from_string(s: str) -> tuple[bool, RdmPolicy | None]:
    """``libxl_rdm_reserve_policy_from_string`` (``strcasecmp``): (known, policy)."""
    key = _ascii_lower(s)
    if key in _RDM_POLICIES:
        return True, _RDM_POLICIES[key]
    return False, None


# -- libxlu_pci.c ------------------------------------------------------------------


class _Fail(Exception):
    def __init__(self, offset: int, reason: str, rc: int = ERROR_INVAL, ub: bool = False) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason
        self.rc = rc
        self.ub = ub


@dataclass(slots=True)
class _Bdf:
    domain: int
    bus: int
    dev: int
    func: int
    all_functions: bool
    end: int


def _parse_bdf(s: str, start: int) -> _Bdf:
    """``parse_bdf`` on ``s[start:]``; raises :class:`_Fail`."""
    ptr, colons = start, 0
    while ptr < len(s) and (s[ptr] in _HEX or s[ptr] == ":"):
        colons += s[ptr] == ":"
        ptr += 1
    if colons not in (1, 2):
        raise _Fail(start, "not a BDF ([DDDD:]BB:DD.F)")
    fields: list[int] = []
    ptr = start
    for k in range(colons + 1):
        got = scan_hex(s, ptr)
        if got is None:
            raise _Fail(ptr, "not a BDF: hex number expected")
        fields.append(got[0])
        ptr = got[1]
        sep = ":" if k < colons else "."
        if not s.startswith(sep, ptr):
            if sep == ".":
                raise _Fail(ptr, "no '.FUNC' after the device number", ub=True)
            raise _Fail(ptr, "not a BDF: ':' expected")
        ptr += 1
    domain, bus, dev = fields if colons == 2 else [0, *fields]
    if domain > 0xFFFF or bus > 0xFF or dev > 0x1F:
        raise _Fail(start, "BDF out of range (domain <= ffff, bus <= ff, device <= 1f)")
    if s.startswith("*", ptr):
        return _Bdf(domain, bus, dev, 0, True, ptr + 1)
    got = scan_hex(s, ptr)
    if got is None:
        raise _Fail(ptr, "function number expected")
    if got[0] > 7:
        raise _Fail(ptr, "function out of range (0..7)")
    return _Bdf(domain, bus, dev, got[0], False, got[1])


def _parse_vslot(s: str, start: int) -> tuple[int, int]:
    """``parse_vslot``: (vslot, end)."""
    got = scan_hex(s, start)
    if got is None:
        raise _Fail(start, "vslot is not a hex number")
    if got[0] > 0x1F:
        raise _Fail(start, f"vslot 0x{got[0]:x} > 0x1f")
    return got


@dataclass(slots=True)
class _Pci:
    """The ``libxl_device_pci`` being filled, with xl's defaults."""

    bdf: _Bdf | None
    vslot: int | None
    permissive: bool
    msitranslate: bool
    seize: bool
    power_mgmt: bool
    rdm_policy: RdmPolicy | None
    name: str | None


def _parse_spec(s: str, d: PciDefaults) -> PciSpec:
    pci = _Pci(None, None, d.permissive, d.msitranslate, d.seize, d.power_mgmt, d.rdm_policy, None)
    bdf_present = name_present = False
    ptr = 0
    try:
        pci.bdf = _parse_bdf(s, 0)
    except _Fail as e:
        # Not an error yet: the spec may be key=value pairs. But after the
        # undefined case the first key holds a ':', so it fails in any event.
        if e.ub:
            raise
    if pci.bdf is not None:
        bdf_present = True
        ptr = pci.bdf.end
        if s.startswith("@", ptr):
            pci.vslot, ptr = _parse_vslot(s, ptr + 1)
        if s.startswith(",", ptr):
            ptr += 1
        elif ptr < len(s):
            raise _Fail(ptr, "',' or '@VSLOT' expected after the BDF")
    while ptr < len(s):
        eq = s.find("=", ptr)
        if eq < 0:
            raise _Fail(ptr, f"option {s[ptr:]!r} has no '='")
        key = s[ptr:eq]
        vend = s.find(",", eq + 1)
        vend = len(s) if vend < 0 else vend
        val = s[eq + 1 : vend]
        at = eq + 1
        if key == "bdf":
            try:
                pci.bdf = _parse_bdf(val, 0)
            except _Fail as e:
                raise _Fail(at + e.offset, e.reason, ub=e.ub) from None
            bdf_present = True
        elif key == "vslot":
            try:
                pci.vslot = _parse_vslot(val, 0)[0]
            except _Fail as e:
                raise _Fail(at + e.offset, e.reason) from None
        elif key in ("permissive", "msitranslate", "seize", "power_mgmt"):
            setattr(pci, key, atoi(val) != 0)
        elif key == "rdm_policy":
            known, policy = rdm_policy_from_string(val)
            if not known:
                raise _Fail(at, f"Unknown RDM policy: {val!r}", rc=ERROR_FAIL)
            pci.rdm_policy = policy
        elif key == "name":
            name_present = True
            pci.name = val
        else:
            raise _Fail(ptr, f"Unknown PCI_SPEC_STRING option: {key!r}")
        ptr = vend + 1 if vend < len(s) else vend
    if bdf_present == name_present:
        raise _Fail(0, "exactly one of bdf and name must be given")
    b = pci.bdf if bdf_present else None
    return PciSpec(
        sbdf=None if b is None else SBDF(b.domain, b.bus, b.dev, b.func),
        # libxl keeps only vdevfn, where 0 means "no slot asked for": "@0" is
        # no request (and "06:00.*@0" is refused like "06:00.*").
        vslot=pci.vslot or None,
        permissive=pci.permissive,
        msitranslate=pci.msitranslate,
        seize=pci.seize,
        power_mgmt=pci.power_mgmt,
        rdm_policy=pci.rdm_policy or "strict",  # libxl__device_pci_setdefault
        name=None if b is not None else pci.name,
        all_functions=b is not None and b.all_functions,
    )


def parse_pci_spec(
    text: str,
    defaults: PciDefaults | None = None,
    *,
    path: str = "<command line>",
    line: int = 1,
    cols: tuple[int, ...] | None = None,
) -> PciSpec:
    """Parse one ``PCI_SPEC_STRING`` (``xlu_pci_parse_spec_string``).

    ``defaults`` are what xl presets in the device (the file's ``pci_*``
    options; none for ``xl pci-attach``). Raises :class:`PciSpecError`,
    whose ``column`` is 1-based in ``text``; ``path``/``line``/``cols`` are
    kept on the error for a caller placing it in a file.
    """
    try:
        return _parse_spec(text, defaults or PciDefaults())
    except _Fail as e:
        err = PciSpecError(text, e.offset + 1, e.reason, rc=e.rc, libxlutil_ub=e.ub)
        err.path, err.line = path, line
        if cols is not None and len(cols) == len(text):
            err.column = cols[e.offset] if e.offset < len(cols) else (cols[-1] + 1 if cols else 1)
        raise err from None


def parse_bdf(text: str) -> tuple[SBDF, bool]:
    """``xlu_pci_parse_bdf`` (``xl pci-assignable-add/-remove``): (address, all functions).

    As libxlutil, anything after the function is ignored.
    """
    try:
        b = _parse_bdf(text, 0)
    except _Fail as e:
        raise BdfError(text, e.offset + 1, e.reason, libxlutil_ub=e.ub) from None
    return SBDF(b.domain, b.bus, b.dev, b.func), b.all_functions


def parse_rdm(text: str) -> tuple[bool, RdmPolicy | None]:
    """``xlu_rdm_parse`` as intended: (ok, policy given) for ``rdm="strategy=host,policy=…"``.

    ``strategy`` must be ``host``; ``policy`` strict/relaxed (any case); at
    least one ``key=value``, none empty, no trailing comma. libxlutil 4.17
    inverts the policy check; see the module docstring.
    """
    policy: RdmPolicy | None = None
    parts = text.split(",")
    for part in parts:
        key, eq, val = part.partition("=")
        if not eq:
            return False, None
        if key == "strategy":
            if val != "host":
                return False, None
        elif key == "policy":
            known, got = rdm_policy_from_string(val)
            if not known:
                return False, None
            policy = got
        else:
            return False, None
    return True, policy
