"""xl domain configuration files (``xl.cfg(5)``) and ``PCI_SPEC_STRING``.

Models libxlu: the file syntax of ``libxlu_cfg_l.l``/``libxlu_cfg_y.y``
(``KEY = VALUE`` separated by newlines or ``;``, ``#`` comments, strings in
single or double quotes, numbers in decimal/octal/hex, nested lists in
``[ ]``, ``+=`` to append) and ``xlu_pci_parse_spec_string`` of
``libxlu_pci.c`` for each ``pci=[...]`` entry, with the global
``pci_permissive``/``pci_msitranslate``/``pci_seize``/``pci_power_mgmt``
defaults of ``xl_parse.c`` and the per-device ``rdm_policy`` defaulting to the
policy of the global ``rdm=`` option, else ``strict``
(``libxl__device_pci_setdefault``).

Deliberate differences from libxlu:

* every error carries the file, line and column (libxlu reports the line of
  a syntax error only, and ``ERROR_INVAL`` for a bad PCI spec);
* a key given twice in the file, or a parameter given twice in one spec,
  is an error (``xl-pci-configuration(5)``: "at most once"; libxlu silently
  lets the last one win);
* the boolean spec options must be decimal integers, where libxlu's
  ``atoi`` turns garbage into 0;
* the address parse is :meth:`xenpci.pci.address.SBDF.parse`, which wants
  two hex digits for bus and device (libxlu's ``%x`` takes any number); the
  ``@VSLOT`` suffix is split off here (not by ``parse_xl_bdf``) so that each
  half's error gets its own column, and parsed as libxlu's ``parse_vslot``
  does (``%x``, at most 0x1f). Note that this makes the man page's own
  example ``36:00.0@20`` invalid -- as it is in real libxlu (0x20 > 0x1f).

A function of ``*`` (all functions of a multi-function device, libxl's
``vfunc_mask = LIBXL_PCI_FUNC_ALL``) gives ``PciSpec.all_functions = True``
with function 0 in ``sbdf``, as libxlu stores it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from xenpci.errors import XenpciError
from xenpci.pci.address import SBDF
from xenpci.pci.errors import AddressError

RdmPolicy = Literal["strict", "relaxed"]
CfgValue = str | int | list["CfgValue"]


class XlCfgError(XenpciError, ValueError):
    """A configuration file or spec string is malformed, located by line:column."""

    def __init__(self, path: str, line: int, column: int, reason: str) -> None:
        self.path = path
        self.line = line
        self.column = column
        self.reason = reason
        super().__init__(f"{path}:{line}:{column}: {reason}")


# -- lexer ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Token:
    """One lexeme; ``cols`` maps each char of a decoded string to its source column."""

    kind: str  # ID NUMBER STRING = += , ; [ ] NL EOF
    text: str
    line: int
    column: int
    cols: tuple[int, ...] = ()


_ID_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_NUM_RE: Final = re.compile(r"[0-9][0-9A-Za-z_.]*")
_OCTAL_RE: Final = re.compile(r"[0-7]{1,3}")
_HEX2_RE: Final = re.compile(r"[0-9A-Fa-f]{2}")
_SIMPLE_ESCAPES: Final = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}


def tokenize(text: str, path: str = "<string>") -> list[Token]:
    """Split an xl.cfg file into tokens; raises :class:`XlCfgError` on a bad lexeme."""
    toks: list[Token] = []
    i, line, col = 0, 1, 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            toks.append(Token("NL", c, line, col))
            i, line, col = i + 1, line + 1, 1
        elif c in " \t\r":
            i, col = i + 1, col + 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in "=,;[]":
            toks.append(Token(c, c, line, col))
            i, col = i + 1, col + 1
        elif c == "+" and text.startswith("+=", i):
            toks.append(Token("+=", "+=", line, col))
            i, col = i + 2, col + 2
        elif c in "\"'":
            tok, used = _lex_string(text, i, line, col, path)
            toks.append(tok)
            i, col = i + used, col + used
        elif (m := _ID_RE.match(text, i)) is not None:
            toks.append(Token("ID", m.group(), line, col))
            i, col = m.end(), col + len(m.group())
        elif (m := _NUM_RE.match(text, i)) is not None:
            toks.append(Token("NUMBER", m.group(), line, col))
            i, col = m.end(), col + len(m.group())
        else:
            raise XlCfgError(path, line, col, f"unexpected character {c!r}")
    toks.append(Token("EOF", "", line, col))
    return toks


def _lex_string(text: str, start: int, line: int, col: int, path: str) -> tuple[Token, int]:
    quote = text[start]
    out: list[str] = []
    cols: list[int] = []
    i = start + 1
    while True:
        if i >= len(text) or text[i] == "\n":
            raise XlCfgError(path, line, col, f"unterminated string (opened with {quote})")
        c = text[i]
        here = col + (i - start)
        if c == quote:
            return Token("STRING", "".join(out), line, col, tuple(cols)), i + 1 - start
        if c != "\\":
            out.append(c)
            cols.append(here)
            i += 1
            continue
        nxt = text[i + 1] if i + 1 < len(text) else ""
        if nxt in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[nxt])
            i += 2
        elif nxt == "x" and _HEX2_RE.fullmatch(text, i + 2, i + 4):
            out.append(chr(int(text[i + 2 : i + 4], 16)))
            i += 4
        elif (m := _OCTAL_RE.match(text, i + 1)) is not None:
            out.append(chr(int(m.group(), 8)))
            i = m.end()
        else:
            shown = nxt if nxt and nxt != "\n" else "end of line"
            raise XlCfgError(path, line, here, f"unknown escape sequence \\{shown}")
        cols.append(here)


# -- parser -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Node:
    """A parsed value with its position (lists keep their items' positions)."""

    value: str | int | tuple[Node, ...]
    line: int
    column: int
    cols: tuple[int, ...] = ()

    def plain(self) -> CfgValue:
        """The value without positions (lists become Python lists)."""
        if isinstance(self.value, tuple):
            return [item.plain() for item in self.value]
        return self.value


@dataclass(frozen=True, slots=True)
class Setting:
    """``KEY = VALUE`` and where the key stood."""

    key: str
    value: Node
    line: int
    column: int


def parse_number(text: str) -> int:
    """``strtol(text, 0)``-style: ``0x`` hex, leading ``0`` octal, else decimal."""
    low = text.lower()
    if low.startswith("0x"):
        return int(low[2:], 16)
    if len(low) > 1 and low.startswith("0"):
        return int(low[1:], 8)
    return int(low, 10)


class _Parser:
    def __init__(self, toks: list[Token], path: str) -> None:
        self.toks = toks
        self.pos = 0
        self.path = path

    def peek(self) -> Token:
        return self.toks[self.pos]

    def take(self) -> Token:
        tok = self.toks[self.pos]
        if tok.kind != "EOF":
            self.pos += 1
        return tok

    def fail(self, tok: Token, reason: str) -> XlCfgError:
        return XlCfgError(self.path, tok.line, tok.column, reason)

    def skip_nl(self) -> None:
        while self.peek().kind == "NL":
            self.take()

    def file(self) -> dict[str, Setting]:
        out: dict[str, Setting] = {}
        while True:
            tok = self.take()
            if tok.kind == "EOF":
                return out
            if tok.kind in ("NL", ";"):
                continue
            if tok.kind != "ID":
                raise self.fail(tok, f"expected a key, got {_describe(tok)}")
            op = self.take()
            if op.kind not in ("=", "+="):
                raise self.fail(op, f"expected '=' after {tok.text!r}, got {_describe(op)}")
            value = self.value()
            end = self.peek()
            if end.kind not in ("NL", ";", "EOF"):
                raise self.fail(end, f"expected end of setting, got {_describe(end)}")
            out[tok.text] = self.bind(out, tok, op, value)

    def bind(self, out: dict[str, Setting], key: Token, op: Token, value: Node) -> Setting:
        old = out.get(key.text)
        if op.kind == "=":
            if old is not None:
                raise self.fail(
                    key, f"duplicate key {key.text!r} (first set at {old.line}:{old.column})"
                )
            return Setting(key.text, value, key.line, key.column)
        # '+=' appends to a list or a string (libxlu's xlu__cfg_set_add)
        if old is None:
            return Setting(key.text, value, key.line, key.column)
        a, b = old.value.value, value.value
        if isinstance(a, tuple) and isinstance(b, tuple):
            merged = Node(a + b, old.value.line, old.value.column)
        elif isinstance(a, str) and isinstance(b, str):
            # a string spliced from two places has no single column map
            merged = Node(a + b, old.value.line, old.value.column)
        else:
            raise self.fail(op, f"'+=' on {key.text!r} needs two lists or two strings")
        return Setting(key.text, merged, old.line, old.column)

    def value(self) -> Node:
        tok = self.take()
        if tok.kind == "STRING":
            return Node(tok.text, tok.line, tok.column, tok.cols)
        if tok.kind == "NUMBER":
            try:
                return Node(parse_number(tok.text), tok.line, tok.column)
            except ValueError:
                raise self.fail(tok, f"bad number {tok.text!r}") from None
        if tok.kind == "[":
            items: list[Node] = []
            self.skip_nl()
            while self.peek().kind != "]":
                if self.peek().kind == "EOF":
                    raise self.fail(tok, "unterminated list: '[' never closed")
                items.append(self.value())
                self.skip_nl()
                sep = self.peek()
                if sep.kind == ",":
                    self.take()
                    self.skip_nl()
                elif sep.kind == "EOF":
                    raise self.fail(tok, "unterminated list: '[' never closed")
                elif sep.kind != "]":
                    raise self.fail(sep, f"expected ',' or ']' in list, got {_describe(sep)}")
            self.take()
            return Node(tuple(items), tok.line, tok.column)
        raise self.fail(tok, f"expected a value, got {_describe(tok)}")


def _describe(tok: Token) -> str:
    if tok.kind == "EOF":
        return "end of file"
    if tok.kind == "NL":
        return "end of line"
    if tok.kind == "STRING":
        return f"string {tok.text!r}"
    return repr(tok.text)


def parse_cfg(text: str, path: str = "<string>") -> dict[str, Setting]:
    """Parse an xl.cfg file into its settings, keyed by name, in file order."""
    return _Parser(tokenize(text, path), path).file()


# -- PCI_SPEC_STRING -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PciSpec:
    """One ``pci=[...]`` entry (libxl's ``libxl_device_pci``) after defaults.

    ``sbdf`` is None only for a spec naming an assignable device (``name=``).
    ``vslot`` is the requested virtual slot (``vdevfn >> 3``) or None.
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
        if self.name is not None and not self.name:
            raise ValueError("empty name")
        if self.all_functions and (self.sbdf is None or self.sbdf.function != 0):
            raise ValueError("all_functions needs a bdf with function 0")

    @property
    def vdevfn(self) -> int:
        """libxl's ``vdevfn`` (``vslot << 3``; 0 when no slot was requested)."""
        return 0 if self.vslot is None else self.vslot << 3


@dataclass(frozen=True, slots=True)
class PciDefaults:
    """The domain-wide defaults a spec's own keys override."""

    permissive: bool = False
    msitranslate: bool = False
    seize: bool = False
    power_mgmt: bool = False
    rdm_policy: RdmPolicy = "strict"


_BOOL_KEYS: Final = ("permissive", "msitranslate", "seize", "power_mgmt")
SPEC_KEYS: Final = frozenset(("bdf", "vslot", "name", "rdm_policy", *_BOOL_KEYS))
_VSLOT_RE: Final = re.compile(r"(?:0[xX])?[0-9A-Fa-f]{1,8}")
_INT_RE: Final = re.compile(r"[+-]?[0-9]{1,9}")


def parse_pci_spec(
    text: str,
    defaults: PciDefaults | None = None,
    *,
    path: str = "<spec>",
    line: int = 1,
    cols: tuple[int, ...] | None = None,
) -> PciSpec:
    """Parse one ``PCI_SPEC_STRING`` (``xlu_pci_parse_spec_string``).

    ``line``/``cols`` place errors in the file the string came from (``cols``
    gives the source column of each character); by default the columns are
    1-based offsets into ``text``, as for ``xl pci-attach DOM SPEC``.
    """
    d = defaults or PciDefaults()
    colmap = cols if cols is not None and len(cols) == len(text) else None

    def fail(offset: int, reason: str) -> XlCfgError:
        if colmap is None:
            column = offset + 1
        elif offset < len(colmap):
            column = colmap[offset]
        else:
            column = (colmap[-1] + 1) if colmap else 1
        return XlCfgError(path, line, column, reason)

    if not text:
        raise fail(0, "empty PCI_SPEC_STRING")
    values: dict[str, tuple[int, str]] = {}
    offset = 0
    parts = text.split(",")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()  # "[<key>=<value>,]*": a trailing comma is allowed
    for index, part in enumerate(parts):
        if "=" in part:
            key, _, val = part.partition("=")
            if key not in SPEC_KEYS:
                raise fail(offset, f"unknown PCI_SPEC_STRING option {key!r}")
            if key in values:
                raise fail(offset, f"{key!r} given more than once")
            values[key] = (offset + len(key) + 1, val)
        elif index == 0 and part:
            # the positional form: BDF[@VSLOT]
            bdf_text, sep, vslot_text = part.partition("@")
            values["bdf"] = (offset, bdf_text)
            if sep:
                values["vslot"] = (offset + len(bdf_text) + 1, vslot_text)
        else:
            why = "empty parameter" if not part else f"positional parameter {part!r} after options"
            raise fail(offset, why)
        offset += len(part) + 1

    def given(key: str) -> tuple[int, str] | None:
        # "Default values apply if ... it is specified with an empty value"
        got = values.get(key)
        return got if got is not None and got[1] else None

    sbdf: SBDF | None = None
    all_functions = False
    if (got := given("bdf")) is not None:
        off, raw = got
        bdf = raw
        if bdf.endswith(".*"):
            all_functions, bdf = True, bdf[:-1] + "0"
        try:
            sbdf = SBDF.parse(bdf)
        except AddressError as e:
            raise fail(off, f"bad BDF {raw!r}: {e.reason}") from None
    vslot: int | None = None
    if (got := given("vslot")) is not None:
        off, raw = got
        if not _VSLOT_RE.fullmatch(raw):
            raise fail(off, f"bad vslot {raw!r}: not a hex number")
        vslot = int(raw, 16)
        if vslot > 0x1F:
            raise fail(off, f"bad vslot {raw!r}: 0x{vslot:x} > 0x1f")
    flags: dict[str, bool] = {}
    for key in _BOOL_KEYS:
        if (got := given(key)) is not None:
            off, raw = got
            if not _INT_RE.fullmatch(raw):
                raise fail(off, f"{key}={raw!r} is not an integer")
            flags[key] = int(raw) != 0
        else:
            flags[key] = bool(getattr(d, key))
    rdm_policy: RdmPolicy = d.rdm_policy
    if (got := given("rdm_policy")) is not None:
        off, raw = got
        if raw == "strict":
            rdm_policy = "strict"
        elif raw == "relaxed":
            rdm_policy = "relaxed"
        else:
            raise fail(off, f"unknown RDM policy {raw!r} (strict or relaxed)")
    name = got[1] if (got := given("name")) is not None else None
    if (sbdf is None) == (name is None):
        raise fail(0, "exactly one of bdf and name must be given")
    return PciSpec(
        sbdf=sbdf,
        vslot=vslot,
        permissive=flags["permissive"],
        msitranslate=flags["msitranslate"],
        seize=flags["seize"],
        power_mgmt=flags["power_mgmt"],
        rdm_policy=rdm_policy,
        name=name,
        all_functions=all_functions,
    )


# -- domain configuration -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DomainConfig:
    """What the toolstack needs from an xl.cfg file; the rest is in ``extra``.

    ``memory_mib`` is None when the file does not set ``memory`` (libxl then
    applies its own default).
    """

    name: str
    memory_mib: int | None = None
    vcpus: int = 1
    pci: tuple[PciSpec, ...] = ()
    extra: dict[str, CfgValue] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a domain needs a name")
        if self.memory_mib is not None and self.memory_mib <= 0:
            raise ValueError(f"memory {self.memory_mib} MiB")
        if self.vcpus <= 0:
            raise ValueError(f"vcpus {self.vcpus}")


_CONSUMED: Final = frozenset(
    {"name", "memory", "vcpus", "pci", "rdm"} | {f"pci_{k}" for k in _BOOL_KEYS}
)


def load_domain_config(text: str, path: str = "<string>") -> DomainConfig:
    """Parse an xl.cfg file's text into a :class:`DomainConfig`."""
    settings = parse_cfg(text, path)

    def fail(node: Node, reason: str) -> XlCfgError:
        return XlCfgError(path, node.line, node.column, reason)

    def get_int(key: str, minimum: int) -> int | None:
        s = settings.get(key)
        if s is None:
            return None
        v = s.value.value
        if not isinstance(v, int):
            raise fail(s.value, f"{key} must be a number")
        if v < minimum:
            raise fail(s.value, f"{key} must be at least {minimum}, got {v}")
        return v

    name_setting = settings.get("name")
    if name_setting is None:
        raise XlCfgError(path, 1, 1, "mandatory key 'name' is missing")
    name = name_setting.value.value
    if not isinstance(name, str):
        raise fail(name_setting.value, "name must be a string")
    if not name:
        raise fail(name_setting.value, "name is empty")
    flags = {k: bool(get_int(f"pci_{k}", 0)) for k in _BOOL_KEYS}
    defaults = PciDefaults(
        permissive=flags["permissive"],
        msitranslate=flags["msitranslate"],
        seize=flags["seize"],
        power_mgmt=flags["power_mgmt"],
        rdm_policy=_rdm_policy(settings.get("rdm"), path),
    )

    specs: list[PciSpec] = []
    pci = settings.get("pci")
    if pci is not None:
        if not isinstance(pci.value.value, tuple):
            raise fail(pci.value, "pci must be a list of PCI_SPEC_STRINGs")
        for item in pci.value.value:
            if not isinstance(item.value, str):
                raise fail(item, "each pci entry must be a string")
            specs.append(
                parse_pci_spec(item.value, defaults, path=path, line=item.line, cols=item.cols)
            )
    extra = {k: s.value.plain() for k, s in settings.items() if k not in _CONSUMED}
    return DomainConfig(
        name=name,
        memory_mib=get_int("memory", 1),
        vcpus=get_int("vcpus", 1) or 1,
        pci=tuple(specs),
        extra=extra,
    )


def load_domain_config_file(path: str | Path) -> DomainConfig:
    """Read and parse an xl.cfg file."""
    p = Path(path)
    return load_domain_config(p.read_text(encoding="utf-8"), str(p))


def _rdm_policy(setting: Setting | None, path: str) -> RdmPolicy:
    """The ``policy=`` of ``rdm="strategy=host,policy=relaxed"`` (``xlu_rdm_parse``)."""
    if setting is None:
        return "strict"
    node = setting.value
    if not isinstance(node.value, str):
        raise XlCfgError(path, node.line, node.column, "rdm must be a string")
    policy: RdmPolicy = "strict"
    offset = 0
    for part in node.value.split(","):
        key, eq, val = part.partition("=")
        col = node.cols[offset] if offset < len(node.cols) else node.column
        if not eq or key not in ("strategy", "policy"):
            raise XlCfgError(path, node.line, col, f"unknown rdm option {part!r}")
        if key == "strategy" and val != "host":
            raise XlCfgError(path, node.line, col, f"unknown rdm strategy {val!r}")
        if key == "policy":
            if val not in ("strict", "relaxed"):
                raise XlCfgError(path, node.line, col, f"unknown RDM policy {val!r}")
            policy = "strict" if val == "strict" else "relaxed"
        offset += len(part) + 1
    return policy
