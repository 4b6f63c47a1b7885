"""Quotas: C xenstored 4.17 defaults and errors, for unprivileged domains only."""

from __future__ import annotations

from xenpci.abi import xs_wire as w
from xenpci.xenstore import XenStore
from xenpci.xenstore.wire import strings

from .conftest import Sans
from .test_store import err


def guest(store: XenStore, domid: int = 5) -> Sans:
    store.introduce_domain(domid)
    dom0 = Sans(store)
    dom0.one(w.XS_MKDIR, strings(f"/local/domain/{domid}"))
    dom0.one(w.XS_SET_PERMS, strings(f"/local/domain/{domid}", f"n{domid}"))
    return Sans(store, domid)


def test_watch_quota_e2big_after_129(store: XenStore) -> None:
    g = guest(store)
    for i in range(129):  # 4.17 checks count > 128 before adding: 129 fit
        assert g.req(w.XS_WATCH, strings("/local", f"t{i}"))[0].payload == b"OK\0"
    assert err(g.one(w.XS_WATCH, strings("/local", "one-more"))) == "E2BIG"
    # Dom0 is not bound.
    d = Sans(store)
    for i in range(200):
        assert d.req(w.XS_WATCH, strings("/local", f"t{i}"))[0].payload == b"OK\0"


def test_transaction_quota_enospc_after_11(store: XenStore) -> None:
    g = guest(store)
    for _ in range(11):
        assert g.one(w.XS_TRANSACTION_START, b"\0").type == w.XS_TRANSACTION_START
    assert err(g.one(w.XS_TRANSACTION_START, b"\0")) == "ENOSPC"


def test_node_size_quota(store: XenStore) -> None:
    g = guest(store)
    assert g.one(w.XS_WRITE, b"ok\0" + b"v" * 2015).payload == b"OK\0"
    assert err(g.one(w.XS_WRITE, b"big\0" + b"v" * 2016)) == "ENOSPC"
    assert Sans(store).one(w.XS_WRITE, b"/dom0big\0" + b"v" * 4000).payload == b"OK\0"


def test_nodes_quota(store: XenStore) -> None:
    g = guest(store)
    store.quotas["nodes"] = 10
    results = [err(g.one(w.XS_WRITE, f"n{i}\0v".encode())) for i in range(12)]
    # /local/domain/5 itself is owned by dom5: 1 + 9 new fit.
    assert results[:9] == [None] * 9
    assert results[9:] == ["ENOSPC"] * 3


def test_permissions_quota(store: XenStore) -> None:
    g = guest(store)
    g.one(w.XS_WRITE, b"p\0v")
    assert g.one(w.XS_SET_PERMS, strings("p", "n5", "r1", "r2", "r3", "r4")).payload == b"OK\0"
    assert err(g.one(w.XS_SET_PERMS, strings("p", "n5", "r1", "r2", "r3", "r4", "r6"))) == (
        "ENOSPC"
    )


def test_never_equota(store: XenStore) -> None:
    names = {n for _, n in w.xsd_errors}
    g = guest(store)
    store.quotas["nodes"] = 2
    for i in range(5):
        f = g.one(w.XS_WRITE, f"q{i}\0v".encode())
        if f.type == w.XS_ERROR:
            assert f.payload.rstrip(b"\0").decode() in names


def test_transaction_nodes_quota(store: XenStore) -> None:
    g = guest(store)
    store.quotas["transaction-nodes"] = 5
    f = g.one(w.XS_TRANSACTION_START, b"\0")
    tid = int(f.payload.rstrip(b"\0"))
    codes = [err(g.one(w.XS_READ, f"k{i}\0".encode(), tx=tid)) for i in range(5)]
    # access_node counts every node read, present or not: each missing kN and,
    # once, its parent /local/domain/5 that errno_from_parents reads.
    assert codes == ["ENOENT"] * 4 + ["ENOSPC"]
    # The failed access failed the transaction (trans->fail): commit is ENOMEM.
    assert err(g.one(w.XS_TRANSACTION_END, b"T\0", tx=tid)) == "ENOMEM"


def test_set_perms_event_reaches_watcher_losing_access(store: XenStore) -> None:
    dom0 = Sans(store)
    g = guest(store, 6)
    dom0.one(w.XS_WRITE, b"/shared\0v")
    dom0.one(w.XS_SET_PERMS, strings("/shared", "n0", "r6"))
    g.req(w.XS_WATCH, strings("/shared", "s"))
    dom0.one(w.XS_SET_PERMS, strings("/shared", "n0"))  # revoke
    assert g.events() == [(b"/shared", b"s")]  # old perms still count for this event
    dom0.one(w.XS_WRITE, b"/shared\0w")
    assert g.events() == []


def test_path_max_quota_set_by_control_binds_everyone(store: XenStore) -> None:
    """``path-max`` counts the part after ``/local/domain/<N>/`` (C ``is_valid_nodename``)."""
    g, dom0 = guest(store), Sans(store)
    name20, name21 = "p" * 20, "p" * 21
    assert err(g.one(w.XS_WRITE, f"{name21}\0v".encode())) is None  # default 2048
    assert dom0.one(w.XS_CONTROL, strings("quota", "set", "path-max", "20")).payload == b"OK\0"
    assert err(g.one(w.XS_WRITE, f"{name20}\0v".encode())) is None
    assert err(g.one(w.XS_WRITE, f"x{name20}\0v".encode())) == "EINVAL"
    assert err(dom0.one(w.XS_READ, strings("/" + name20))) == "EINVAL"  # 21 counted
    assert dom0.one(w.XS_READ, strings(f"/local/domain/5/{name20}")).payload == b"v"
    assert err(dom0.one(w.XS_READ, strings(f"/local/domain/5/{name21}"))) == "EINVAL"


# -- issue 14 §3: memory as C 4.17 counts it; a guest can only hurt itself -------------
def test_memory_counted_as_c(store: XenStore) -> None:
    """``do_tdb_write``: record (24 + 8/perm + value + children) plus the path, for the
    owner; ``add_watch``: path plus token; the parent's record grows by the child name."""
    g = guest(store)
    before = store.memory_used(5)
    g.one(w.XS_WRITE, b"a\0xyz")
    record = 24 + 8 + 3 + len("/local/domain/5/a")
    assert store.memory_used(5) - before == record + len("a\0")
    before = store.memory_used(5)
    g.req(w.XS_WATCH, strings("/local/domain/5/a", "tok"))
    g.events()
    assert store.memory_used(5) - before == len("/local/domain/5/a") + len("tok")
    g.one(w.XS_UNWATCH, strings("/local/domain/5/a", "tok"))
    g.one(w.XS_RM, strings("a"))
    assert store.memory_used(5) == before - record - len("a\0")


def test_transaction_records_count_for_the_domain(store: XenStore) -> None:
    g = guest(store)
    before = store.memory_used(5)
    t = int(g.one(w.XS_TRANSACTION_START, b"\0").payload.rstrip(b"\0"))
    g.one(w.XS_READ, strings("/local/domain/5"), tx=t)
    assert store.memory_used(5) > before
    g.one(w.XS_TRANSACTION_END, strings("F"), tx=t)
    assert store.memory_used(5) == before


def test_guest_never_reading_events_only_hurts_itself(store: XenStore) -> None:
    """§3 memory attack: a guest that never reads while watches fire. Its queued
    events count against its memory quota; at the quota ``send_event`` drops them
    (so its memory stays below the quota). dom0 and a victim are unaffected."""
    store.quotas["memory"] = 8192
    dom0 = Sans(store)
    dom0.one(w.XS_MKDIR, strings("/pub"))
    dom0.one(w.XS_SET_PERMS, strings("/pub", "n0", "r5", "r6"))
    attacker, victim = guest(store, 5), guest(store, 6)
    for i in range(4):
        attacker.req(w.XS_WATCH, strings("/pub", f"tok{i}"))
    for i in range(2000):
        assert dom0.one(w.XS_WRITE, f"/pub/k{i}\0v".encode()).payload == b"OK\0"
    assert store.memory_used(5) < store.quotas["memory"]
    assert attacker.conn.queued < 400  # ~8 KiB of 30-byte events, the rest dropped
    assert victim.one(w.XS_READ, strings("/pub/k1999")).payload == b"v"
    # Once it reads, it gets events again.
    attacker.conn.take_output()
    dom0.one(w.XS_WRITE, b"/pub/again\0v")
    assert len(attacker.conn.take_output()) == 4


def test_dom0_never_reading_is_bounded_by_duplicate_drop(store: XenStore) -> None:
    """§3: a dom0 client that never reads while one node changes holds one event."""
    dom0, lazy = Sans(store), store.connection(0)
    lazy.feed(w_frame(w.XS_WATCH, strings("/hot", "t")))
    for i in range(5000):
        dom0.one(w.XS_WRITE, f"/hot\0{i}".encode())
    assert lazy.queued == 1


def w_frame(type_: int, payload: bytes) -> bytes:
    from xenpci.xenstore.wire import encode

    return encode(type_, 1, 0, payload)


def test_deep_path_create_and_remove_within_quota(store: XenStore) -> None:
    """§3 deep paths: a guest loops MKDIR+RM of a ~1000-level path; every step is
    O(depth) here (no ancestor copies), and the store stays consistent."""
    g = guest(store)
    deep = "/".join(["d"] * 990)
    for _ in range(20):
        assert g.one(w.XS_MKDIR, deep.encode() + b"\0").payload == b"OK\0"
        assert g.one(w.XS_RM, b"d\0").payload == b"OK\0"
    assert store.tree.owned[5] == 1
