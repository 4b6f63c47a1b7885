"""xl.cfg and PCI_SPEC_STRING parsing.

Truth: the examples of xl-pci-configuration(5) and xl.cfg(5) (quoted in
pciback.md §3.1), libxlu_pci.c's rules (vslot is ``%x`` and at most 0x1f,
exactly one of bdf/name, unknown option rejected), and generated specs whose
fields are known before they are printed. The comparison with the real
libxlutil is in test_xlcfg_oracle.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xenpci.pci.address import SBDF
from xenpci.toolstack.xlcfg import (
    DiskSpec,
    DomainConfig,
    PciDefaults,
    PciSpec,
    PciSpecError,
    UnsupportedDomainType,
    XlCfgError,
    load_domain_config,
    load_domain_config_file,
    parse_cfg,
    parse_pci_spec,
    require_supported_type,
)

# -- the man page examples -------------------------------------------------


def test_man_page_equivalent_forms() -> None:
    # xl-pci-configuration(5): "these strings are equivalent"
    forms = ["36:00.0@20,seize=1", "36:00.0,vslot=20,seize=1", "bdf=36:00.0,vslot=20,seize=1"]
    # ...and all three carry vslot 0x20, which libxlu's parse_vslot rejects
    # (val > 0x1f): the same refusal for each form.
    reasons = set()
    for form in forms:
        with pytest.raises(XlCfgError) as ei:
            parse_pci_spec(form)
        reasons.add(ei.value.reason)
        assert form[ei.value.column - 1 :].startswith("20")
    assert reasons == {"vslot 0x20 > 0x1f"}
    ok = [f.replace("20", "1f") for f in forms]
    specs = {parse_pci_spec(f) for f in ok}
    assert specs == {PciSpec(SBDF(0, 0x36, 0, 0), vslot=0x1F, seize=True)}
    assert parse_pci_spec(ok[0]).vdevfn == 0x1F << 3


def test_domain_file_with_globals_and_every_key(tmp_path: Path) -> None:
    text = """# PV guest with passthrough
name = "pvguest"
memory = 0x400   # hex, as xl.cfg(5) NUMBER allows
vcpus = 2; type = 'pv'
kernel = "/boot/vmlinuz"
pci_permissive = 1
pci_seize = 1
rdm = "strategy=host,policy=relaxed"
pci = [ '01:02.1', "0000:02:03.0@5",
        "bdf=03:00.0,permissive=0,msitranslate=1,power_mgmt=1,rdm_policy=strict,seize=0",
        'name=nic0,vslot=0x1a',
        '04:00.*@7',
      ]
disk = [ 'phy:/dev/vg/g,xvda,w' ]
"""
    f = tmp_path / "guest.cfg"
    f.write_text(text)
    cfg = load_domain_config_file(f)
    assert (cfg.name, cfg.memory_mib, cfg.vcpus) == ("pvguest", 1024, 2)
    assert cfg.domain_type == "pv" and cfg.warnings == ()
    assert cfg.extra == {"kernel": "/boot/vmlinuz"}
    # disk= is xldisk's (xlu_disk_parse): the deprecated "phy:" form, vdev, access
    assert cfg.disks == (DiskSpec(target="/dev/vg/g", vdev="xvda", readwrite=True),)
    # the globals (pci_permissive, pci_seize, rdm policy) apply unless overridden
    g = {"permissive": True, "seize": True}
    assert cfg.pci == (
        PciSpec(SBDF(0, 1, 2, 1), rdm_policy="relaxed", **g),
        PciSpec(SBDF(0, 2, 3, 0), vslot=5, rdm_policy="relaxed", **g),
        PciSpec(SBDF(0, 3, 0, 0), msitranslate=True, power_mgmt=True),
        PciSpec(None, vslot=0x1A, name="nic0", rdm_policy="relaxed", **g),
        PciSpec(SBDF(0, 4, 0, 0), vslot=7, all_functions=True, rdm_policy="relaxed", **g),
    )


def test_minimal_file_defaults() -> None:
    cfg = load_domain_config('name="a"\n')
    assert cfg == DomainConfig("a")
    assert cfg.memory_mib is None and cfg.vcpus == 1 and cfg.pci == ()


def test_empty_value_is_atoi_zero_and_trailing_comma() -> None:
    # libxlu: permissive= is atoi("") == 0, overriding pci_permissive
    d = PciDefaults(permissive=True, rdm_policy="relaxed")
    spec = parse_pci_spec("01:00.0,permissive=,", d)
    assert not spec.permissive and spec.rdm_policy == "relaxed"
    with pytest.raises(PciSpecError, match="Unknown RDM policy"):
        parse_pci_spec("01:00.0,rdm_policy=", d)


def test_numbers_are_text_octal_and_plus_equals() -> None:
    s = parse_cfg("memory = 010\nextra = 'a'\nextra += \"b\"\nl=[1]\nl+=[2,[3]]\nq='0x10'\n")
    assert s.get_long("memory") == 8 and s.get_string("memory") == "010"
    assert s.get_long("q") == 16  # a quoted number is the same thing
    assert s.get_string("extra") == "ab"
    assert s.get_long("extra", dont_warn=True) is None  # += never makes a number
    lst = s.get_list("l")
    assert lst is not None and [n.plain() for n in lst] == ["1", "2", ["3"]]


def test_string_escapes() -> None:
    s = parse_cfg(r'a = "x\"y\\z\a\b\f\v\n\t\r\'"')
    assert s.get_string("a") == "x\"y\\z\a\b\f\v\n\t\r'"


def test_last_setting_wins() -> None:
    cfg = load_domain_config('name="a"\nmemory=1\npci=["03:00.0"]\nname="b"\nmemory="64"\npci=[]')
    assert (cfg.name, cfg.memory_mib, cfg.pci) == ("b", 64, ())


def test_domain_type_prefixes_and_refusal() -> None:
    """xl_parse.c compares type= with strncmp(buf, "hvm", strlen(buf))."""
    for text, want in [
        ("", "pv"),
        ("type='pv'", "pv"),
        ("type='p'", "pv"),
        ("type='pvh'", "pvh"),
        ("type='hvm'", "hvm"),
        ("type='h'", "hvm"),
        ("type=''", "hvm"),
        ("builder='generic'", "pv"),
        ("builder='gen'", "pv"),
        ("builder='hvm'", "hvm"),
        ("type='hvm'\nbuilder='h'", "hvm"),
        ("type=['hvm']", "pv"),  # a list: warned about and ignored
    ]:
        cfg = load_domain_config(f"name='g'\n{text}\n")
        assert cfg.domain_type == want, text
        if want == "pv":
            require_supported_type(cfg)
        else:
            with pytest.raises(UnsupportedDomainType) as ei:
                require_supported_type(cfg)
            assert ei.value.exit_code == 1
            if want == "hvm":  # HVM is modelled: with one disk= and no pci= (below)
                assert "exactly one disk=[...]" in str(ei.value)
            else:
                assert str(ei.value).startswith(f'domain type "{want}" is not supported yet')
    with pytest.raises(XlCfgError, match="Invalid domain type pvhx"):
        load_domain_config("name='g'\ntype='pvhx'\n")


def test_not_numbers_are_warned_and_ignored_as_xl() -> None:
    cfg = load_domain_config("name='g'\nmemory='lots'\nvcpus=[2]\n", "g.cfg")
    assert cfg.memory_mib is None and cfg.vcpus == 1
    assert cfg.warnings == (
        "g.cfg:2: warning: parameter `memory' is not a valid number",
        "g.cfg:3: warning: parameter `vcpus' is a list but should be a single value",
    )


# -- hostile input: each error with line:column ----------------------------


@pytest.mark.parametrize(
    ("text", "line", "col", "reason"),
    [
        ('name = "abc\n', 1, 8, 'unterminated string (opened with ")'),
        ("name = 'a'\npci = ['01:00.0'\n", 2, 7, "unterminated list: '[' never closed"),
        ('name="a"\npci=["01:00.0,foo=1"]\n', 2, 15, "Unknown PCI_SPEC_STRING option: 'foo'"),
        ('name="a"\npci=["01:00.0,rdm_policy=lax"]\n', 2, 26, "Unknown RDM policy: 'lax'"),
        ('name="a"\n  pci = [ "name=x,bdf=01:00.0" ]\n', 2, 12, "exactly one of bdf and name"),
        ('name="a"\npci=["seize=1"]\n', 2, 7, "exactly one of bdf and name"),
        ('name="a"\npci=["01:00.0,,seize=1"]\n', 2, 15, "option: ',seize'"),
        ('name="a"\npci=["seize=1,01:00.0"]\n', 2, 15, "option '01:00.0' has no '='"),
        ('name="a"\npci=["01:00.0@zz"]\n', 2, 15, "vslot is not a hex number"),
        ('name="a"\npci=["\\x30\\x31:00.0,foo=1"]\n', 2, 7, "\\x escapes are not supported"),
        ('name="a"\npci=["0\\0601:00.0,foo=1"]\n', 2, 19, "option: 'foo'"),
        ('name="a"\nmemory=0\n', 2, 8, "memory must be at least 1 MiB, got 0"),
        ('name="a"\nvcpus=0\n', 2, 7, "vcpus must be at least 1, got 0"),
        ("memory=1\n", 1, 1, "Domain name must be specified."),
        ('name=""\n', 1, 6, "Domain name must not be empty."),
        ('name="a" x\n', 1, 10, "expected end of setting"),
        ('name="a"\n= 3\n', 2, 1, "expected a key"),
        ('name "a"\n', 1, 6, "expected '=' after 'name'"),
        ('name="a"\nx = $\n', 2, 5, "unexpected character '$'"),
        ('name="a\\q"\n', 1, 8, "invalid character after backslash: 'q'"),
        ('name="a"\nx=[1 2]\n', 2, 6, "expected ',' or ']'"),
        ("name='a'\nx='1'\nx+=[2]\n", 3, 2, 'can\'t add [list] to "string"'),
        ("name='a'\ntype='hvmx'\n", 2, 6, "Invalid domain type hvmx."),
        ("name='a'\ntype='hvm'\nbuilder='g'\n", 3, 9, 'Contradicting "builder" and "type"'),
        ("name='a'\nName='b'\n", 2, 1, "unexpected character 'N'"),
        ("name='a'\nx=1.5\n", 2, 4, "unexpected character '.' (xl.cfg is not Python)"),
        ("name='a'\r\n", 1, 9, "unexpected character \\r (CRLF line endings?)"),
        ("name='a' # no newline", 1, 10, "a comment must end with a newline"),
    ],
)
def test_hostile_inputs_name_line_and_column(text: str, line: int, col: int, reason: str) -> None:
    with pytest.raises(XlCfgError) as ei:
        load_domain_config(text, "g.cfg")
    e = ei.value
    assert reason in e.reason
    assert (e.line, e.column) == (line, col), str(e)
    assert str(e).startswith(f"g.cfg:{line}:{col}: ")


def test_bdf_limits_from_the_spec() -> None:
    for bad in ("01:20.0", "01:00.8", "10000:01:00.0", "01:00.0.0", "100:00.0", "1:2:3:4.0"):
        with pytest.raises(PciSpecError):
            parse_pci_spec(bad)
    # libxlu's %x: one digit is enough, and bdf= ignores what follows the function
    assert parse_pci_spec("1:0.0") == parse_pci_spec("01:00.0")
    assert parse_pci_spec("bdf=01:00.0@3") == parse_pci_spec("01:00.0")


# -- properties ----------------------------------------------------------------

sbdfs = st.builds(
    SBDF,
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFF),
    st.integers(0, 0x1F),
    st.integers(0, 7),
)
flag = st.booleans()


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sbdf=sbdfs,
    vslot=st.none() | st.integers(1, 0x1F),
    perm=flag,
    msi=flag,
    seize=flag,
    pm=flag,
    rdm=st.sampled_from(["strict", "relaxed"]),
    form=st.sampled_from(["positional", "bdf="]),
    short=st.booleans(),
)
def test_generated_specs_parse_to_their_fields(
    sbdf: SBDF,
    vslot: int | None,
    perm: bool,
    msi: bool,
    seize: bool,
    pm: bool,
    rdm: str,
    form: str,
    short: bool,
) -> None:
    addr = sbdf.bdf if short and sbdf.segment == 0 else str(sbdf)
    parts = [addr if form == "positional" else f"bdf={addr}"]
    if vslot is not None:
        if form == "positional":
            parts[0] += f"@{vslot:x}"
        else:
            parts.append(f"vslot={vslot:#x}")
    parts += [
        f"permissive={int(perm)}",
        f"msitranslate={int(msi)}",
        f"seize={int(seize)}",
        f"power_mgmt={int(pm)}",
        f"rdm_policy={rdm}",
    ]
    spec = parse_pci_spec(",".join(parts))
    assert spec.sbdf == sbdf and spec.vslot == vslot
    assert (spec.permissive, spec.msitranslate, spec.seize, spec.power_mgmt) == (
        perm,
        msi,
        seize,
        pm,
    )
    assert spec.rdm_policy == rdm and spec.name is None and not spec.all_functions


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=40))
def test_arbitrary_text_never_crashes(text: str) -> None:
    """Any input either parses or raises XlCfgError located inside the text."""
    try:
        load_domain_config(text, "f")
    except XlCfgError as e:
        assert 1 <= e.line <= text.count("\n") + 1
        assert e.column >= 1


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet="0123456789abcdef:.,@=*xbdfvslotnamepriz", max_size=30))
def test_arbitrary_spec_never_crashes(text: str) -> None:
    try:
        spec = parse_pci_spec(text)
    except XlCfgError as e:
        assert 1 <= e.column <= len(text) + 1
    else:
        assert (spec.sbdf is None) != (spec.name is None)


def test_toolstack_refuses_hvm_and_creates_nothing() -> None:
    """``type="hvm"`` used to be created silently as PV: now refused, nothing left behind."""
    from xenpci.toolstack.host import HostDescription, boot_machine
    from xenpci.toolstack.libxl import Libxl

    machine = boot_machine(HostDescription(), deterministic=True)
    try:
        libxl = Libxl(machine, machine.xs)
        for text in ("name='h'\ntype='hvm'\n", "name='h'\nbuilder='hvm'\n", "name='h'\ntype='pvh'"):
            with pytest.raises(UnsupportedDomainType):
                libxl.domain_create(load_domain_config(text))
            assert not [d for d in libxl.domain_list() if d.name == "h"]
        assert libxl.domain_create(load_domain_config("name='h'\ntype='pv'\nmemory=16\n")) > 0
    finally:
        machine.shutdown()


def test_vslot_zero_is_no_vslot_as_libxl_vdevfn() -> None:
    assert parse_pci_spec("03:00.0@0").vslot is None
    assert parse_pci_spec("03:00.0,vslot=0x0") == parse_pci_spec("03:00.0")
    assert parse_pci_spec("03:00.*@0").vdevfn == 0
