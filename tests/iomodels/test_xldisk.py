"""``disk=[...]``: our parser against Debian's real libxlutil (``xlu_disk_parse``).

Both parse the same DISKSPEC strings. Where both accept, target, vdev,
access and format must agree; where libxlu refuses, we must refuse too;
where only libxlu accepts, the spec must be one of this model's documented
refusals (formats other than raw, CD-ROMs, empty drives), and our message
must say so. Device numbers follow ``docs/misc/vbd-interface.txt``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.interop import require_executable, require_file
from xenpci.toolstack.xldisk import DiskSpecError, parse_disk_list, parse_disk_spec, vdev_devid

SOURCE = Path(__file__).parent / "c" / "disk_parse.c"
LIBXLU_FORMAT_RAW = 4

SPECS = [
    "/dev/nvme0n1,,xvda",
    "/dev/nvme0n1,raw,xvdb,rw",
    "format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume",
    "vdev=xvdc,access=r,target=/dev/x,with,commas",
    "/dev/x,,sdb1,ro",
    "/dev/x, ,xvdg",
    "backendtype=phy,/dev/x,,xvde",
    "phy:/dev/x,xvda,w",
    "raw:/dev/x,xvdh,r",
    "/dev/x,,xvda,w,trusted",  # not a flag in Xen 4.17's libxlu
    "discard,/dev/x,,xvda",
    "no-discard,direct-io-safe,/dev/x,,xvda",
    "script=foo,backend=0,devtype=disk,/dev/x,,xvda",
    "target=/dev/x, vdev=xvdf",
    "/dev/x,,xvda,rw,extra",
    "/dev/x,,xvda,rx",
    "bogus=1,/dev/x,,xvda",
    "/dev/x",
    "/dev/x,qcow2,xvda",
    "devtype=cdrom,/root/x.iso,,hdc",
    "/dev/x,,xvda,,cdrom",
    ",,xvda",
]
#: libxlu accepts these; this model refuses them on purpose (module doc of xldisk).
DOCUMENTED_REFUSALS = {
    "/dev/x,qcow2,xvda": "not supported",
    "devtype=cdrom,/root/x.iso,,hdc": "not supported",
    "/dev/x,,xvda,,cdrom": "not modelled",
    ",,xvda": "not modelled",
}


def libxlu(specs: list[str], tmp_path: Path) -> list[dict[str, str]]:
    gcc = require_executable("gcc")
    require_file("/usr/include/libxlutil.h")
    exe = tmp_path / "disk_parse"
    subprocess.run(
        [gcc, "-Wall", "-Werror", "-o", exe, SOURCE, "-lxlutil", "-lxenlight"],
        check=True,
        capture_output=True,
    )
    out = subprocess.run([exe, *specs], check=True, capture_output=True, text=True).stdout
    return [dict(f.split("=", 1) for f in line.split(" ")) for line in out.splitlines()]


@pytest.mark.interop
def test_disk_specs_match_libxlutil(tmp_path: Path) -> None:
    real = libxlu(SPECS, tmp_path)
    assert len(real) == len(SPECS)
    for spec, theirs in zip(SPECS, real, strict=True):
        try:
            ours = parse_disk_spec(spec)
        except DiskSpecError as e:
            if theirs["rc"] == "0":
                assert spec in DOCUMENTED_REFUSALS, f"{spec!r}: libxlu accepts, we say {e}"
                assert DOCUMENTED_REFUSALS[spec] in str(e)
            continue
        assert theirs["rc"] == "0", f"{spec!r}: we accept what libxlu refuses"
        assert (ours.target, ours.vdev) == (theirs["target"], theirs["vdev"]), spec
        assert int(ours.readwrite) == int(theirs["rw"]), spec
        assert theirs["format"] == str(LIBXLU_FORMAT_RAW) and ours.format == "raw"
        assert theirs["cdrom"] == "0"


@pytest.mark.parametrize(
    ("vdev", "number"),
    [
        ("xvda", 202 << 8),  # 51712
        ("xvdb", 202 << 8 | 16),
        ("xvda1", 202 << 8 | 1),
        ("d0p0", 202 << 8),
        ("d1p5", 202 << 8 | 16 | 5),
        ("xvdq", 1 << 28 | 16 << 8),  # beyond xvdp: the extended scheme
        ("hda", 3 << 8),
        ("hdb", 3 << 8 | 64),
        ("hdc", 22 << 8),
        ("sda", 8 << 8),
        ("sdb1", 8 << 8 | 16 | 1),
    ],
)
def test_vbd_numbers_follow_vbd_interface_txt(vdev: str, number: int) -> None:
    assert vdev_devid(vdev) == number


def test_duplicate_vdevs_are_refused() -> None:
    with pytest.raises(DiskSpecError, match="same vdev"):
        parse_disk_list(["/dev/a,,xvda", "/dev/b,,d0p0"])
    with pytest.raises(DiskSpecError, match="vdev"):
        parse_disk_spec("/dev/a,,floppy")
