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


# -- issue 14 §2: C xenstored 4.17 rules, one test per item -----------------------------
def _guest(store: XenStore, domid: int = 5) -> Sans:
    store.introduce_domain(domid)
    dom0 = Sans(store)
    dom0.one(w.XS_MKDIR, strings(f"/local/domain/{domid}"))
    dom0.one(w.XS_SET_PERMS, strings(f"/local/domain/{domid}", f"n{domid}"))
    return Sans(store, domid)


def test_identical_queued_event_dropped_per_connection(store: XenStore) -> None:
    """§2.3, XSA-326 ``send_event``: an event identical to one still queued is dropped."""
    dom0, watcher, other = Sans(store), Sans(store), Sans(store)
    watcher.req(w.XS_WATCH, strings("/dup", "t"))
    other.req(w.XS_WATCH, strings("/dup", "t"))
    watcher.events()
    for _ in range(100):
        dom0.one(w.XS_WRITE, b"/dup\0v")
    dom0.one(w.XS_WRITE, b"/dup/c\0v")  # a different path is a different event
    assert watcher.events() == [(b"/dup", b"t"), (b"/dup/c", b"t")]
    dom0.one(w.XS_WRITE, b"/dup\0v")  # no longer queued: sent again
    assert watcher.events() == [(b"/dup", b"t")]
    assert watcher.conn.queued == 0
    # Special events are never merged (send_event skips the check for "@").
    store.introduce_domain(7)
    store.introduce_domain(8)
    watcher.req(w.XS_WATCH, strings("@introduceDomain", "i"))
    watcher.events()
    store.introduce_domain(9)
    store.introduce_domain(10)
    assert watcher.events() == [(b"@introduceDomain", b"i")] * 2


def test_watches_of_one_connection_fire_in_registration_order(store: XenStore) -> None:
    """§2.4, ``fire_watches``: connections in order, each one's watches as registered."""
    dom0, a, b = Sans(store), Sans(store), Sans(store)
    for path, tok in (("/o/a", "1"), ("/", "2"), ("/o", "3")):
        a.req(w.XS_WATCH, strings(path, tok))
    b.req(w.XS_WATCH, strings("/o", "b"))
    a.events()
    b.events()
    dom0.one(w.XS_WRITE, b"/o/a/x\0v")
    assert a.events() == [(b"/o/a/x", b"1"), (b"/o/a/x", b"2"), (b"/o/a/x", b"3")]
    assert b.events() == [(b"/o/a/x", b"b")]


def test_subtree_removal_fires_in_c_child_order(store: XenStore) -> None:
    """§2.4, ``walk_node_tree`` + ``delnode_sub``: post-order, children in list order."""
    dom0, watcher = Sans(store), Sans(store)
    for p in ("/r/b/y", "/r/a/x", "/r/a/w", "/r/c"):
        dom0.one(w.XS_WRITE, p.encode() + b"\0v")
    for p in ("/r/c", "/r/a", "/r/a/w", "/r/b", "/r/b/y", "/r/a/x", "/r"):
        watcher.req(w.XS_WATCH, strings(p, p))
    watcher.events()
    dom0.one(w.XS_RM, strings("/r"))
    got = [p.decode() for p, _ in watcher.events()]
    assert got == ["/r/b/y", "/r/b", "/r/a/x", "/r/a/w", "/r/a", "/r/c", "/r"]


def test_guest_event_filter_node_or_parent_readable(store: XenStore) -> None:
    """§2.5, XSA-115 ``watch_permitted``: the node or its parent must be readable."""
    dom0, g = Sans(store), _guest(store, 5)
    dom0.one(w.XS_WRITE, b"/pf/ok\0v")
    dom0.one(w.XS_SET_PERMS, strings("/pf", "n0", "r5"))  # parent readable
    dom0.one(w.XS_SET_PERMS, strings("/pf/ok", "n0"))
    dom0.one(w.XS_WRITE, b"/pn/mine\0v")
    dom0.one(w.XS_SET_PERMS, strings("/pn", "n0"))
    dom0.one(w.XS_SET_PERMS, strings("/pn/mine", "n0", "r5"))  # node readable
    dom0.one(w.XS_WRITE, b"/px/no\0v")
    dom0.one(w.XS_SET_PERMS, strings("/px", "n0"))
    dom0.one(w.XS_SET_PERMS, strings("/px/no", "n0"))  # neither
    for p in ("/pf", "/pn", "/px"):
        g.req(w.XS_WATCH, strings(p, p))
    g.events()
    dom0.one(w.XS_WRITE, b"/pf/ok/deep\0v")  # node n0 (inherited), parent /pf/ok n0: no
    dom0.one(w.XS_WRITE, b"/pf/ok\0v2")  # parent /pf readable
    dom0.one(w.XS_WRITE, b"/pn/mine\0v2")  # node readable
    dom0.one(w.XS_WRITE, b"/px/no\0v2")
    assert g.events() == [(b"/pf/ok", b"/pf"), (b"/pn/mine", b"/pn")]


@pytest.mark.parametrize(
    ("acl", "op", "code"),
    [
        ("r5", w.XS_RM, "EACCES"),  # read-only parent: RM needs write there
        ("w5", w.XS_RM, None),  # writable parent: absent child is fine
        ("r5", w.XS_MKDIR, "EACCES"),
        ("w5", w.XS_MKDIR, None),
        ("r5", w.XS_WRITE, "EACCES"),
        ("w5", w.XS_READ, "EACCES"),  # READ needs read on the nearest ancestor
        ("r5", w.XS_READ, "ENOENT"),
        ("r5", w.XS_SET_PERMS, "EACCES"),
        ("w5", w.XS_SET_PERMS, "ENOENT"),
    ],
)
def test_missing_node_checks_nearest_ancestor_for_the_ops_own_perm(
    store: XenStore, acl: str, op: int, code: str | None
) -> None:
    """§2.6, ``get_node`` + ``errno_from_parents``: the op's own permission."""
    dom0, g = Sans(store), _guest(store, 5)
    dom0.one(w.XS_MKDIR, strings("/acl"))
    dom0.one(w.XS_SET_PERMS, strings("/acl", "n0", acl))
    payload = {
        w.XS_RM: strings("/acl/missing"),
        w.XS_MKDIR: strings("/acl/missing"),
        w.XS_WRITE: b"/acl/missing\0v",
        w.XS_READ: strings("/acl/missing/deeper"),
        w.XS_SET_PERMS: strings("/acl/missing", "n0"),
    }[op]
    assert err(g.one(op, payload)) == code


def test_directory_part_offset_is_c_atoi(store: XenStore) -> None:
    """§2.8, ``send_directory_part``: ``off = atoi(...)`` into an unsigned int."""
    c = Sans(store)
    for name in ("aa", "bb", "cc"):
        c.one(w.XS_MKDIR, strings(f"/dp/{name}"))

    def part(off: bytes) -> bytes:
        return c.one(w.XS_DIRECTORY_PART, b"/dp\0" + off + b"\0").payload.split(b"\0", 1)[1]

    assert part(b"x") == part(b"0") == b"aa\0bb\0cc\0\0"
    assert part(b"3junk") == part(b" +3") == b"bb\0cc\0\0"
    assert part(b"-1") == b"\0"  # negative: huge unsigned, past the end
    assert part(b"99999999999999999999") == b"\0"  # strtol clamps, (int) -1
    assert part(b"4") == b"b\0cc\0\0"  # mid-name offsets start mid-name, as C


def test_directory_part_chunks_cover_a_big_directory(store: XenStore) -> None:
    c = Sans(store)
    names = [f"child{i:04d}" for i in range(1500)]
    for n in names:
        c.one(w.XS_MKDIR, strings(f"/big/{n}"))
    got: list[bytes] = []
    off = 0
    gen = None
    while True:
        f = c.one(w.XS_DIRECTORY_PART, b"/big\0" + str(off).encode() + b"\0")
        assert len(f.payload) <= w.XENSTORE_PAYLOAD_MAX
        g, body = f.payload.split(b"\0", 1)
        assert gen in (None, g)
        gen = g
        if body.endswith(b"\0\0") or body == b"\0":
            got += body.rstrip(b"\0").split(b"\0") if body != b"\0" else []
            break
        got += body.rstrip(b"\0").split(b"\0")
        off += len(body)
    assert got == [n.encode() for n in names]


@pytest.mark.parametrize(
    "op", [w.XS_GET_DOMAIN_PATH, w.XS_RESET_WATCHES, w.XS_IS_DOMAIN_INTRODUCED, w.XS_CONTROL]
)
def test_unknown_tx_id_is_enoent_for_every_tx_op(store: XenStore, op: int) -> None:
    """§2.9, ``process_message``: only WATCH/UNWATCH (XS_FLAG_NOTID) ignore tx_id."""
    payload = {w.XS_CONTROL: strings("print", "x")}.get(op, strings("0"))
    assert err(Sans(store).one(op, payload, tx=77)) == "ENOENT"


def test_watch_ignores_tx_id(store: XenStore) -> None:
    c = Sans(store)
    assert c.req(w.XS_WATCH, strings("/w", "t"), tx=77)[0].payload == b"OK\0"
    assert c.one(w.XS_UNWATCH, strings("/w", "t"), tx=77).payload == b"OK\0"


@pytest.mark.parametrize("path", [b"/bad//path", b"", b"/trailing/", b"/sp ace", b"rel//x"])
def test_unwatch_of_invalid_path_is_enoent(store: XenStore, path: bytes) -> None:
    """§2.10, ``do_unwatch`` canonicalizes without validating: no such watch."""
    assert err(Sans(store).one(w.XS_UNWATCH, path + b"\0tok\0")) == "ENOENT"


@pytest.mark.parametrize(
    ("prefix", "ok"),
    [
        ("/local/domain/12345/", True),  # five digits: the prefix is not counted
        ("/local/domain/123456/", False),  # %5u stops after five: everything counts
        ("/local/domain/-1234/", True),  # the sign is one of the five characters
        ("/local/domain/5", False),  # no "/" after the number
        ("/other/", False),
    ],
)
def test_path_length_five_digit_domid_rule(store: XenStore, prefix: str, ok: bool) -> None:
    """§2.11, ``is_valid_nodename``: ``sscanf(node, "/local/domain/%5u/%n")``."""
    path = prefix + "x" * (2048 - (0 if prefix.endswith("/") else 1))
    f = Sans(store).one(w.XS_WRITE, path.encode() + b"\0v")
    assert err(f) == (None if ok else "EINVAL")


def test_set_perms_naming_a_missing_domain(store: XenStore) -> None:
    """§2.12, ``domain_alloc_permrefs``: a missing owner is ENOENT; another missing
    domain's entry is kept but marked IGNORE, for good (a domain created later
    with that id gets nothing from it)."""
    running = {0, 5}
    s = XenStore(domain_exists=running.__contains__)
    dom0 = Sans(s)
    dom0.one(w.XS_WRITE, b"/sp\0v")
    assert err(dom0.one(w.XS_SET_PERMS, strings("/sp", "n9"))) == "ENOENT"
    assert dom0.one(w.XS_SET_PERMS, strings("/sp", "n0", "r9", "r5")).payload == b"OK\0"
    assert dom0.one(w.XS_GET_PERMS, strings("/sp")).payload == b"n0\0r9\0r5\0"
    running.add(9)
    s.introduce_domain(9)
    assert err(Sans(s, 9).one(w.XS_READ, strings("/sp"))) == "EACCES"
    s.introduce_domain(5)
    assert Sans(s, 5).one(w.XS_READ, strings("/sp")).payload == b"v"


# -- issue 14 §4 and issue 11: structure, asserted by state rather than time ------------
def test_write_under_a_big_parent_does_not_copy_its_child_table(store: XenStore) -> None:
    """A write below /local/domain/N leaves /local/domain's node and child table in place."""
    c = Sans(store)
    for i in range(1, 200):
        c.one(w.XS_WRITE, f"/local/domain/{i}/name\0g{i}".encode())
    ld = store.tree.get("/local/domain")
    assert ld is not None and ld.children is not None
    table, node7 = ld.children, store.tree.get("/local/domain/7")
    c.one(w.XS_WRITE, b"/local/domain/7/name\0renamed")
    c.one(w.XS_WRITE, b"/local/domain/7/new/leaf\0v")
    assert store.tree.get("/local/domain") is ld and ld.children is table
    assert store.tree.get("/local/domain/7") is node7


def test_directory_part_builds_the_child_list_once(
    store: XenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DIRECTORY_PART's chunks of one node share one child blob while it is unchanged."""
    from xenpci.xenstore.tree import Node

    c = Sans(store)
    for i in range(3000):
        c.one(w.XS_MKDIR, strings(f"/many/c{i:05d}"))
    calls = []
    real = Node.child_names
    monkeypatch.setattr(Node, "child_names", lambda self: calls.append(1) or real(self))
    off = 0
    while True:
        body = c.one(w.XS_DIRECTORY_PART, b"/many\0%d\0" % off).payload.split(b"\0", 1)[1]
        if body.endswith(b"\0\0"):
            break
        off += len(body)
    assert off > 4 * 4096 and len(calls) == 1
    c.one(w.XS_MKDIR, strings("/many/late"))  # a new child: a new generation, a new blob
    c.one(w.XS_DIRECTORY_PART, b"/many\0" + b"0\0")
    assert len(calls) == 2


def test_transports_are_woken_outside_the_gate(store: XenStore) -> None:
    """Issue 11: the core holds no lock; threads enter through the store's gate, and
    ``notify`` and the INTRODUCE/RELEASE hooks run only once the caller has left it."""
    import threading

    from xenpci.xenstore.gate import gate_of

    assert not any(
        isinstance(v, type(threading.RLock()) | type(threading.Lock()))
        for v in vars(store).values()
    )
    gate = gate_of(store)
    assert gate_of(store) is gate  # one gate per store, shared by every transport
    held: list[bool] = []
    watcher = store.connection(0)
    watcher.notify = lambda: held.append(gate._lock._is_owned())  # type: ignore[attr-defined]
    watcher.feed(encode_req(w.XS_WATCH, strings("/nl", "t")))
    store.on_introduce = lambda dom: held.append(gate._lock._is_owned())  # type: ignore[attr-defined]
    writer = store.connection(0)
    with gate:
        with gate:  # re-entrant: wake-ups wait for the outermost exit
            writer.feed(encode_req(w.XS_WRITE, b"/nl/x\0v"))
        assert held == []
    assert held == [False]
    with gate:
        store.introduce_domain(12)
        assert held == [False]
    assert held == [False, False]
    # One thread and no gate (the executor, the xenstored daemon): woken at once.
    writer.feed(encode_req(w.XS_WRITE, b"/nl/y\0v"))
    assert held == [False, False, False]


def encode_req(type_: int, payload: bytes) -> bytes:
    from xenpci.xenstore.wire import encode

    return encode(type_, 1, 0, payload)


def test_machine_asks_its_hypervisor_which_domains_run() -> None:
    """§2.12 in the machine: its store asks the hypervisor, so a SET_PERMS owned by
    a domain that is not running is ENOENT, and one by a running guest is taken."""
    from xenpci.toolstack.machine import Machine

    m = Machine(deterministic=True)
    try:
        domid = m.start_guest("g", 64 * 1024, boot=False)
        m.xs.write("/sp", "v")
        with pytest.raises(XsError) as exc:
            m.xs.set_perms("/sp", Perms.of(f"n{domid + 40}"))
        assert exc.value.code == "ENOENT"
        m.xs.set_perms("/sp", Perms.of(f"n{domid}"))
        assert m.xs.get_perms("/sp") == Perms.of(f"n{domid}")
    finally:
        m.shutdown()


def test_a_path_valid_before_a_smaller_path_max_is_einval_after(store: XenStore) -> None:
    """Validated paths are remembered; lowering path-max must still refuse a long one."""
    c = Sans(store)
    path = "/" + "p" * 40
    assert err(c.one(w.XS_WRITE, strings(path) + b"v")) is None
    assert c.one(w.XS_READ, strings(path)).payload == b"v"
    store.quotas["path-max"] = 20
    assert err(c.one(w.XS_READ, strings(path))) == "EINVAL"
    store.quotas["path-max"] = 2048
    assert c.one(w.XS_READ, strings(path)).payload == b"v"
