"""open_source: the SOURCE spec grammar, the scheme registry, and precise errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from xenpci.pci import sources
from xenpci.pci.address import SBDF
from xenpci.pci.config import ConfigSpace
from xenpci.pci.dump import load_dump
from xenpci.pci.errors import SourceError
from xenpci.pci.function import PciFunction
from xenpci.pci.sources import open_source, register_source_scheme, source_schemes

from .conftest import DUMPS_DIR

TREE = DUMPS_DIR / "tree-asus-p6t6"


@pytest.fixture
def clean_schemes() -> Iterator[None]:
    saved = dict(sources._SCHEMES)
    yield
    sources._SCHEMES.clear()
    sources._SCHEMES.update(saved)


def test_file_and_file_at_bdf() -> None:
    everything = open_source(str(TREE))
    assert len(everything) == len(load_dump(TREE)) > 50
    (one,) = open_source(f"{TREE}@00:1a.0")
    assert one.sbdf == SBDF.parse("0000:00:1a.0")
    (same,) = open_source(f"dump:{TREE}@0000:00:1a.0")
    assert same.config.raw() == one.config.raw()


def test_missing_bdf_lists_what_exists() -> None:
    with pytest.raises(SourceError) as exc:
        open_source(f"{DUMPS_DIR / 'cap-pcie-2'}@02:00.0")
    assert "no function 0000:02:00.0 (have: 0000:01:00.0)" in exc.value.reason
    with pytest.raises(SourceError, match="bad PCI address"):
        open_source(f"{DUMPS_DIR / 'cap-pcie-2'}@zz")


def test_sysfs_specs(fake_sysfs: Callable[..., Path]) -> None:
    cfg = load_dump(DUMPS_DIR / "cap-pcie-2")[0].config.known()
    root = fake_sysfs("0000:01:00.0", cfg)
    fake_sysfs("0000:01:00.1", cfg)
    assert len(open_source("sysfs", sysfs_root=root)) == 2
    (fn,) = open_source("sysfs:01:00.1", sysfs_root=root)
    assert fn.sbdf == SBDF(0, 1, 0, 1) and fn.source.startswith("sysfs:")
    with pytest.raises(SourceError, match="bad PCI address"):
        open_source("sysfs:1:0.0", sysfs_root=root)


def test_registered_scheme(clean_schemes: None) -> None:
    calls: list[str] = []

    def loader(rest: str) -> list[PciFunction]:
        calls.append(rest)
        cs = ConfigSpace(b"\xf4\x1a\x41\x10" + bytes(60))
        return [PciFunction(SBDF(0, 0, 4, 0), cs, source=f"model:{rest}")]

    register_source_scheme("model", loader)
    assert "model" in source_schemes()
    (fn,) = open_source("model:nic")
    assert calls == ["nic"] and fn.source == "model:nic"
    with pytest.raises(SourceError):
        register_source_scheme("sysfs", loader)
    with pytest.raises(SourceError):
        register_source_scheme("not a name", loader)


def test_unknown_spec_errors() -> None:
    with pytest.raises(SourceError, match="empty"):
        open_source("")
    with pytest.raises(SourceError) as exc:
        open_source("/no/such/file")
    assert "no such file" in exc.value.reason and "sysfs" in exc.value.reason
    with pytest.raises(SourceError, match="cannot read"):
        open_source("/no/such/file@00:00.0")
