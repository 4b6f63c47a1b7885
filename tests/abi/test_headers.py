"""xenpci.abi against Debian's libxen-dev headers, the only truth here.

For each header we (1) list every object-like ``#define`` and enum member the
header declares (by reading the header text), check the Python module has each
name, then (2) compile a C program that prints those constants and the
``sizeof``/``offsetof`` of every field the Python structures declare, and check
Python says the same. Nothing expected is typed in by hand.
"""

from __future__ import annotations

import ctypes
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from tests.interop import require_executable, require_file
from xenpci.abi import blkif, grant_table, ioreq, pciif, xenbus, xs_wire

INCLUDE = Path("/usr/include")


@dataclass(frozen=True)
class Header:
    module: ModuleType
    path: str  # relative to /usr/include
    prefixes: tuple[str, ...]  # constants of the header we model
    structs: tuple[str, ...]
    #: Python name -> C expression, for values the header computes with macros.
    computed: tuple[tuple[str, str], ...] = ()


HEADERS = (
    Header(
        pciif,
        "xen/io/pciif.h",
        ("XEN_PCI", "_XEN_PCI", "SH_INFO"),
        ("xen_msix_entry", "xen_pci_op", "xen_pcie_aer_op", "xen_pci_sharedinfo"),
    ),
    Header(
        xs_wire,
        "xen/io/xs_wire.h",
        ("XS_", "XENSTORE_"),
        ("xsd_sockmsg", "xenstore_domain_interface"),
    ),
    Header(xenbus, "xen/io/xenbus.h", ("XenbusState",), ()),
    Header(
        grant_table,
        "xen/grant_table.h",
        ("GTF_", "_GTF_", "GNTMAP_", "_GNTMAP_", "GNTST_"),
        ("grant_entry_v1",),
    ),
    Header(
        blkif,
        "xen/io/blkif.h",
        ("BLKIF_", "VDISK_"),
        ("blkif_request_segment", "blkif_request", "blkif_response", "blkif_sring"),
        (("BLKIF_RING_SIZE", "__CONST_RING_SIZE(blkif, 4096)"),),
    ),
    Header(
        ioreq,
        "xen/hvm/ioreq.h",
        ("IOREQ_", "STATE_IOREQ", "STATE_IORESP"),
        ("ioreq", "shared_iopage", "buf_ioreq", "buffered_iopage"),
    ),
)

_DEFINE = re.compile(r"^#define\s+([A-Za-z_]\w*)\s+(\S.*)$", re.M)
_ENUM_MEMBER = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?:=\s*[^,\n]+)?,?\s*(?:/\*.*)?$", re.M)


def header_constants(h: Header) -> dict[str, str]:
    """Name -> kind ("str" or "int") of every constant the header declares."""
    text = (INCLUDE / h.path).read_text()
    out: dict[str, str] = {}
    for name, value in _DEFINE.findall(text):
        value = re.sub(r"/\*.*?\*/", "", value).strip()
        if not name.startswith(h.prefixes) or not value:
            continue
        if "(" in name or value.startswith(("(uint32_t)~", "{")):
            continue  # macros with arguments or masks we do not model
        out[name] = "str" if value.startswith('"') else "int"
    for body in re.findall(r"enum\s+\w+\s*\{(.*?)\};", text, re.S):
        body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
        body = re.sub(r"^#.*$", "", body, flags=re.M)
        for name in _ENUM_MEMBER.findall(body):
            if name.startswith(h.prefixes):
                out[name] = "int"
    return out


def c_program(h: Header, consts: dict[str, str]) -> str:
    lines = [
        "#include <stdio.h>",
        "#include <stddef.h>",
        "#include <stdint.h>",
        "#include <errno.h>",
        "#include <string.h>",
        f"#include <{h.path}>",
        "int main(void) {",
    ]
    for name, kind in sorted(consts.items()):
        if kind == "str":
            lines.append(f'  printf("const {name} %s\\n", {name});')
        else:
            lines.append(f'  printf("const {name} %lld\\n", (long long)({name}));')
    for name, expr in h.computed:
        lines.append(f'  printf("const {name} %lld\\n", (long long)({expr}));')
    for struct in h.structs:
        lines.append(f'  printf("sizeof {struct} %zu\\n", sizeof(struct {struct}));')
        for field, _, *bits in getattr(h.module, struct)._fields_:
            if bits:
                # offsetof/sizeof do not apply to a bitfield: compare the byte image
                # of the structure with only this field set to all ones.
                lines += [
                    "  {",
                    f"    struct {struct} v; memset(&v, 0, sizeof v);",
                    f"    v.{field} = {(1 << bits[0]) - 1}u;",
                    f'    printf("bits {struct}.{field} ");',
                    "    for (size_t i = 0; i < sizeof v; i++)",
                    '      printf("%02x", ((unsigned char *)&v)[i]);',
                    '    printf("\\n");',
                    "  }",
                ]
                continue
            lines.append(
                f'  printf("offsetof {struct}.{field} %zu\\n", offsetof(struct {struct}, {field}));'
            )
            lines.append(
                f'  printf("fieldsize {struct}.{field} %zu\\n",'
                f" sizeof(((struct {struct} *)0)->{field}));"
            )
    if h.module is xs_wire:
        lines.append("  for (size_t i = 0; i < sizeof(xsd_errors) / sizeof(xsd_errors[0]); i++)")
        lines.append('    printf("xsd_error %zu %d %s\\n", i, xsd_errors[i].errnum,')
        lines.append("           xsd_errors[i].errstring);")
    lines += ["  return 0;", "}"]
    return "\n".join(lines) + "\n"


def python_view(h: Header, consts: dict[str, str]) -> list[str]:
    out = []
    for name, kind in sorted(consts.items()):
        value = getattr(h.module, name)
        out.append(f"const {name} {value if kind == 'str' else int(value)}")
    for name, _ in h.computed:
        out.append(f"const {name} {int(getattr(h.module, name))}")
    for struct in h.structs:
        cls = getattr(h.module, struct)
        out.append(f"sizeof {struct} {ctypes.sizeof(cls)}")
        for field, _, *bits in cls._fields_:
            if bits:
                v = cls()
                setattr(v, field, (1 << bits[0]) - 1)
                out.append(f"bits {struct}.{field} {bytes(v).hex()}")
                continue
            desc = getattr(cls, field)
            out += [
                f"offsetof {struct}.{field} {desc.offset}",
                f"fieldsize {struct}.{field} {desc.size}",
            ]
    if h.module is xs_wire:
        out += [f"xsd_error {i} {num} {name}" for i, (num, name) in enumerate(xs_wire.xsd_errors)]
    return out


@pytest.mark.interop
@pytest.mark.parametrize("h", HEADERS, ids=lambda h: h.path)
def test_python_matches_c_header(h: Header, tmp_path: Path) -> None:
    gcc = require_executable("gcc")
    require_file(INCLUDE / h.path)
    consts = header_constants(h)
    assert consts, f"no constants found in {h.path}: the header parser is broken"
    missing = sorted(n for n in consts if not hasattr(h.module, n))
    assert not missing, f"{h.module.__name__} lacks {missing} declared in {h.path}"

    src = tmp_path / "probe.c"
    src.write_text(c_program(h, consts))
    exe = tmp_path / "probe"
    subprocess.run([gcc, "-Wall", "-Werror", "-o", exe, src], check=True, capture_output=True)
    c_says = subprocess.run([exe], check=True, capture_output=True, text=True).stdout.splitlines()
    assert python_view(h, consts) == c_says


@pytest.mark.interop
def test_header_scan_finds_the_known_anchors() -> None:
    """Guards the scanner itself: if it silently found nothing, the test above would be weak."""
    require_file(INCLUDE / "xen/io/pciif.h")
    found = {h.path: header_constants(h) for h in HEADERS}
    assert {"XEN_PCI_OP_conf_read", "XEN_PCI_MAGIC", "SH_INFO_MAX_VEC"} <= set(
        found["xen/io/pciif.h"]
    )
    assert {"XS_DIRECTORY_PART", "XS_INVALID", "XENSTORE_RING_SIZE"} <= set(
        found["xen/io/xs_wire.h"]
    )
    assert len([n for n in found["xen/io/xenbus.h"] if n.startswith("XenbusState")]) == 9
    assert {"GTF_permit_access", "GNTST_okay"} <= set(found["xen/grant_table.h"])
    assert {"BLKIF_OP_READ", "BLKIF_RSP_ERROR", "BLKIF_MAX_SEGMENTS_PER_REQUEST"} <= set(
        found["xen/io/blkif.h"]
    )
    assert {"IOREQ_TYPE_PIO", "STATE_IORESP_READY", "IOREQ_BUFFER_SLOT_NUM"} <= set(
        found["xen/hvm/ioreq.h"]
    )
