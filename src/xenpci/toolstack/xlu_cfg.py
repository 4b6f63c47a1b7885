"""The xl.cfg file syntax and its accessors, as libxlutil 4.17 reads them.

Mirrors ``tools/libs/util/libxlu_cfg_l.l`` (the flex lexer),
``libxlu_cfg_y.y`` (the bison grammar) and the accessors of
``libxlu_cfg.c`` (``xlu_cfg_get_string``/``_long``/``_list``, ``+=``
concatenation, ``dequote``). The rules that decide what is accepted:

* a key is ``[a-z][._0-9a-z]*`` (no capitals, no leading ``_``);
* a NUMBER ``[0-9][0-9a-fx]*`` is kept as its text, exactly like a quoted
  string: ``memory = 64`` and ``memory = "64"`` are the same setting, and
  :func:`get_long` converts either with ``strtol(s, 0)`` rules;
* only space and tab separate tokens: a CR (a CRLF file) is a lexical error,
  and so is a ``# comment`` on the last line without a final newline
  (the lexer's comment rule ends in ``\\n``);
* a key given again replaces the earlier one (``find`` returns the newest);
  ``+=`` concatenates with the newest earlier value of the same type;
* any lexical or syntax error rejects the whole file -- except that a stray
  character as the very last byte of a file (``memory = 64M`` without a
  final newline, a lone ``#`` or quote) is silently dropped: the lexer
  reports a lexical error only when it matches the text *after* the bad
  character. We follow that, as refusing would reject files xl accepts.

Deliberate differences (listed for users in
:data:`xenpci.toolstack.xlcfg.LIBXLUTIL_DIVERGENCES`):

* ``\\x`` escapes: libxlutil's ``dequote`` skips the first hex digit and then
  demands more digits than it lets itself read, so every ``\\x`` is an error.
  We reject ``\\x`` too, with a message saying so (same result).
* octal-looking escapes (``\\1`` ..): libxlutil reads up to three more
  characters as *decimal*, needs at least two of them to be digits, and
  then stores nothing. We follow that exactly (the escape vanishes), since
  rejecting it would refuse files xl accepts.
* a NUL character: libxlutil aborts on an assertion when one is inside a
  string and calls it a lexical error elsewhere; we reject it everywhere.
* lists nested deeper than :data:`MAX_LIST_DEPTH` are refused (libxlutil
  refuses from about 5000 levels, "memory exhausted");
* errors name a line and column; libxlutil reports a line only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from xenpci.errors import XenpciError

# libxlutil's bison stack (YYMAXDEPTH 10000, two entries a level) gives out
# near 5000 nested lists; ours are recursive Python values, so we stop far
# earlier -- no real xl.cfg nests more than two.
MAX_LIST_DEPTH: Final = 200
LONG_MAX: Final = (1 << 63) - 1
LONG_MIN: Final = -(1 << 63)
C_SPACE: Final = " \t\n\v\f\r"  # isspace() in the C locale
_LOWER: Final = frozenset("abcdefghijklmnopqrstuvwxyz")
_IDENT_REST: Final = _LOWER | frozenset("._0123456789")
_NUMBER_REST: Final = frozenset("0123456789abcdefx")
_DIGITS: Final = frozenset("0123456789")
# characters libxlutil flags as "looks like Python" ([+-.():] in the lexer)
_PYTHONISH: Final = frozenset("+-.():")
_SIMPLE_ESCAPES: Final = {
    '"': '"',
    "'": "'",
    "\\": "\\",
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
}


class XlCfgError(XenpciError, ValueError):
    """A configuration file or spec string is malformed, located by line:column.

    ``exit_code`` is what xl exits with for this error (1 = ``EXIT_FAILURE``
    for a file that does not parse, as ``parse_config_data``); subclasses for
    PCI specs carry xl's 2 (command line) or ``-rc`` (inside a file).
    """

    exit_code: int = 1

    def __init__(
        self, path: str, line: int, column: int, reason: str, *, message: str | None = None
    ) -> None:
        self.path = path
        self.line = line
        self.column = column
        self.reason = reason
        super().__init__(message if message is not None else f"{path}:{line}:{column}: {reason}")


# -- values -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Node:
    """A value (an atom's text, or a list of values) and where it starts.

    ``cols`` maps each character of a quoted string to its source column, so
    errors found later inside the string (a bad PCI spec) can be placed.
    """

    value: str | tuple[Node, ...]
    line: int
    column: int
    cols: tuple[int, ...] = ()

    def plain(self) -> CfgValue:
        """The value without positions (lists become Python lists)."""
        if isinstance(self.value, tuple):
            return [item.plain() for item in self.value]
        return self.value


CfgValue = str | list["CfgValue"]


@dataclass(frozen=True, slots=True)
class Setting:
    """``KEY = VALUE`` or ``KEY += VALUE`` (``XLU_ConfigSetting``)."""

    key: str
    value: Node
    line: int
    column: int
    append: bool = False  # XLU_OP_ADDITION: get_long refuses it


# -- lexer ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # IDENT NUMBER STRING = += , ; [ ] NL EOF
    text: str
    line: int
    column: int
    cols: tuple[int, ...] = ()


def _lex_error(path: str, line: int, col: int, what: str) -> XlCfgError:
    return XlCfgError(path, line, col, f"lexical error: {what}")


def tokenize(text: str, path: str = "<string>") -> list[Token]:
    """Split an xl.cfg file into tokens as ``libxlu_cfg_l.l`` does."""
    toks: list[Token] = []
    i, line, col = 0, 1, 1
    n = len(text)
    while i < n:
        c = text[i]
        if i == n - 1 and "\0" < c < "\x80" and not _ends_token(c):
            # flex reports a lexical error only when the next match in its
            # error state runs; after the last byte none does: dropped.
            # (A non-ASCII character is several bytes: the error fires.)
            break
        if c == "\n":
            toks.append(Token("NL", c, line, col))
            i, line, col = i + 1, line + 1, 1
        elif c in " \t":
            i, col = i + 1, col + 1
        elif c == "#":
            end = text.find("\n", i)
            if end < 0:
                raise _lex_error(path, line, col, "a comment must end with a newline")
            col += end - i
            i = end  # the newline is the token
        elif c in ",;[]=":
            toks.append(Token(c, c, line, col))
            i, col = i + 1, col + 1
        elif c == "+" and text.startswith("+=", i):
            toks.append(Token("+=", "+=", line, col))
            i, col = i + 2, col + 2
        elif c in "\"'":
            tok, used = _lex_string(text, i, line, col, path)
            toks.append(tok)
            i, col = i + used, col + used
        elif c in _LOWER or c in _DIGITS:
            rest = _IDENT_REST if c in _LOWER else _NUMBER_REST
            j = i + 1
            while j < n and text[j] in rest:
                j += 1
            toks.append(Token("IDENT" if c in _LOWER else "NUMBER", text[i:j], line, col))
            i, col = j, col + (j - i)
        else:
            shown = {"\r": "\\r (CRLF line endings?)", "\0": "NUL"}.get(c, repr(c))
            hint = " (xl.cfg is not Python)" if c in _PYTHONISH else ""
            raise _lex_error(path, line, col, f"unexpected character {shown}{hint}")
    toks.append(Token("EOF", "", line, col))
    return toks


def _ends_token(c: str) -> bool:
    """Whether ``c`` alone, as a file's last character, is a token or a blank."""
    return c in "\n \t,;[]=" or c in _LOWER or c in _DIGITS


def _lex_string(text: str, start: int, line: int, col: int, path: str) -> tuple[Token, int]:
    """A quoted string: lexed as ``'([^'\\\\\\n]|\\\\.)*'``, then ``xlu__cfgl_dequote``."""
    quote = text[start]
    # the lexeme first: it decides whether this is a string at all
    i = start + 1
    while True:
        if i >= len(text) or text[i] == "\n":
            raise _lex_error(path, line, col, f"unterminated string (opened with {quote})")
        if text[i] == quote:
            break
        if text[i] == "\\":
            if i + 1 >= len(text) or text[i + 1] == "\n":
                raise _lex_error(path, line, col, f"unterminated string (opened with {quote})")
            i += 2
        else:
            i += 1
    end = i  # index of the closing quote
    body = text[start + 1 : end]
    if "\0" in body:
        raise _lex_error(path, line, col + 1 + body.index("\0"), "NUL inside a string")
    out: list[str] = []
    cols: list[int] = []
    i = start + 1
    while i < end:
        c = text[i]
        here = col + (i - start)
        if c != "\\":
            out.append(c)
            cols.append(here)
            i += 1
            continue
        nc = text[i + 1]
        if nc in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[nc])
            cols.append(here)
            i += 2
        elif nc == "x":
            raise XlCfgError(
                path, line, here, "\\x escapes are not supported (libxlutil rejects every one)"
            )
        elif "0" <= nc <= "7":
            # dequote's NUMERIC_CHAR(1,3,10): strtoul(next 3 chars, base 10)
            # must consume 2 or more of them; they are skipped, nothing stored.
            used = _strtoul10_len(text[i + 2 : i + 5])
            if used <= 1:
                raise XlCfgError(
                    path, line, here, "invalid digit after backslash octal numerical escape"
                )
            i += 2 + used
        else:
            raise XlCfgError(path, line, here, f"invalid character after backslash: {nc!r}")
    return Token("STRING", "".join(out), line, col, tuple(cols)), end + 1 - start


def _strtoul10_len(buf: str) -> int:
    """How many characters of ``buf`` ``strtoul(buf, &ep, 10)`` consumes."""
    j = 0
    while j < len(buf) and buf[j] in C_SPACE:
        j += 1
    if j < len(buf) and buf[j] in "+-":
        j += 1
    k = j
    while k < len(buf) and buf[k] in _DIGITS:
        k += 1
    return k if k > j else 0


# -- parser -----------------------------------------------------------------


def _describe(tok: Token) -> str:
    if tok.kind == "EOF":
        return "end of file"
    if tok.kind == "NL":
        return "end of line"
    if tok.kind == "STRING":
        return f"string {tok.text!r}"
    return repr(tok.text)


class _Parser:
    """The grammar of ``libxlu_cfg_y.y``, with ``xlu__cfg_set_store``'s merge."""

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
        return XlCfgError(self.path, tok.line, tok.column, f"syntax error: {reason}")

    def nlok(self) -> None:
        while self.peek().kind == "NL":
            self.take()

    def file(self) -> list[Setting]:
        """Every setting in file order (earlier ones shadowed, not dropped)."""
        out: list[Setting] = []
        while True:
            tok = self.take()
            if tok.kind == "EOF":
                return out
            if tok.kind in ("NL", ";"):
                continue
            if tok.kind != "IDENT":
                raise self.fail(tok, f"expected a key, got {_describe(tok)}")
            op = self.take()
            if op.kind not in ("=", "+="):
                raise self.fail(op, f"expected '=' after {tok.text!r}, got {_describe(op)}")
            value = self.value()
            end = self.peek()
            if end.kind not in ("NL", ";", "EOF"):
                raise self.fail(end, f"expected end of setting, got {_describe(end)}")
            out.append(self.store(out, tok, op, value))

    def store(self, done: list[Setting], key: Token, op: Token, value: Node) -> Setting:
        if op.kind == "+=":
            prev = next((s for s in reversed(done) if s.key == key.text), None)
            if prev is not None:
                a, b = prev.value.value, value.value
                if isinstance(a, tuple) != isinstance(b, tuple):
                    raise XlCfgError(
                        self.path,
                        op.line,
                        op.column,
                        f'can\'t add [list] to "string" or vice versa ({key.text!r})',
                    )
                if isinstance(a, tuple) and isinstance(b, tuple):
                    value = Node(a + b, value.line, value.column)
                elif isinstance(a, str) and isinstance(b, str):
                    cols = prev.value.cols + value.cols
                    value = Node(a + b, value.line, value.column, cols)
        return Setting(key.text, value, value.line, key.column, op.kind == "+=")

    def value(self, depth: int = 0) -> Node:
        tok = self.take()
        if tok.kind in ("STRING", "NUMBER"):
            cols = tok.cols or tuple(range(tok.column, tok.column + len(tok.text)))
            return Node(tok.text, tok.line, tok.column, cols)
        if tok.kind != "[":
            raise self.fail(tok, f"expected a value, got {_describe(tok)}")
        if depth >= MAX_LIST_DEPTH:
            raise self.fail(tok, f"lists nested deeper than {MAX_LIST_DEPTH} levels")
        items: list[Node] = []
        self.nlok()
        while self.peek().kind != "]":
            if self.peek().kind == "EOF":
                raise self.fail(tok, "unterminated list: '[' never closed")
            items.append(self.value(depth + 1))
            self.nlok()
            sep = self.peek()
            if sep.kind == ",":
                self.take()
                self.nlok()
            elif sep.kind == "EOF":
                raise self.fail(tok, "unterminated list: '[' never closed")
            elif sep.kind != "]":
                raise self.fail(sep, f"expected ',' or ']' in list, got {_describe(sep)}")
        self.take()
        return Node(tuple(items), tok.line, tok.column)


class XluConfig:
    """A parsed file (``XLU_Config``) with libxlutil's accessors.

    Each accessor returns None where libxlutil returns an error, and appends
    libxlutil's warning text to :attr:`warnings` unless ``dont_warn``.
    """

    def __init__(self, settings: list[Setting], source: str) -> None:
        self.source = source
        self.warnings: list[str] = []
        self._newest: dict[str, Setting] = {}
        for s in settings:
            self._newest[s.key] = s  # find() returns the most recent setting

    def find(self, key: str) -> Setting | None:
        return self._newest.get(key)

    def settings(self) -> list[Setting]:
        """The setting in force for each key, in order of first appearance."""
        return list(self._newest.values())

    def _warn(self, setting: Setting, text: str, dont_warn: bool) -> None:
        if not dont_warn:
            self.warnings.append(f"{self.source}:{setting.line}: warning: {text}")

    def _find_single(self, key: str, dont_warn: bool) -> tuple[Setting, str] | None:
        """``find_atom``: the setting and its single value; a list is refused with a warning."""
        s = self.find(key)
        if s is None:
            return None
        if isinstance(s.value.value, tuple):
            self._warn(s, f"parameter `{key}' is a list but should be a single value", dont_warn)
            return None
        return s, s.value.value

    def get_string(self, key: str, dont_warn: bool = False) -> str | None:
        """``xlu_cfg_get_string`` (a list is refused with a warning)."""
        found = self._find_single(key, dont_warn)
        return None if found is None else found[1]

    def get_long(self, key: str, dont_warn: bool = False) -> int | None:
        """``xlu_cfg_get_long``: ``strtol(s, &ep, 0)``, whole string, no ``+=``."""
        found = self._find_single(key, dont_warn)
        if found is None:
            return None
        s, text = found
        if s.append:
            self._warn(s, f"can't use += with numbers for parameter `{key}'", dont_warn)
            return None
        value, status = strtol0(text)
        if status == "range":
            self._warn(
                s,
                f"parameter `{key}' could not be parsed as a number: Numerical result out of range",
                dont_warn,
            )
            return None
        if status == "invalid":
            self._warn(s, f"parameter `{key}' is not a valid number", dont_warn)
            return None
        return value

    def get_list(self, key: str, dont_warn: bool = False) -> tuple[Node, ...] | None:
        """``xlu_cfg_get_list`` (a single value is refused with a warning)."""
        s = self.find(key)
        if s is None:
            return None
        if not isinstance(s.value.value, tuple):
            self._warn(s, f"parameter `{key}' is a single value but should be a list", dont_warn)
            return None
        return s.value.value


def c_digits(digits: str, base: int) -> int:
    """The value of a C digit string, capped just past 64 bits.

    C saturates on overflow; capping first keeps a hostile 10000-digit
    number from costing time (and from Python's int-from-string limit).
    """
    digits = digits.lstrip("0") or "0"
    if len(digits) > 66:  # more than 64 bits in any base >= 2
        return 1 << 65
    return int(digits, base)


def c_sign(text: str, i: int = 0) -> tuple[int, bool]:
    """Skip what every C number conversion skips: ``isspace``, then one ``+``/``-``.

    Returns the index of the first digit and whether the sign was ``-``.
    """
    n = len(text)
    while i < n and text[i] in C_SPACE:
        i += 1
    neg = i < n and text[i] == "-"
    if i < n and text[i] in "+-":
        i += 1
    return i, neg


def strtol0(text: str) -> tuple[int, Literal["ok", "range", "invalid"]]:
    """``strtol(text, &ep, 0)`` judged as ``xlu_cfg_get_bounded_long`` does.

    ``range`` (``ERANGE``) is checked first, as there, even when characters
    follow the digits; ``invalid`` is no digits or anything after them.
    """
    n = len(text)
    i, neg = c_sign(text)
    base, digits = 10, "0123456789"
    if text.startswith(("0x", "0X"), i) and i + 2 < n and text[i + 2] in _HEX:
        base, digits, i = 16, "0123456789abcdefABCDEF", i + 2
    elif i < n and text[i] == "0":
        base, digits = 8, "01234567"
    j = i
    while j < n and text[j] in digits:
        j += 1
    if j == i:
        return 0, "invalid"
    value = c_digits(text[i:j], base) * (-1 if neg else 1)
    if not LONG_MIN <= value <= LONG_MAX:
        return value, "range"
    return value, "ok" if j == n else "invalid"


_HEX: Final = frozenset("0123456789abcdefABCDEF")


def parse_cfg(text: str, path: str = "<string>") -> XluConfig:
    """Parse an xl.cfg file (``xlu_cfg_readdata``); raises :class:`XlCfgError`."""
    return XluConfig(_Parser(tokenize(text, path), path).file(), path)


def decode_config(data: bytes, path: str) -> str:
    """The text of a config file, or a one-line error if it is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise XlCfgError(
            path, line, column, f"not UTF-8 text (byte 0x{data[e.start]:02x})"
        ) from None
