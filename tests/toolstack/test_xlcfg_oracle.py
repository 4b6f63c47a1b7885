"""xl.cfg and PCI_SPEC_STRING parsing against Debian's real libxlutil 4.17.

Every input goes to the oracle (``xlu_oracle.c`` linked with libxlutil and
libxenlight from libxen-dev) and to ours; accept/reject and the parsed
result must agree: BDF, vdevfn, function mask, every option, and the file's
``pci_*``/``rdm`` defaults as xl's ``parse_config_data`` applies them
(mirrored in the helper from tools/xl/xl_parse.c). The only differences
allowed are the documented ones in ``LIBXLUTIL_DIVERGENCES``, each pinned by
a test below that also checks libxlutil still behaves the way the choice
assumes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.toolstack.xlu_oracle import (
    FUNC_ALL,
    POLICY_INVALID,
    POLICY_RELAXED,
    POLICY_STRICT,
    XluOracle,
    build,
)
from xenpci.toolstack.xlcfg import (
    LIBXLUTIL_DIVERGENCES,
    SPEC_KEYS,
    BdfError,
    CfgPciSpecError,
    PciSpec,
    PciSpecError,
    XlCfgError,
    load_domain_config,
    parse_bdf,
    parse_cfg,
    parse_pci_spec,
    parse_rdm,
    pci_devices,
)
from xenpci.toolstack.xlu_pci import PciDefaults

pytestmark = pytest.mark.interop

ERROR_INVAL, ERROR_FAIL = -6, -3
EINVAL = 22


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XluOracle]:
    o = XluOracle(build(tmp_path_factory.mktemp("xlu")))
    yield o
    o.close()


# -- what each side says, in one comparable shape --------------------------------

_POLICY = {POLICY_INVALID: "strict", POLICY_STRICT: "strict", POLICY_RELAXED: "relaxed"}


def oracle_view(d: dict[str, Any]) -> tuple[Any, ...]:
    """A libxl_device_pci after libxl__device_pci_setdefault (INVALID policy -> strict)."""
    if d["name"] is not None:
        where: Any = ("name", d["name"])
        mask_all = False
    else:
        where = ("bdf", d["domain"], d["bus"], d["dev"], d["func"])
        mask_all = d["vfunc_mask"] == FUNC_ALL
    flags = tuple(bool(d[k]) for k in ("permissive", "msitranslate", "seize", "power_mgmt"))
    return (where, d["vdevfn"], mask_all, flags, _POLICY[d["rdm_policy"]])


def our_view(s: PciSpec) -> tuple[Any, ...]:
    if s.sbdf is None:
        where: Any = ("name", s.name)
    else:
        where = ("bdf", s.sbdf.segment, s.sbdf.bus, s.sbdf.device, s.sbdf.function)
    flags = (s.permissive, s.msitranslate, s.seize, s.power_mgmt)
    return (where, s.vdevfn, s.all_functions, flags, s.rdm_policy)


def compare_spec(oracle: XluOracle, text: str) -> None:
    theirs = oracle.spec(text)
    try:
        ours = parse_pci_spec(text)
    except PciSpecError as e:
        assert e.exit_code == 2
        if e.libxlutil_ub:
            return  # undefined in libxlutil: our documented choice is to reject
        assert theirs["rc"] != 0, f"we reject {text!r} ({e}) but libxlutil accepts it"
        assert e.rc == theirs["rc"], text
        return
    assert theirs["rc"] == 0, f"we accept {text!r} but libxlutil rejects it"
    assert our_view(ours) == oracle_view(theirs), text


# -- the examples of issue 10 §1 ---------------------------------------------------

REJECTED_BY_XL = ["03:00.0@", "03:00.0,vslot=", "bdf=,name=nic"]
ACCEPTED_BY_XL = [
    "3:0.0",
    "0:03:00.0",
    "03:00.0@ 5",
    "03:00.0,permissive=yes",
    "03:00.0,rdm_policy=RELAXED",
    "03:00.0,permissive=,seize=1,seize=0",
    "03:00.0,bdf=04:00.1",
    "name=a,name=b",
]


@pytest.mark.parametrize("text", REJECTED_BY_XL)
def test_issue_rejections(oracle: XluOracle, text: str) -> None:
    assert oracle.spec(text)["rc"] == ERROR_INVAL
    with pytest.raises(PciSpecError) as ei:
        parse_pci_spec(text)
    assert ei.value.exit_code == 2
    assert str(ei.value).startswith(f'malformed PCI_SPEC_STRING "{text}": column ')
    assert "Error" not in str(ei.value)


@pytest.mark.parametrize("text", ACCEPTED_BY_XL)
def test_issue_acceptances(oracle: XluOracle, text: str) -> None:
    assert oracle.spec(text)["rc"] == 0
    compare_spec(oracle, text)


def test_issue_results_by_hand() -> None:
    """The same examples against values read off xl-pci-configuration(5)/libxlu_pci.c."""
    assert parse_pci_spec("3:0.0") == parse_pci_spec("0000:03:00.0")
    assert parse_pci_spec("03:00.0@ 5").vslot == 5
    assert not parse_pci_spec("03:00.0,permissive=yes").permissive  # atoi("yes") == 0
    assert parse_pci_spec("03:00.0,rdm_policy=RELAXED").rdm_policy == "relaxed"
    assert parse_pci_spec("03:00.0,bdf=04:00.1").sbdf is not None
    assert str(parse_pci_spec("03:00.0,bdf=04:00.1").sbdf) == "0000:04:00.1"
    assert parse_pci_spec("name=a,name=b").name == "b"
    on = PciDefaults(permissive=True)
    assert not parse_pci_spec("03:00.0,permissive=", on).permissive


CORNERS = [
    # accepted by libxlutil in surprising ways (glibc %x, atoi, parse_key_val)
    "03:00.0x7",
    "3:0x1.0",
    "3: 1.0",
    "3:1. 2",
    "3:+1.0",
    "3:-0.0",
    "100000003:00.0",
    "03:00.0@0x",
    "03:00.0@1f",
    "bdf=03:00.0@3",
    "bdf=03:00.0garbage",
    "bdf=03:00.0xg",
    "03:00.0,vslot=5zz",
    "03:00.0,permissive=4294967296",
    "03:00.0,permissive= +1",
    "03:00.0,permissive=-1",
    "03:00.0,rdm_policy=invalid",
    "03:00.0,rdm_policy=Strict",
    "03:00.*",
    "03:00.*@2,msitranslate=1",
    "03:00.*,bdf=03:00.1",
    "name=",
    "name=x,vslot=3",
    "03:00.0,",
    "0000:00:1f.7",
    "ffff:ff:1f.7",
    # rejected
    "",
    ",",
    "03:00.0,,",
    "03:00.0,seize",
    "03:00.0,=1",
    "03:00.0,foo=1",
    "03:00.0,rdm_policy=",
    "03:00.0,rdm_policy=lax",
    "03:00.0xg",
    "03:00.0@20",
    "03:00.0@-1",
    "10000:00:00.0",
    "00:100.0",
    "00:20.0",
    "00:00.8",
    " 03:00.0",
    "03:00.0 ",
    "seize=1",
    "name=x,bdf=03:00.0",
    "03:00.0,name=x",
    "1:2:3:4.0",
    "bdf=03:00.0,bdf=",
]


@pytest.mark.parametrize("text", CORNERS)
def test_corner_cases_agree(oracle: XluOracle, text: str) -> None:
    compare_spec(oracle, text)


def test_rdm_policy_error_code_is_error_fail(oracle: XluOracle) -> None:
    """An unknown rdm_policy is ERROR_FAIL (xl then exits 3 for it in a file)."""
    assert oracle.spec("03:00.0,rdm_policy=lax")["rc"] == ERROR_FAIL
    with pytest.raises(PciSpecError) as ei:
        parse_pci_spec("03:00.0,rdm_policy=lax")
    assert ei.value.rc == ERROR_FAIL and ei.value.exit_code == 2  # command line: always 2
    with pytest.raises(CfgPciSpecError) as ci:
        load_domain_config('name="g"\npci=["03:00.0,rdm_policy=lax"]\n', "g.cfg")
    assert ci.value.exit_code == 3


# -- generated spec strings -------------------------------------------------------

_hexish = st.text(alphabet="0123456789abcdefABCxX", min_size=0, max_size=4)
_bdfish = st.one_of(
    st.builds(
        lambda d, b, v, f, sp: f"{d}{b}:{sp}{v}.{f}",
        st.sampled_from(["", "0:", "0000:", "ffff:", "1:"]),
        _hexish,
        _hexish,
        st.one_of(_hexish, st.just("*")),
        st.sampled_from(["", "", " ", "+", "-"]),
    ),
    st.text(alphabet="0123456789abcdefx:.* @+-", max_size=12),
)
_value = st.one_of(
    _hexish,
    st.sampled_from(["", "0", "1", "yes", " 1", "-1", "strict", "relaxed", "RELAXED", "x"]),
    _bdfish,
)
_key = st.sampled_from([*sorted(SPEC_KEYS), "", "foo", "BDF"])
_kv = st.builds(lambda k, v: f"{k}={v}", _key, _value)
_spec = st.builds(
    lambda head, vslot, rest, tail: head + vslot + "".join("," + kv for kv in rest) + tail,
    st.one_of(_bdfish, _kv),
    st.one_of(st.just(""), st.builds(lambda v: "@" + v, _value)),
    st.lists(st.one_of(_kv, _bdfish), max_size=3),
    st.sampled_from(["", "", ",", ",,"]),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_spec)
def test_generated_specs_agree(oracle: XluOracle, text: str) -> None:
    compare_spec(oracle, text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_bdfish)
def test_generated_bdfs_agree(oracle: XluOracle, text: str) -> None:
    """``xlu_pci_parse_bdf`` (pci-assignable-add/remove) against ours."""
    theirs = oracle.bdf(text)
    try:
        sbdf, all_functions = parse_bdf(text)
    except BdfError as e:
        assert e.exit_code == 2 and str(e).startswith(f'malformed BDF "{text}"')
        if not e.libxlutil_ub:
            assert theirs["rc"] != 0, text
        return
    assert theirs["rc"] == 0, text
    got = (sbdf.segment, sbdf.bus, sbdf.device, sbdf.function, all_functions)
    want = (theirs["domain"], theirs["bus"], theirs["dev"], theirs["func"])
    assert got == (*want, theirs["vfunc_mask"] == FUNC_ALL), text


# -- libxlutil's bugs: each choice pinned -----------------------------------------------


def test_divergences_are_documented() -> None:
    for topic in ('"\\x"', '"\\NNN"', '"03:00"', "rdm=", "NUL", "UTF-8", "type=hvm"):
        assert topic in LIBXLUTIL_DIVERGENCES, topic


@pytest.mark.parametrize("text", ["03:00", "0:03:00", "03:00,seize=1", "bdf=03:00", "3:4x"])
def test_bdf_without_function_is_rejected_as_undefined(text: str) -> None:
    """libxlutil reads an unset ``%n`` for these: we reject them, saying why."""
    with pytest.raises(PciSpecError) as ei:
        parse_pci_spec(text)
    assert ei.value.libxlutil_ub and "'.FUNC'" in ei.value.reason


def test_rdm_policy_inversion_pinned(oracle: XluOracle) -> None:
    # libxlutil: a valid policy fails the whole rdm= option ...
    for text in ("strategy=host,policy=relaxed", "policy=strict", "policy=RELAXED"):
        assert oracle.rdm(text)["rc"] == ERROR_INVAL, text
    # ... and an unknown one "succeeds" without touching the policy.
    got = oracle.rdm("strategy=host,policy=lax")
    assert got["rc"] == 0 and got["policy"] == POLICY_INVALID
    assert "Unknown RDM policy: lax" in got["report"]
    # ours: the evident intent
    assert parse_rdm("strategy=host,policy=relaxed") == (True, "relaxed")
    assert parse_rdm("policy=STRICT") == (True, "strict")
    assert parse_rdm("strategy=host,policy=lax") == (False, None)
    cfg = load_domain_config(
        'name="g"\nrdm="strategy=host,policy=relaxed"\npci=["03:00.0","04:00.0,rdm_policy=strict"]'
    )
    assert [s.rdm_policy for s in cfg.pci] == ["relaxed", "strict"]
    bad = load_domain_config('name="g"\nrdm="policy=lax"\npci=["03:00.0"]', "g.cfg")
    assert bad.pci[0].rdm_policy == "strict"
    assert bad.warnings == (
        'g.cfg:2: warning: rdm="policy=lax" not understood '
        "(strategy=host,policy=strict|relaxed): ignored",
    )


_rdm_text = st.lists(
    st.builds(
        lambda k, v: f"{k}={v}" if k else v,
        st.sampled_from(["strategy", "strategy", "", "x", "policy="]),
        st.sampled_from(["host", "HOST", "", "host=1", "ignore"]),
    ),
    max_size=3,
).map(",".join) | st.sampled_from(["", ",", "strategy=host,", "=host"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_rdm_text)
def test_generated_rdm_without_policy_agrees(oracle: XluOracle, text: str) -> None:
    """Where the inverted check is not reached (no ``policy=``), we agree exactly."""
    assume("policy=" not in text)
    theirs = oracle.rdm(text)
    ok, policy = parse_rdm(text)
    assert ok == (theirs["rc"] == 0), text
    assert policy is None


def test_hex_escape_always_fails_in_libxlutil(oracle: XluOracle) -> None:
    for text in ('a="\\x41"\n', 'a="\\x414"\n', "a='\\x'\n", 'a="\\xzz"\n'):
        assert oracle.cfg(text, ["a"])["rc"] == EINVAL, text
        with pytest.raises(XlCfgError, match=r"\\x escapes are not supported"):
            parse_cfg(text)


def test_octal_escape_vanishes_as_in_libxlutil(oracle: XluOracle) -> None:
    for text, value in (('a="A\\101B"\n', "AB"), ('a="\\012"\n', ""), ('a="\\1 2x"\n', "x")):
        assert oracle.cfg(text, ["a"])["keys"]["a"]["string"] == value
        assert parse_cfg(text).get_string("a") == value
    for text in ('a="\\1"\n', 'a="\\19"\n', 'a="\\1x"\n'):
        assert oracle.cfg(text, ["a"])["rc"] == EINVAL
        with pytest.raises(XlCfgError, match="octal"):
            parse_cfg(text)


def test_nul_is_rejected() -> None:
    for text in ('a="x\0y"\n', "a=1\0\n"):
        with pytest.raises(XlCfgError, match="NUL"):
            parse_cfg(text)


# -- config files --------------------------------------------------------------

KEYS = [
    "name",
    "memory",
    "vcpus",
    "pci",
    "rdm",
    "type",
    "pci_permissive",
    "pci_seize",
    "pci_msitranslate",
    "pci_power_mgmt",
    "x",
    "k.1",
]


def compare_cfg(oracle: XluOracle, text: str) -> None:
    theirs = oracle.cfg(text, KEYS)
    try:
        ours = parse_cfg(text, "test.cfg")
    except XlCfgError as e:
        assert e.exit_code == 1
        if "NUL" in e.reason:
            return  # documented: NUL is always an error here
        assert theirs["rc"] != 0, f"we reject {text!r} ({e}) but libxlutil accepts it"
        return
    assert theirs["rc"] == 0, f"we accept {text!r} but libxlutil rejects it: {theirs['report']}"
    for key in KEYS:
        t = theirs["keys"][key]
        s = ours.get_string(key, dont_warn=True)
        assert (t["string_rc"] == 0, t["string"]) == (s is not None, s), (text, key)
        n = ours.get_long(key, dont_warn=True)
        assert (t["long_rc"] == 0, t["long"] if n is not None else None) == (n is not None, n), (
            text,
            key,
        )
        lst = ours.get_list(key, dont_warn=True)
        plain = None if lst is None else [item.plain() for item in lst]
        assert (t["list_rc"] == 0, t["list"]) == (lst is not None, plain), (text, key)
    # xl's pci part: the globals, rdm (no policy= here), the list
    try:
        devices = pci_devices(ours)
        # libxlutil's own warnings for the pci_* and pci keys, word for word
        assert _accessor_warnings(ours.warnings) == _accessor_warnings(
            theirs["report"].splitlines()
        ), text
    except CfgPciSpecError as e:
        if e.libxlutil_ub:
            return
        bad = theirs["pci"][-1]
        assert bad["rc"] == e.rc and bad["spec"] == e.spec, text
        assert e.exit_code == -bad["rc"]
        return
    if theirs["pci"] is None:
        assert devices == (), text
        return
    assert all(d["rc"] == 0 for d in theirs["pci"]), text
    assert [our_view(s) for s in devices] == [oracle_view(d) for d in theirs["pci"]], text


def _accessor_warnings(lines: Iterable[str]) -> list[str]:
    return [w for w in lines if re.match(r"test\.cfg:\d+: warning: (parameter|can't use)", w)]


CFG_CASES = [
    'name = "g"\nmemory = "64"\n',
    'name = "g"\nmemory = 64\nmemory = 0x80\n',  # last one wins
    'name="a"\nname="b"\n',
    'pci=["03:00.0"]\npci=["04:00.0"]\n',  # repeated pci=: the last list
    'pci=["03:00.0"]\npci+=["04:00.0,seize=1"]\n',
    'x="a"\nx+="b"\nx+="c"\n',
    'x=[1]\nx+="b"\n',
    "x = 1\nx += 2\n",
    'pci_permissive=1\npci=["03:00.0,permissive=", "04:00.0"]\n',
    'pci_permissive=0x100000000\npci=["03:00.0"]\n',
    'pci_permissive="yes"\npci=["03:00.0"]\n',
    'pci_seize=-1\npci_msitranslate=1\npci_power_mgmt=2\npci=["03:00.0","04:00.0,seize=0"]\n',
    'pci = "03:00.0"\n',
    'pci = ["03:00.0", ["04:00.0"], "05:00.0"]\n',
    'pci = ["03:00.0", "03:00.0@", "05:00.0"]\n',
    'pci = ["03:00.0,rdm_policy=lax"]\n',
    "pci = []\npci_permissive = 1\n",
    "pci = [\n  '03:00.0',\n\n  '04:00.0' ,\n]\n",
    "rdm = 'strategy=host'\npci=['03:00.0']\n",
    "rdm = 'strategy=ignore'\npci=['03:00.0']\n",
    'name="a"\r\n',
    'name="a" # comment\n',
    'name="a" # no newline at the end',
    'name="a"',
    'name="a"\nmemory = 64M',  # a stray last byte is dropped by libxlutil's lexer
    "x=1 #",
    "x = '",
    "x=1\n$",
    "x=1\n$\n",
    "x=1 é",
    "x=1\0",
    'name="a";memory=3;;\n',
    'Name="a"\n',
    '_name="a"\n',
    "k.1 = 09\n",
    "memory = 09\n",
    "memory = 0x\n",
    "memory = 1e3\n",
    "memory = ' 64'\n",
    "memory = '64 '\n",
    "memory = 99999999999999999999\n",
    "memory = " + "1" * 5000 + "\n",
    "memory = 0x" + "f" * 5000 + "\n",
    "memory = 0" + "7" * 5000 + "\n",
    "memory = -" + "0" * 5000 + "12\n",
    "pci_seize = " + "0" * 5000 + "\npci=['03:00.0,permissive=" + "1" * 5000 + "']\n",
    "pci = ['" + "0" * 5000 + "3:00.0@" + "0" * 5000 + "1f', '" + "f" * 5000 + ":0.0']\n",
    "pci_seize = 99999999999999999999x\n",
    "pci_seize = 0x\npci_permissive = [1]\npci_power_mgmt += 1\npci=['03:00.0']\n",
    "memory = -5\n",
    "memory = 64M\n",
    "x = [1 2]\n",
    "x = [,]\n",
    "x = []\n",
    "x = [[]]\n",
    "x = [1,,2]\n",
    "x = ['a' 'b']\n",
    'x = "a" "b"\n',
    "x = 'it''s'\n",
    'x = "tab\\there"\n',
    "x = 'q\\\"'\n",
    "x = 'bad\\q'\n",
    'x = "unterminated\n',
    "x = (1)\n",
    "x = -1\n",
    "x == 1\n",
    "x =\n",
    "= 1\n",
    "\n\n;\n",
    "",
    "x = 'é'\n",
    "é = 1\n",
    "x = 1 \t\n",
    "x\t=\t[ 'a' ,\n 'b' ]",
]


@pytest.mark.parametrize("text", CFG_CASES, ids=lambda t: repr(t)[:40])
def test_config_cases_agree(oracle: XluOracle, text: str) -> None:
    compare_cfg(oracle, text)


_atom = st.one_of(
    st.from_regex(r"[0-9][0-9a-fx]{0,4}", fullmatch=True),
    st.builds(
        lambda q, body: q + body + q,
        st.sampled_from(["'", '"']),
        st.text(alphabet="ab03:.,=@ \\\"'ntx1", max_size=8),
    ),
    st.sampled_from(['"03:00.0"', "'04:00.1,seize=1'", '"03:00.0,permissive="', "'name=n'"]),
)
_value_cfg = st.recursive(
    _atom,
    lambda inner: st.builds(
        lambda items, trail, nl: "[" + nl + ("," + nl).join(items) + trail + "]",
        st.lists(inner, max_size=3),
        st.sampled_from(["", ",", " "]),
        st.sampled_from(["", "\n", " "]),
    ),
    max_leaves=5,
)
_line = st.builds(
    lambda k, op, v, end: f"{k} {op} {v}{end}",
    st.sampled_from([*KEYS, "Bad", "_x"]),
    st.sampled_from(["=", "=", "+=", "=="]),
    _value_cfg,
    st.sampled_from(["\n", "\n", ";", "\r\n", " # c\n", ""]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_line, max_size=5).map("".join))
def test_generated_configs_agree(oracle: XluOracle, text: str) -> None:
    compare_cfg(oracle, text)


def test_single_string_pci_warns_like_xl(oracle: XluOracle) -> None:
    """``pci = "03:00.0"``: xl warns, then creates the domain without the device."""
    text = 'name="g"\npci = "03:00.0"\n'
    theirs = oracle.cfg(text, ["pci"])
    cfg = load_domain_config(text, "test.cfg")
    assert cfg.pci == () and theirs["pci"] is None
    assert list(cfg.warnings) == theirs["report"].splitlines()


def test_bad_spec_in_file_exits_like_xl(oracle: XluOracle) -> None:
    text = 'name="g"\npci = ["03:00.0", "03:00.0@"]\n'
    assert oracle.cfg(text, [])["pci"][-1]["rc"] == ERROR_INVAL
    with pytest.raises(CfgPciSpecError) as ei:
        load_domain_config(text, "g.cfg")
    e = ei.value
    assert e.exit_code == 6
    assert str(e) == (
        "g.cfg:2:28: unable to parse PCI_SPEC_STRING `03:00.0@' for passthrough: "
        "vslot is not a hex number"
    )
    assert text.splitlines()[1][e.column - 1] == '"'  # just past the '@'


def test_not_utf8_is_one_line(tmp_path: Path) -> None:
    from xenpci.toolstack.xlcfg import load_domain_config_file

    f = tmp_path / "g.cfg"
    f.write_bytes(b'name="g"\nx="\xff"\n')
    with pytest.raises(XlCfgError) as ei:
        load_domain_config_file(f)
    assert str(ei.value) == f"{f}:2:4: not UTF-8 text (byte 0xff)"
    assert ei.value.exit_code == 1


def test_deep_nesting_is_a_clean_error(oracle: XluOracle) -> None:
    """Hostile nesting: libxlutil's parser stack gives out near 5000 levels; ours at 200."""
    deep = "x = " + "[" * 6000 + "]" * 6000 + "\n"
    assert oracle.cfg(deep, [])["rc"] == EINVAL
    assert "memory exhausted" in oracle.cfg(deep, [])["report"]
    with pytest.raises(XlCfgError, match="lists nested deeper than 200 levels"):
        parse_cfg(deep)
    ok = "x = " + "[" * 200 + "]" * 200 + "\n"
    assert oracle.cfg(ok, [])["rc"] == 0
    assert parse_cfg(ok).get_list("x") is not None
    with pytest.raises(XlCfgError):
        parse_cfg("x = " + "[" * 201 + "]" * 201 + "\n")
