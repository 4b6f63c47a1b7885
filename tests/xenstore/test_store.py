"""Sans-IO semantics of the store, against C xenstored 4.17's rules."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.interop import require_module
from xenpci.abi import xs_wire as w
from xenpci.xenstore import Perms, XenStore, XsError
from xenpci.xenstore.tree import canonicalize
from xenpci.xenstore.wire import strings

from .conftest import Sans


def err(f: object) -> str | None:
    assert hasattr(f, "type")
    return f.payload.rstrip(b"\0").decode() if f.type == w.XS_ERROR else None  # type: ignore[attr-defined]


def test_initial_tree_matches_setup_structure(store: XenStore) -> None:
    c = Sans(store)
    assert c.one(w.XS_DIRECTORY, strings("/tool")).payload == b"xenstored\0"
    for p in ("/", "/tool", "/tool/xenstored", "/local"):
        assert c.one(w.XS_GET_PERMS, strings(p)).payload == b"n0\0"
    assert c.one(w.XS_READ, strings("/local")).payload == b""


def test_write_read_replies_and_echo(store: XenStore) -> None:
    c = Sans(store)
    f = c.one(w.XS_WRITE, b"/a/b\0va\0lue")
    assert (f.type, f.req_id, f.payload) == (w.XS_WRITE, c.req_id, b"OK\0")
    # Values are binary, NULs included, no NUL added on READ.
    assert c.one(w.XS_READ, strings("/a/b")).payload == b"va\0lue"
    assert c.one(w.XS_READ, strings("/a")).payload == b""  # implicit parent, empty value
    assert err(c.one(w.XS_READ, strings("/a/zz"))) == "ENOENT"


def test_directory_insertion_order_and_empty(store: XenStore) -> None:
    c = Sans(store)
    for n in ("z", "a", "m"):
        c.one(w.XS_WRITE, f"/d/{n}\0".encode())
    assert c.one(w.XS_DIRECTORY, strings("/d")).payload == b"z\0a\0m\0"
    assert c.one(w.XS_DIRECTORY, strings("/d/z")).payload == b""


def test_rm_rules(store: XenStore) -> None:
    c = Sans(store)
    c.one(w.XS_WRITE, b"/r/x/y\0v")
    assert c.one(w.XS_RM, strings("/r/x")).payload == b"OK\0"
    assert c.one(w.XS_DIRECTORY, strings("/r")).payload == b""
    assert c.one(w.XS_RM, strings("/r/x")).payload == b"OK\0"  # absent, parent exists
    assert err(c.one(w.XS_RM, strings("/nope/x"))) == "ENOENT"  # parent missing too
    assert err(c.one(w.XS_RM, strings("/"))) == "EINVAL"


def test_relative_paths_resolve_to_own_domain(store: XenStore) -> None:
    c = Sans(store)
    c.one(w.XS_WRITE, b"rel/x\0v")
    assert c.one(w.XS_READ, strings("/local/domain/0/rel/x")).payload == b"v"
    assert c.one(w.XS_GET_DOMAIN_PATH, strings("999")).payload == b"/local/domain/999\0"


@pytest.mark.parametrize(
    "path",
    [b"", b"/a//b", b"/a/", b"/a b", b"/a\xff", b"/" + b"x" * 2048 + b"y", b"@foo"],
)
def test_bad_paths_are_einval(store: XenStore, path: bytes) -> None:
    assert err(Sans(store).one(w.XS_READ, path + b"\0")) == "EINVAL"


def test_path_length_counts_after_local_domain_prefix(store: XenStore) -> None:
    c = Sans(store)
    long = "x" * 2048
    assert c.one(w.XS_WRITE, f"/local/domain/0/{long}\0".encode()).payload == b"OK\0"
    assert err(c.one(w.XS_WRITE, f"/local/domain/0/{long}y\0".encode())) == "EINVAL"


def test_onearg_needs_exactly_one_nul(store: XenStore) -> None:
    c = Sans(store)
    assert err(c.one(w.XS_READ, b"/a")) == "EINVAL"
    assert err(c.one(w.XS_READ, b"/tool\0x\0")) == "EINVAL"
    assert err(c.one(w.XS_WRITE, b"/nonul")) == "EINVAL"


def test_perms_inherit_and_unprivileged_owner(store: XenStore) -> None:
    dom0 = Sans(store)
    store.introduce_domain(5)
    dom0.one(w.XS_MKDIR, strings("/local/domain/5"))
    dom0.one(w.XS_SET_PERMS, strings("/local/domain/5", "n5", "r0"))
    g = Sans(store, 5)
    assert g.one(w.XS_WRITE, b"data/x\0v").payload == b"OK\0"
    # New nodes copy the parent's ACL with the creator as owner.
    assert dom0.one(w.XS_GET_PERMS, strings("/local/domain/5/data/x")).payload == b"n5\0r0\0"
    # Dom0 creating under a node keeps the parent's owner.
    dom0.one(w.XS_WRITE, b"/local/domain/5/y\0v")
    assert dom0.one(w.XS_GET_PERMS, strings("/local/domain/5/y")).payload == b"n5\0r0\0"
    # The guest cannot read dom0's nodes, nor learn whether children exist.
    assert err(g.one(w.XS_READ, strings("/local/domain/0/name"))) == "EACCES"
    assert err(g.one(w.XS_READ, strings("/local/domain/0/nothere"))) == "EACCES"
    assert err(g.one(w.XS_WRITE, b"/tool/x\0v")) == "EACCES"
    # Under a readable parent, a missing node is ENOENT.
    assert err(g.one(w.XS_READ, strings("data/missing"))) == "ENOENT"
    # Unprivileged may not change the owner; owner may change the rest.
    assert err(g.one(w.XS_SET_PERMS, strings("data/x", "n0"))) == "EPERM"
    assert g.one(w.XS_SET_PERMS, strings("data/x", "n5", "b7")).payload == b"OK\0"
    # Privileged-only ops.
    for t, p in ((w.XS_INTRODUCE, strings("6", "1", "1")), (w.XS_CONTROL, strings("help"))):
        assert err(g.one(t, p)) == "EACCES"


def test_acl_first_matching_entry_decides(store: XenStore) -> None:
    dom0 = Sans(store)
    store.introduce_domain(3)
    dom0.one(w.XS_WRITE, b"/acl\0secret")
    dom0.one(w.XS_SET_PERMS, strings("/acl", "r0", "n3", "r3"))
    assert err(Sans(store, 3).one(w.XS_READ, strings("/acl"))) == "EACCES"
    store.introduce_domain(4)
    assert Sans(store, 4).one(w.XS_READ, strings("/acl")).payload == b"secret"  # entry 0: r
    assert dom0.one(w.XS_GET_PERMS, strings("/acl")).payload == b"r0\0n3\0r3\0"


def test_set_perms_parsing(store: XenStore) -> None:
    c = Sans(store)
    assert err(c.one(w.XS_SET_PERMS, strings("/tool"))) == "EINVAL"
    assert err(c.one(w.XS_SET_PERMS, strings("/tool", "x0"))) == "EINVAL"
    assert err(c.one(w.XS_SET_PERMS, strings("/tool", "r"))) == "EINVAL"
    assert err(c.one(w.XS_SET_PERMS, strings("@other", "r0"))) == "EINVAL"
    assert c.one(w.XS_SET_PERMS, strings("@releaseDomain", "n0", "r5")).payload == b"OK\0"


def test_watch_first_event_subtree_and_relative(store: XenStore) -> None:
    c = Sans(store)
    frames = c.req(w.XS_WATCH, strings("/w", "tok"))
    # The ack first, then the initial event with the path exactly as given.
    assert [(f.type, f.payload) for f in frames] == [
        (w.XS_WATCH, b"OK\0"),
        (w.XS_WATCH_EVENT, b"/w\0tok\0"),
    ]
    assert err(c.one(w.XS_WATCH, strings("/w", "tok"))) == "EEXIST"
    c.req(w.XS_WATCH, strings("rel", "r"))
    frames = c.req(w.XS_WRITE, b"/w/a/b\0v")
    assert [f.payload for f in frames if f.type == 15] == [b"/w/a/b\0tok\0"]
    frames = c.req(w.XS_WRITE, b"/local/domain/0/rel/q\0v")
    assert [f.payload for f in frames if f.type == 15] == [b"rel/q\0r\0"]
    assert c.one(w.XS_UNWATCH, strings("rel", "r")).payload == b"OK\0"
    assert err(c.one(w.XS_UNWATCH, strings("rel", "r"))) == "ENOENT"
    assert err(c.one(w.XS_WATCH, strings("/w", "t", "1"))) == "EINVAL"  # 4.17: exactly 2


def test_rm_fires_exact_descendants_and_subtree_root(store: XenStore) -> None:
    c = Sans(store)
    c.one(w.XS_WRITE, b"/t/a/b\0v")
    for p, tok in (("/t", "top"), ("/t/a/b", "leaf"), ("/t/a/zz", "ghost"), ("/", "root")):
        c.req(w.XS_WATCH, strings(p, tok))
    frames = c.req(w.XS_RM, strings("/t/a"))
    evs = sorted(f.payload for f in frames if f.type == 15)
    assert evs == sorted([b"/t/a/b\0leaf\0", b"/t/a\0top\0", b"/t/a\0root\0"])


def test_mkdir_existing_fires_nothing(store: XenStore) -> None:
    c = Sans(store)
    c.one(w.XS_MKDIR, strings("/m"))
    c.req(w.XS_WATCH, strings("/m", "t"))
    assert [f.type for f in c.req(w.XS_MKDIR, strings("/m"))] == [w.XS_MKDIR]


def test_unprivileged_watcher_only_sees_readable_nodes(store: XenStore) -> None:
    store.introduce_domain(5)
    dom0, g = Sans(store), Sans(store, 5)
    g.req(w.XS_WATCH, strings("/", "all"))
    dom0.one(w.XS_WRITE, b"/secret\0x")
    assert g.events() == []
    dom0.one(w.XS_WRITE, b"/public\0x")
    dom0.one(w.XS_SET_PERMS, strings("/public", "r0"))
    assert g.events() == [(b"/public", b"all")]


def test_special_watches(store: XenStore) -> None:
    c = Sans(store)
    c.req(w.XS_WATCH, strings("@introduceDomain", "i"))
    c.req(w.XS_WATCH, strings("@releaseDomain", "r"))
    assert c.one(w.XS_INTRODUCE, strings("7", "123", "4")).payload == b"OK\0"
    assert c.events() == [(b"@introduceDomain", b"i")]
    assert c.one(w.XS_IS_DOMAIN_INTRODUCED, strings("7")).payload == b"T\0"
    assert c.one(w.XS_IS_DOMAIN_INTRODUCED, strings("999")).payload == b"F\0"
    assert err(c.one(w.XS_INTRODUCE, strings("8", "1", "0"))) == "EINVAL"
    assert c.one(w.XS_RELEASE, strings("7")).payload == b"OK\0"
    assert c.events() == [(b"@releaseDomain", b"r")]
    assert err(c.one(w.XS_RELEASE, strings("7"))) == "ENOENT"
    assert err(c.one(w.XS_RELEASE, strings("0"))) == "EINVAL"
    assert err(c.one(w.XS_RESUME, strings("7"))) == "ENOENT"
    assert err(c.one(w.XS_SET_TARGET, strings("7", "0"))) == "ENOENT"


def test_release_deletes_owned_nodes(store: XenStore) -> None:
    dom0 = Sans(store)
    store.introduce_domain(9)
    dom0.one(w.XS_MKDIR, strings("/local/domain/9"))
    dom0.one(w.XS_SET_PERMS, strings("/local/domain/9", "n9"))
    Sans(store, 9).one(w.XS_WRITE, b"x/y\0v")
    dom0.req(w.XS_WATCH, strings("/local/domain", "d"))
    store.release_domain(9)
    assert err(dom0.one(w.XS_READ, strings("/local/domain/9"))) == "ENOENT"
    assert (b"/local/domain/9", b"d") in dom0.events()


def test_set_target_gives_target_access(store: XenStore) -> None:
    dom0 = Sans(store)
    store.introduce_domain(2)
    store.introduce_domain(3)
    dom0.one(w.XS_WRITE, b"/t2\0v")
    dom0.one(w.XS_SET_PERMS, strings("/t2", "n2"))
    stub = Sans(store, 3)
    assert err(stub.one(w.XS_READ, strings("/t2"))) == "EACCES"
    dom0.one(w.XS_SET_TARGET, strings("3", "2"))
    assert stub.one(w.XS_READ, strings("/t2")).payload == b"v"


def test_reply_e2big_and_directory_part(store: XenStore) -> None:
    c = Sans(store)
    names = [f"child{i:04d}" for i in range(600)]  # 6000 bytes of names
    for n in names:
        c.one(w.XS_MKDIR, f"/big/{n}\0".encode())
    assert err(c.one(w.XS_DIRECTORY, strings("/big"))) == "E2BIG"
    got: list[bytes] = []
    offset, gen = 0, None
    while True:
        p = c.one(w.XS_DIRECTORY_PART, strings("/big", str(offset))).payload
        assert len(p) <= w.XENSTORE_PAYLOAD_MAX
        g, _, body = p.partition(b"\0")
        gen = gen or g
        assert g == gen
        got.append(body)
        if body.endswith(b"\0\0") or body == b"\0":
            break
        offset += len(body)
    blob = b"".join(got)
    assert blob[:-1].split(b"\0")[:-1] == [n.encode() for n in names]


def test_unknown_types_enosys_and_connection_survives(store: XenStore) -> None:
    c = Sans(store)
    for t in (15, 16, 20, 23, 99, 0xFFFF):
        assert err(c.one(t, b"")) == "ENOSYS"
    assert c.one(w.XS_READ, strings("/local")).payload == b""


def test_readonly_connection_erofs(store: XenStore) -> None:
    c = Sans(store, readonly=True)
    assert err(c.one(w.XS_WRITE, b"/x\0v")) == "EROFS"
    assert err(c.one(w.XS_RM, strings("/tool"))) == "EROFS"
    assert c.one(w.XS_READ, strings("/local")).payload == b""


def test_control(store: XenStore) -> None:
    c = Sans(store)
    assert c.one(w.XS_CONTROL, strings("print", "hello")).payload == b"OK\0"
    assert store.log == ["hello"]
    text = c.one(w.XS_CONTROL, strings("quota")).payload.decode()
    assert text.startswith("Quota settings:\n")
    assert f"{'nodes':<17}: {1000:8d} " in text
    assert c.one(w.XS_CONTROL, strings("quota", "set", "nodes", "50")).payload == b"OK\0"
    assert store.quotas["nodes"] == 50
    assert err(c.one(w.XS_CONTROL, strings("quota", "set", "nodes", "0"))) == "EINVAL"
    assert c.one(w.XS_CONTROL, strings("quota", "0")).payload.startswith(b"Domain 0:\n")
    assert err(c.one(w.XS_CONTROL, strings("quota", "77"))) == "ENOENT"
    assert err(c.one(w.XS_CONTROL, strings("bogus"))) == "EINVAL"
    assert c.one(w.XS_CONTROL, strings("check")).payload == b"OK\0"


def test_perms_value_roundtrip() -> None:
    p = Perms.of("b0", "r5", "n3")
    assert str(p) == "b0 r5 n3"
    assert Perms.from_wire(p.to_wire()) == p
    assert p.owner == 0


@pytest.mark.interop
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.sampled_from(["/", "a", "Z", "9", "-", "_", "@", " ", ".", "\x00", "é", "~", "//"]),
        min_size=1,
        max_size=12,
    ).map(lambda xs: "/" + "".join(xs))
)
def test_path_validity_agrees_with_pyxs(path: str) -> None:
    """pyxs's check_path is an independent statement of the same rules (absolute paths)."""
    helpers = require_module("pyxs.helpers")
    raw = path.encode()
    try:
        helpers.check_path(raw)
        pyxs_ok = b"\x00" not in raw
    except Exception:
        pyxs_ok = False
    try:
        canonicalize(raw, 0)
        ours = True
    except XsError as e:
        assert e.code == "EINVAL"
        ours = False
    assert ours == pyxs_ok
