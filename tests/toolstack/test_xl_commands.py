"""``xenpci xl`` as xl: messages, exit statuses, dom0, new commands (issue 10 §2).

One machine daemon runs in this process (its sockets are real); xl commands go through
typer's runner over the control socket, as ``xenpci xl`` does. The expected lines and
statuses are xl's own, from ``tools/xl/xl_pci.c``, ``xl_vmcontrol.c`` and ``xl_info.c``
(4.17); the expected values come from the machine itself (XenStore, the hypervisor),
not from the code under test.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.conftest import OS_EDGE_TIMEOUT, TOOL_TIMEOUT
from tests.interop import require_executable, require_file
from tests.toolstack.daemon_helpers import running_daemon
from xenpci.cli.main import app
from xenpci.hv import Hypervisor
from xenpci.hv.domain import DOMID_FIRST_RESERVED
from xenpci.hv.errors import DmaFault, HvError
from xenpci.pci.address import SBDF
from xenpci.toolstack import libxl_pci as lp
from xenpci.toolstack.daemon import ControlClient, MachineDaemon
from xenpci.toolstack.libxl import DEFAULT_MEMORY_MIB, Libxl
from xenpci.toolstack.xlcfg import load_domain_config

pytestmark = pytest.mark.timeout(90)

NIC = SBDF(0, 3, 0, 0)
#: a Python class name or traceback in what a user reads
PYTHONISH = re.compile(r"Traceback|[A-Z][a-z]+(Error|Exception|Denied|Fault)\b|\w+\(")


class Xl:
    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        self.runner = CliRunner()

    def __call__(self, *args: str) -> tuple[int, str, str]:
        r = self.runner.invoke(app, ["xl", "--dir", str(self.dir), *args])
        assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
        assert not PYTHONISH.search(r.stderr), r.stderr
        return r.exit_code, r.stdout, r.stderr

    def ok(self, *args: str) -> str:
        code, out, err = self(*args)
        assert code == 0, (args, out, err)
        return out


@pytest.fixture(scope="module")
def daemon() -> Iterator[MachineDaemon]:
    with running_daemon("xlc") as d:
        yield d


@pytest.fixture(scope="module")
def xl(daemon: MachineDaemon) -> Xl:
    return Xl(daemon.run_dir)


@pytest.fixture(scope="module")
def guest(daemon: MachineDaemon, xl: Xl, tmp_path_factory: pytest.TempPathFactory) -> int:
    """One guest with the NIC at virtual slot 5, for the read-only checks below."""
    xl.ok("pci-assignable-add", "-n", "nic0", "03:00.0")
    cfg = tmp_path_factory.mktemp("cfg") / "g.cfg"
    cfg.write_text('name = "g"\nmemory = 48\npci = ["03:00.0@5"]\n')
    code, _out, err = xl("create", str(cfg))
    assert code == 0, err
    # xl_vmcontrol.c: fprintf(stderr, "Parsing config from %s\n", ...)
    assert err == f"Parsing config from {cfg}\n"
    assert libxl(daemon).domains
    return next(iter(libxl(daemon).domains))


def libxl(d: MachineDaemon) -> Libxl:
    assert d.libxl is not None
    return d.libxl


# -- exit statuses and messages ----------------------------------------------------------


def test_malformed_spec_and_bdf_exit_2_with_xls_line(xl: Xl, guest: int) -> None:
    code, _, err = xl("pci-attach", "g", "03:00.0,nosuch=1")
    assert code == 2
    assert err.splitlines()[-1] == 'pci-attach: malformed PCI_SPEC_STRING "03:00.0,nosuch=1"'
    code, _, err = xl("pci-detach", "g", "zz")
    assert (code, err.splitlines()[-1]) == (2, 'pci-detach: malformed PCI_SPEC_STRING "zz"')
    assert xl("pci-assignable-add", "3:00") == (2, "", 'pci-assignable-add: malformed BDF "3:00"\n')
    # remove tries NAME first, then BDF: neither is xl's exit 2
    assert xl("pci-assignable-remove", "no-such") == (
        2,
        "",
        "pci-assignable-remove: malformed BDF 'no-such'\n",
    )


def test_refusals_exit_1_in_one_line(xl: Xl, guest: int) -> None:
    # a device on the host but never made assignable: libxl's de-quarantine fails (rc 1)
    assert xl("pci-assignable-remove", "07:00.0") == (
        1,
        "",
        "libxl: error: failed to de-quarantine 0000:07:00.0 [not-assignable]\n",
    )
    # xl_utils.c find_domain: "%s is an invalid domain identifier (rc=%d)"
    assert xl("pci-list", "nobody") == (1, "", "nobody is an invalid domain identifier (rc=-6)\n")
    code, _, err = xl("pci-attach", "g", "09:00.0")
    assert code == 1 and err.count("\n") == 1 and err.startswith("libxl: error: ")


def test_create_config_errors(xl: Xl, tmp_path: Path) -> None:
    bad = tmp_path / "bad.cfg"
    bad.write_bytes(b'name = "b\xff"\n')
    code, _, err = xl("create", str(bad))
    assert code == 1
    assert err == f"Failed to read config file: {bad}: not UTF-8 (byte 0xff at offset 9)\n"
    missing = tmp_path / "none.cfg"
    assert xl("create", str(missing)) == (
        1,
        "",
        f"Failed to read config file: {missing}: No such file or directory\n",
    )
    # a bad spec inside a cfg: the status is the parser's (xl exits with -e of xlu)
    text = 'name = "b"\npci = ["03:00.0,bogus=1"]\n'
    with pytest.raises(ValueError) as parse_error:
        load_domain_config(text, str(bad))
    bad.write_text(text)
    code, out, err = xl("create", str(bad))
    assert code == getattr(parse_error.value, "exit_code", 1) and code != 0
    assert out == "" and err.startswith(f"Parsing config from {bad}\n")
    assert len(err.splitlines()) == 2


# -- domain 0 and domids -----------------------------------------------------------------


def test_domain_0_is_addressable_and_never_destroyed(daemon: MachineDaemon, xl: Xl) -> None:
    lines = xl.ok("list", "0").splitlines()
    assert len(lines) == 2 and lines[1].split()[:2] == ["Domain-0", "0"]
    assert xl.ok("list", "Domain-0").splitlines()[1].split()[:2] == ["Domain-0", "0"]
    assert xl.ok("pci-list", "0") == ""  # no backend for dom0: nothing, status 0
    for who in ("0", "Domain-0", "00"):
        code, _, err = xl("destroy", who)
        assert code == 1 and err.startswith("Not destroying domain 0"), err
    assert daemon.machine is not None and daemon.machine.hv.domain(0)
    assert xl("list", "77") == (1, "", "Error: Domain '77' does not exist.\n")
    assert xl("list", "nobody") == (1, "", "nobody is an invalid domain identifier (rc=-6)\n")


def test_domids_follow_xens_allocator() -> None:
    with Hypervisor(deterministic=True) as hv:
        a = hv.create_domain("a", 64).domid
        hv.destroy_domain(a)
        b = hv.create_domain("b", 64).domid
        assert (a, b) == (1, 2)  # the freed id is not given again at once
        hv._domid_last = DOMID_FIRST_RESERVED - 2
        top = hv.create_domain("top", 64).domid
        wrapped = hv.create_domain("wrapped", 64).domid
        # after the last usable id the search wraps to 1 (free again) and skips 2 (in use)
        assert (top, wrapped) == (DOMID_FIRST_RESERVED - 1, 1)
        assert hv.create_domain("next", 64).domid == 3


# -- list, list -l, info, dmesg ----------------------------------------------------------


def test_list_times_and_default_memory(
    daemon: MachineDaemon, xl: Xl, guest: int, tmp_path: Path
) -> None:
    assert daemon.machine is not None
    cfg = tmp_path / "plain.cfg"
    cfg.write_text('name = "plain"\n')
    xl.ok("create", str(cfg))
    rows = {ln.split()[0]: ln.split() for ln in xl.ok("list").splitlines()[1:]}
    # libxl__domain_build_info_setdefault: max_memkb = 32 * 1024
    assert rows["plain"][2] == str(DEFAULT_MEMORY_MIB) == "32"
    plain = int(rows["plain"][1])
    assert daemon.machine.hv.domain(plain).nr_pages * 4 == 32 * 1024
    assert float(rows["Domain-0"][5]) > 0  # dom0 booted the machine: real CPU time

    def burn() -> float:
        # the running thread's own CPU clock around the work: the independent truth
        start = time.clock_gettime(time.CLOCK_THREAD_CPUTIME_ID)
        sum(range(2_000_000))
        return time.clock_gettime(time.CLOCK_THREAD_CPUTIME_ID) - start

    # run as a task of the guest's vCPU lane on the machine's executor (what xl list
    # reports is that lane's CPU time), handed in from this thread as an OS edge would
    vcpu = daemon.machine.hv.domain(guest).vcpu
    used = daemon.executor.submit(burn, vcpu).result(timeout=OS_EDGE_TIMEOUT)
    (info,) = daemon.executor.submit(lambda: libxl(daemon).domain_list("g")).result(
        timeout=OS_EDGE_TIMEOUT
    )
    assert used > 0 and used <= info.cpu_time < used + 5
    xl.ok("destroy", "plain")


@pytest.fixture(scope="module")
def libxl_json_oracle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/toolstack/libxl_json_oracle.c built against Debian's libxenlight 4.17."""
    gcc = require_executable("gcc")
    require_file("/usr/include/libxl.h")
    out = tmp_path_factory.mktemp("oracle") / "libxl_json_oracle"
    src = Path(__file__).with_name("libxl_json_oracle.c")
    subprocess.run(
        [gcc, "-O1", str(src), "-o", str(out), "-lxenlight"], check=True, timeout=TOOL_TIMEOUT
    )
    return out


def libxl_json(oracle: Path, info: dict[str, Any], pcis: list[lp.PciBackendEntry]) -> Any:
    """What libxenlight writes for this domain (only the modelled fields set)."""
    args = [str(oracle), info["name"], str(info["domid"]), str(info["vcpus"])]
    args.append(str(info["memory"] * 1024))
    for e in pcis:
        opts = dict(kv.split("=") for kv in (e.opts or "").split(","))
        args.append(
            f"{e.sbdf},{e.vdevfn:x},{opts['msitranslate']},{opts['power_mgmt']},"
            f"{opts['permissive']},{int(opts['rdm_policy'] == 'relaxed')},{e.name or '-'}"
        )
    r = subprocess.run(args, capture_output=True, text=True, check=True, timeout=TOOL_TIMEOUT)
    return json.loads(r.stdout)


@pytest.mark.interop
def test_list_long_is_libxenlights_json(
    daemon: MachineDaemon, xl: Xl, guest: int, libxl_json_oracle: Path
) -> None:
    assert daemon.machine is not None
    got = json.loads(xl.ok("list", "-l"))
    assert [e["domid"] for e in got] == [0, guest]
    with ControlClient(daemon.run_dir) as c:
        infos = {d["domid"]: d for d in c.call("list")}
    for entry in got:
        domid = entry["domid"]
        pcis = lp.device_pci_list(daemon.machine.xs, domid)  # the backend's own record
        assert entry["config"] == libxl_json(libxl_json_oracle, infos[domid], pcis), domid
    (nic,) = lp.device_pci_list(daemon.machine.xs, guest)
    assert nic.vdevfn == 5 << 3 and got[1]["config"]["pcidevs"][0]["bus"] == 3


def test_info_fields_and_iommu(daemon: MachineDaemon, xl: Xl) -> None:
    out = xl.ok("info")
    fields = dict(ln.split(" : ", 1) if " : " in ln else (ln, "") for ln in out.splitlines())
    fields = {k.rstrip(): v for k, v in fields.items()}
    # xl_info.c: maybe_printf("%-23s: ...") order: node, physinfo, xeninfo, xend_config
    names = list(fields)
    assert names[:4] == ["host", "release", "version", "machine"]
    assert names[-1] == "xend_config_format" and fields["xend_config_format"] == "4"
    assert all(len(ln.split(":", 1)[0]) == 23 for ln in out.splitlines())
    assert fields["host"] == os.uname().nodename
    assert daemon.machine is not None
    assert int(fields["total_memory"]) == daemon.machine.hv.machine.nr_frames * 4096 >> 20
    assert fields["virt_caps"].split() == ["pv", "pv_directio"]  # directio: IOMMU on
    assert (
        fields["xen_version"] == f"{fields['xen_major']}.{fields['xen_minor']}{fields['xen_extra']}"
    )
    with Hypervisor(iommu=False, deterministic=True) as hv:
        assert dict(Libxl.host_info(_HostOnly(hv)))["virt_caps"] == "pv"  # type: ignore[arg-type]


class _HostOnly:
    """What ``Libxl.host_info`` reads: the hypervisor alone."""

    def __init__(self, hv: Hypervisor) -> None:
        self.hv = hv


def test_dmesg_shows_refusals_and_faults(daemon: MachineDaemon, xl: Xl, guest: int) -> None:
    m = daemon.machine
    assert m is not None
    xl.ok("dmesg", "-c")
    assert xl.ok("dmesg") == ""
    # the guest maps a frame it was never granted (arch/x86/mm.c refuses and prints)
    with pytest.raises(HvError):
        m.hv.domain(guest).hypercalls.mmio_map(0xFED00, 1)
    # its NIC DMAs outside the guest's memory: the IOMMU faults
    port = m.hv.iommu.dma_port(NIC.sbdf_int)
    with pytest.raises(DmaFault):
        port.read(0x7FFF_F000, 4)
    lines = xl.ok("dmesg").splitlines()
    assert lines == [
        f"(XEN) d{guest}v0 d{guest} non-privileged attempt to map MMIO space fed00",
        "(XEN) [VT-D]DMAR:[DMA Read] Request device [0000:03:00.0] fault addr 7ffff000",
    ]
    assert xl.ok("dmesg", "-c").splitlines() == lines
    assert xl.ok("dmesg") == ""


# -- help and lists ----------------------------------------------------------------------


def test_help_anywhere_without_bool_placeholders(xl: Xl) -> None:
    for args in (["pci-detach", "-h"], ["pci-detach", "g", "-h"], ["list", "-h"], ["-h"]):
        code, out, _ = xl(*args)
        assert code == 0 and "Usage:" in out and "<bool>" not in out, args
    _, out, _ = xl("pci-assignable-list", "-h")
    assert "--show-names" in out
    # xl.c / def_getopt: unknown command 1, an option not supported or a missing argument 2
    assert xl("no-such-command") == (1, "", "command not implemented\n")
    assert xl("pci-list", "-q", "g")[0] == 2
    assert xl("pci-attach", "g")[0] == 2


def test_assignable_list_format(xl: Xl, guest: int) -> None:
    xl.ok("pci-assignable-add", "04:00.0")
    xl.ok("pci-assignable-add", "-n", "mf", "06:00.0")
    # xl_pci.c: printf("%04x:%02x:%02x.%01x %s\n", ..., name ?: "")
    assert xl.ok("pci-assignable-list") == "0000:04:00.0 \n0000:06:00.0 \n"
    assert xl.ok("pci-assignable-list", "--show-names") == "0000:04:00.0 \n0000:06:00.0 mf\n"
    xl.ok("pci-assignable-remove", "mf")
    xl.ok("pci-assignable-remove", "04:00.0")
    assert xl.ok("pci-assignable-list") == ""


def test_dmesg_shows_a_dropped_msix_write(daemon: MachineDaemon, xl: Xl, guest: int) -> None:
    """The guest writes a message address in its NIC's MSI-X table: Xen ignores the
    write to the read-only page and says so (arch/x86/mm.c)."""
    m = daemon.machine
    assert m is not None
    (region,) = [r for r in m.hv.msixtbl.regions() if r.sbdf == NIC.sbdf_int]
    first = region.table_paddr >> 12
    xl.ok("dmesg", "-c")
    mapping = m.hv.domain(guest).hypercalls.mmio_map(first, 1)
    try:
        offset = region.table_paddr & 0xFFF
        mapping.write(offset, 4, 0xFEE0_0000)  # entry 0, Message Address: not the guest's
    finally:
        mapping.unmap()
    assert xl.ok("dmesg").splitlines() == [
        # "0x%"PRI_mfn"%03x" with PRI_mfn "05lx"
        f"(XEN) d{guest}v0 ignoring write to R/O MMIO 0x{first:05x}{offset:03x} len 4"
    ]


# -- the real xl as the oracle -----------------------------------------------------------


def require_real_xl() -> str:
    """Debian's xl 4.17 (xen-utils, unpacked by ./dev under $XENPCI_XEN_UTILS)."""
    roots = [os.environ.get("XENPCI_XEN_UTILS", ""), ""]
    for r in roots:
        for path in sorted(glob.glob(f"{r}/usr/lib/xen-*/bin/xl"), reverse=True):
            if os.access(path, os.X_OK):
                return path
    return require_executable("xl")


@pytest.fixture(scope="module")
def real_xl(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The real xl and tests/toolstack/xl_shim.c built to preload under it."""
    xl_path = require_real_xl()
    gcc = require_executable("gcc")
    require_file("/usr/include/libxl.h")
    shim = tmp_path_factory.mktemp("shim") / "xl_shim.so"
    src = Path(__file__).with_name("xl_shim.c")
    subprocess.run(
        [gcc, "-shared", "-fPIC", "-O1", str(src), "-o", str(shim)],
        check=True,
        timeout=TOOL_TIMEOUT,
    )
    return xl_path, shim


@pytest.mark.interop
def test_messages_and_statuses_are_real_xls(
    daemon: MachineDaemon, xl: Xl, guest: int, real_xl: tuple[str, Path]
) -> None:
    """The same command lines to Debian's xl (its Xen calls answered from our machine's
    state by a preloaded shim) and to ours: same exit status, same lines."""
    xl_path, shim = real_xl
    xl.ok("pci-assignable-add", "04:00.0")
    try:
        with ControlClient(daemon.run_dir) as c:
            domains = ",".join(f"{d['domid']}:{d['name']}" for d in c.call("list"))
            pool = ",".join(f"{d['bdf']}={d['name'] or ''}" for d in c.call("pci-assignable-list"))
        env = {
            **os.environ,
            "LD_PRELOAD": str(shim),
            "XL_SHIM_DOMAINS": domains,
            "XL_SHIM_ASSIGNABLE": pool,
        }

        def real(*args: str) -> tuple[int, str, str]:
            r = subprocess.run(
                [xl_path, *args], env=env, capture_output=True, text=True, timeout=TOOL_TIMEOUT
            )
            return r.returncode, r.stdout, r.stderr

        exact = [
            ("no-such-command",),
            ("pci-list", "nobody"),
            ("list", "77"),
            ("list", "nobody"),
            ("pci-assignable-add", "3:zz"),
            ("pci-assignable-remove", "zz-zz"),
            ("pci-assignable-add", "4:0.x"),
            ("pci-assignable-remove", "4:0.x"),
            ("pci-assignable-list",),
            ("pci-assignable-list", "-n"),
            ("pci-assignable-list", "--show-names"),
        ]
        for args in exact:
            assert xl(*args) == real(*args), args
        # xlu's own diagnostic comes first (libxlutil leaves out its newline); xl's line last
        for args in (("pci-attach", "g", "zz"), ("pci-detach", "g", "03:00.0,nosuch=1")):
            code, _, err = xl(*args)
            rcode, _, rerr = real(*args)
            assert code == rcode == 2 and rerr.endswith(err.splitlines()[-1] + "\n"), args
        for who in ("0", "Domain-0"):  # xl also offers -f, which xenpci does not
            code, _, err = xl("destroy", who)
            rcode, _, rerr = real("destroy", who)
            assert code == rcode == 1 and rerr.startswith(err.rstrip("\n")), (err, rerr)
        for args in (("pci-list", "-q", "g"), ("pci-attach", "g"), ("pci-attach", "-h")):
            assert xl(*args)[0] == real(*args)[0], args  # click's words, xl's statuses
    finally:
        xl.ok("pci-assignable-remove", "04:00.0")


@pytest.mark.interop
def test_list_and_pci_list_formats_are_real_xls(
    daemon: MachineDaemon, xl: Xl, guest: int, real_xl: tuple[str, Path]
) -> None:
    """``xl list`` and ``xl pci-list`` printed by Debian's xl from our machine's state
    (domains from the control API, devices from the backend's keys) and by ours."""
    assert daemon.machine is not None
    xl_path, shim = real_xl
    with ControlClient(daemon.run_dir) as c:
        listed = c.call("list")
    domains = ",".join(
        f"{d['domid']}:{d['name']}:{d['memory'] * 1024}:{d['vcpus']}:{d['state']}:"
        f"{int(d['time'] * 1e9)}"
        for d in listed
    )
    pcis = ",".join(
        f"{d['domid']}={e.sbdf}@{e.vdevfn:x}"
        for d in listed
        for e in lp.device_pci_list(daemon.machine.xs, d["domid"])
    )
    env = {**os.environ, "LD_PRELOAD": str(shim), "XL_SHIM_DOMAINS": domains, "XL_SHIM_PCI": pcis}

    def real(*args: str) -> str:
        r = subprocess.run(
            [xl_path, *args], env=env, capture_output=True, text=True, timeout=TOOL_TIMEOUT
        )
        assert r.returncode == 0, r.stderr
        return r.stdout

    for args in (("pci-list", "g"), ("pci-list", "0")):
        assert xl.ok(*args) == real(*args), args
    for args in (("list",), ("list", "g"), ("list", "0")):
        ours, theirs = xl.ok(*args).splitlines(), real(*args).splitlines()
        assert ours[0] == theirs[0] and len(ours) == len(theirs), args
        for a, b in zip(ours[1:], theirs[1:], strict=True):
            # Time(s) moves between the two reads (dom0 keeps running): all but its value
            assert len(a) == len(b) and a[:-8] == b[:-8], (a, b)
            assert re.fullmatch(r" *\d+\.\d", a[-8:]), a


# -- xl-parse's API in the CLI (issue 10 §1) ----------------------------------------------


def test_assignable_bdf_is_xlu_pci_parse_bdf(xl: Xl, guest: int) -> None:
    """``3:0.0`` and ``0:4:0.0`` are what xlu_pci_parse_bdf makes of them (0000:03:00.0...),
    for add and for remove; a BDF xlu rejects is xl's exit 2 on both."""
    xl.ok("pci-assignable-add", "0:4:0.0")
    assert xl.ok("pci-assignable-list") == "0000:04:00.0 \n"
    xl.ok("pci-assignable-remove", "4:0.0")
    assert xl.ok("pci-assignable-list") == ""
    assert xl("pci-assignable-add", "4:0.x") == (
        2,
        "",
        'pci-assignable-add: malformed BDF "4:0.x"\n',
    )
    assert xl("pci-assignable-remove", "4:0.x") == (
        2,
        "",
        "pci-assignable-remove: malformed BDF '4:0.x'\n",
    )


def test_create_prints_the_parsers_warnings(xl: Xl, daemon: MachineDaemon, tmp_path: Path) -> None:
    """``pci = "03:00.0"`` (a string): xl warns and creates the domain without the device."""
    cfg = tmp_path / "w.cfg"
    cfg.write_text('name = "warned"\npci = "07:00.0"\n')
    code, out, err = xl("create", str(cfg))
    try:
        assert code == 0, err
        want = load_domain_config(cfg.read_text(), str(cfg)).warnings
        assert want and err.splitlines()[1:] == list(want)
        domid = int(out.split()[1])
        assert lp.device_pci_list(libxl(daemon).xs, domid) == []
    finally:
        xl("destroy", "warned")


def test_help_shows_the_libxlutil_divergences(xl: Xl) -> None:
    from xenpci.toolstack.xlcfg import LIBXLUTIL_DIVERGENCES

    _, out, _ = xl("--help")
    flat = " ".join(out.split())
    for line in LIBXLUTIL_DIVERGENCES.splitlines():
        assert " ".join(line.split()) in flat, line
