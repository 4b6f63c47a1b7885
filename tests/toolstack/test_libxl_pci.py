"""libxl's PCI XenStore layout, sans-IO: the planned operations against fact sheet §3.5/§3.6."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xenpci.pci.address import SBDF
from xenpci.toolstack import libxl_pci as lp
from xenpci.xenstore.client import XsClient
from xenpci.xenstore.core import XenStore
from xenpci.xenstore.perms import Perms


class DictStore:
    """A flat path->value map: just enough XenStore to replay planned operations."""

    def __init__(self) -> None:
        self.nodes: dict[str, str] = {}
        self.perms: dict[str, Perms] = {}

    def apply(self, ops: list[lp.XsOp]) -> None:
        for op in ops:
            match op:
                case lp.XsWrite(path, value):
                    self.nodes[path] = value
                case lp.XsMkdir(path):
                    self.nodes.setdefault(path, "")
                case lp.XsRm(path):
                    for k in [k for k in self.nodes if k == path or k.startswith(path + "/")]:
                        del self.nodes[k]
                case lp.XsPathCleanup(path):
                    self.cleanup(path)
                case lp.XsSetPerms(path, perms):
                    self.perms[path] = perms

    def cleanup(self, path: str) -> None:
        """xenstore-rm -t on a flat map: the subtree, then each parent left empty."""
        gone = [k for k in self.nodes if k == path or k.startswith(path + "/")]
        if not gone:
            return
        for k in gone:
            del self.nodes[k]
        parent = path.rpartition("/")[0]
        while parent and self.nodes.get(parent) == "" and not self.dir(parent):
            del self.nodes[parent]
            parent = parent.rpartition("/")[0]

    def dir(self, path: str) -> dict[str, str]:
        pre = path + "/"
        return {k[len(pre) :]: v for k, v in self.nodes.items() if k.startswith(pre)}


BE = "/local/domain/0/backend/pci/5/0"
FE = "/local/domain/5/device/pci/0"


def test_paths_are_libxls() -> None:
    assert lp.backend_path(5) == BE
    assert lp.frontend_path(5) == FE
    assert lp.libxl_pci_path(SBDF(0, 0x3, 0x1F, 7)) == "/libxl/pci/0000-03-1f-7"
    assert lp.sbdf_from_libxl_dir("0001-0a-02-3") == SBDF(1, 0xA, 2, 3)
    assert lp.sbdf_from_libxl_dir("0001-0a-02") is None
    assert lp.sbdf_from_libxl_dir("0001-0a-22-3") is None  # slot > 0x1f


def test_first_device_layout_matches_fact_sheet() -> None:
    s = DictStore()
    dev = lp.PciBackendDevice(SBDF(0, 3, 0, 0), vdevfn=0x28, name="nic0", permissive=True)
    s.apply(lp.create_backend_ops(5, "guest1") + lp.add_device_ops(5, 0, dev))
    assert s.dir(BE) == {
        "frontend": FE,
        "frontend-id": "5",
        "online": "1",
        "state": "1",
        "domain": "guest1",
        "key-0": "0000:03:00.0",
        "dev-0": "0000:03:00.0",
        "vdevfn-0": "28",
        "name-0": "nic0",
        "opts-0": "msitranslate=0,power_mgmt=0,permissive=1,rdm_policy=strict",
        "state-0": "1",
        "num_devs": "1",
    }
    assert s.dir(FE) == {"backend": BE, "backend-id": "0", "state": "1"}
    assert str(s.perms[BE]) == "n0 r5"
    assert str(s.perms[FE]) == "n5 r0"


def test_vdevfn_zero_and_unnamed_write_no_optional_keys() -> None:
    ops = lp.add_device_ops(5, 2, lp.PciBackendDevice(SBDF(0, 1, 0, 0)))
    paths = {op.path for op in ops}
    assert f"{BE}/vdevfn-2" not in paths
    assert f"{BE}/name-2" not in paths
    assert lp.XsWrite(f"{BE}/num_devs", "3") in ops


def test_mark_closing() -> None:
    assert lp.mark_closing_ops(5, 1) == [
        lp.XsWrite(f"{BE}/state-1", "5"),
        lp.XsWrite(f"{BE}/state", "7"),
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"vdevfn": 0x100},
        {"rdm_policy": "lax"},
        {"name": ""},
        {"name": "x" * 65},
        {"name": "two words"},
    ],
)
def test_bad_device_values_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        lp.PciBackendDevice(SBDF(0, 1, 0, 0), **kwargs)  # type: ignore[arg-type]


def test_remove_rejects_broken_snapshots() -> None:
    with pytest.raises(ValueError, match="num_devs"):
        lp.remove_device_ops(5, {}, 0)
    with pytest.raises(ValueError, match="not in"):
        lp.remove_device_ops(5, {"num_devs": "1", "dev-0": "x", "key-0": "x", "state-0": "1"}, 1)
    with pytest.raises(ValueError, match="lacks"):
        lp.remove_device_ops(5, {"num_devs": "2", "dev-0": "x", "key-0": "x", "state-0": "1"}, 0)


def test_parse_backend_skips_garbage() -> None:
    snap = {
        "num_devs": "3",
        "dev-0": "0000:01:00.0",
        "dev-1": "not-a-bdf",
        "dev-2": "0000:02:00.1",
        "vdevfn-2": "10",
        "state-2": "4",
    }
    got = lp.parse_backend(snap)
    assert [(e.index, str(e.sbdf), e.vdevfn, e.state) for e in got] == [
        (0, "0000:01:00.0", 0, None),
        (2, "0000:02:00.1", 0x10, 4),
    ]


_devices = st.builds(
    lp.PciBackendDevice,
    sbdf=st.builds(SBDF, st.just(0), st.integers(0, 255), st.integers(0, 31), st.integers(0, 7)),
    vdevfn=st.sampled_from([0, 0x08, 0x10, 0x28]),
    name=st.none() | st.sampled_from(["a", "nic", "nvme-1"]),
    permissive=st.booleans(),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    devs=st.lists(_devices, min_size=1, max_size=6, unique_by=lambda d: d.sbdf),
    removals=st.lists(st.integers(0, 10), max_size=6),
)
def test_add_remove_compacts_like_a_list(
    devs: list[lp.PciBackendDevice], removals: list[int]
) -> None:
    """After any adds and removals the backend is exactly the surviving devices, re-indexed."""
    s = DictStore()
    s.apply(lp.create_backend_ops(5, "g"))
    model: list[lp.PciBackendDevice] = []
    for i, d in enumerate(devs):
        s.apply(lp.add_device_ops(5, i, d))
        # pciback's own per-device keys, which compaction must move too
        s.apply([lp.XsWrite(f"{BE}/vdev-{i}", f"0000:00:{i:02x}.0")])
        model.append(d)
    vdevs = [f"0000:00:{i:02x}.0" for i in range(len(devs))]
    for r in removals:
        if not model:
            break
        i = r % len(model)
        snap = s.dir(BE)
        ops = lp.remove_device_ops(5, snap, i)
        s.apply(ops)
        del model[i]
        del vdevs[i]
        if not model:
            s.apply(lp.destroy_ops(5))
    snap = s.dir(BE)
    if not model:
        assert snap == {}
        return
    assert snap["num_devs"] == str(len(model))
    entries = lp.parse_backend(snap)
    assert [e.sbdf for e in entries] == [d.sbdf for d in model]
    assert [e.vdevfn for e in entries] == [d.vdevfn for d in model]
    assert [e.name for e in entries] == [d.name for d in model]
    assert [e.opts for e in entries] == [d.opts for d in model]
    assert [snap[f"vdev-{i}"] for i in range(len(model))] == vdevs
    # no stale index above num_devs survives
    for k in snap:
        if "-" in k and k.rsplit("-", 1)[1].isdigit():
            assert int(k.rsplit("-", 1)[1]) < len(model), k


def test_path_cleanup_stops_at_a_parent_with_a_value_or_children() -> None:
    """``libxl__xs_path_cleanup`` against the real store: xenstore-rm -t semantics."""
    xs = XsClient.in_process(XenStore(), 0)
    try:
        xs.write("/t/keep", "value")
        xs.write("/t/keep/empty/leaf/node", "")
        xs.write("/t/busy/sibling", "1")
        xs.write("/t/busy/gone/node", "")
        lp.apply_ops(
            xs, [lp.XsPathCleanup("/t/keep/empty/leaf/node"), lp.XsPathCleanup("/t/busy/gone/node")]
        )
        assert not xs.exists("/t/keep/empty")
        assert xs.read("/t/keep") == b"value"
        assert xs.ls("/t/busy") == ["sibling"]
        lp.apply_ops(xs, [lp.XsPathCleanup("/t/never")])  # missing: nothing else touched
        assert sorted(xs.ls("/t")) == ["busy", "keep"]
    finally:
        xs.close()
