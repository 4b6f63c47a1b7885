"""Transactions as C xenstored 4.17 runs them (``xenstored_transaction.c``):
lazy per-node reads, EAGAIN when a node first read has changed, blind writes
commit, one event per changed node at commit; and the cases of Xen's xs-test
("ta err", "ta rmw") and pyxs's retry test."""

from __future__ import annotations

from xenpci.abi import xs_wire as w
from xenpci.xenstore import XenStore
from xenpci.xenstore.wire import strings

from .conftest import Sans
from .test_store import err


def start(c: Sans) -> int:
    f = c.one(w.XS_TRANSACTION_START, b"\0")
    assert f.tx_id == 0  # the reply header carries 0; the id is in the payload
    return int(f.payload.rstrip(b"\0"))


def test_ids_are_nonzero_and_per_connection(store: XenStore) -> None:
    a, b = Sans(store), Sans(store)
    t1, t2 = start(a), start(a)
    assert 0 not in (t1, t2) and t1 != t2
    # Another connection cannot use a's id; reply echoes the tx_id.
    f = b.one(w.XS_READ, strings("/local"), tx=t1)
    assert err(f) == "ENOENT" and f.tx_id == t1
    assert err(a.one(w.XS_TRANSACTION_START, b"\0", tx=t1)) == "EBUSY"
    assert err(a.one(w.XS_TRANSACTION_START, b"\0", tx=999)) == "ENOENT"
    assert err(a.one(w.XS_TRANSACTION_END, strings("T"))) == "ENOENT"
    assert err(a.one(w.XS_TRANSACTION_END, strings("X"), tx=t1)) == "EINVAL"


def test_ta_rmw_and_isolation(store: XenStore) -> None:
    c, other = Sans(store), Sans(store)
    c.one(w.XS_WRITE, b"/x\0a")
    t = start(c)
    assert c.one(w.XS_READ, strings("/x"), tx=t).payload == b"a"
    c.one(w.XS_WRITE, b"/x\0b", tx=t)
    c.one(w.XS_WRITE, b"/new/n\0z", tx=t)
    assert c.one(w.XS_READ, strings("/x"), tx=t).payload == b"b"
    # Nothing visible outside before commit.
    assert other.one(w.XS_READ, strings("/x")).payload == b"a"
    assert err(other.one(w.XS_READ, strings("/new"))) == "ENOENT"
    assert c.one(w.XS_TRANSACTION_END, strings("T"), tx=t).payload == b"OK\0"
    assert other.one(w.XS_READ, strings("/x")).payload == b"b"
    assert other.one(w.XS_READ, strings("/new/n")).payload == b"z"


def test_ta_err_conflict_eagain(store: XenStore) -> None:
    c, other = Sans(store), Sans(store)
    c.one(w.XS_WRITE, b"/x\0a")
    t = start(c)
    assert c.one(w.XS_READ, strings("/x"), tx=t).payload == b"a"
    other.one(w.XS_WRITE, b"/x\0b")
    assert c.one(w.XS_READ, strings("/x"), tx=t).payload == b"a"  # snapshot
    c.one(w.XS_WRITE, b"/x\0c", tx=t)
    assert c.one(w.XS_READ, strings("/x"), tx=t).payload == b"c"
    assert err(c.one(w.XS_TRANSACTION_END, strings("T"), tx=t)) == "EAGAIN"
    assert other.one(w.XS_READ, strings("/x")).payload == b"b"
    # The transaction is gone after EAGAIN.
    assert err(c.one(w.XS_READ, strings("/x"), tx=t)) == "ENOENT"


def test_lazy_read_sees_writes_after_start(store: XenStore) -> None:
    """Issue 14 §2.1: ``read_node`` in a transaction takes the live record on first access."""
    c, other = Sans(store), Sans(store)
    c.one(w.XS_WRITE, b"/lz\0old")
    t = start(c)
    other.one(w.XS_WRITE, b"/lz\0new")
    # Not yet touched in the transaction: the write made after START shows.
    assert c.one(w.XS_READ, strings("/lz"), tx=t).payload == b"new"
    # From now on the transaction's copy is what it sees (repeatable read).
    other.one(w.XS_WRITE, b"/lz\0newer")
    assert c.one(w.XS_READ, strings("/lz"), tx=t).payload == b"new"
    # ... and its generation is checked at commit (check_gen): EAGAIN.
    assert err(c.one(w.XS_TRANSACTION_END, strings("T"), tx=t)) == "EAGAIN"


def test_read_after_outside_change_commits(store: XenStore) -> None:
    """A node first read after an outside change is not a conflict: its generation matches."""
    c, other = Sans(store), Sans(store)
    t = start(c)
    other.one(w.XS_WRITE, b"/late\0v")
    assert c.one(w.XS_READ, strings("/late"), tx=t).payload == b"v"
    assert c.one(w.XS_TRANSACTION_END, strings("T"), tx=t).payload == b"OK\0"


def test_blind_write_commits(store: XenStore) -> None:
    """Issue 14 §2.13, pyxs test_transaction_commit_retry: C lets this commit.

    The transaction's first access to /foo/bar comes after the other client
    wrote it, so ``access_node`` records the new generation and
    ``finalize_transaction`` finds it unchanged.
    """
    c, other = Sans(store), Sans(store)
    t = start(c)
    other.one(w.XS_WRITE, b"/foo/bar\0outside")
    c.one(w.XS_WRITE, b"/foo/bar\0inside", tx=t)
    assert c.one(w.XS_TRANSACTION_END, strings("T"), tx=t).payload == b"OK\0"
    assert other.one(w.XS_READ, strings("/foo/bar")).payload == b"inside"


def test_unrelated_writes_do_not_conflict(store: XenStore) -> None:
    c, other = Sans(store), Sans(store)
    t = start(c)
    c.one(w.XS_WRITE, b"/tool/mine\0v", tx=t)
    other.one(w.XS_WRITE, b"/local/domain/0/other\0v")
    assert c.one(w.XS_TRANSACTION_END, strings("T"), tx=t).payload == b"OK\0"


def test_rm_conflicts_with_write_below(store: XenStore) -> None:
    c, other = Sans(store), Sans(store)
    c.one(w.XS_WRITE, b"/s/a/b\0v")
    t = start(c)
    c.one(w.XS_RM, strings("/s"), tx=t)
    other.one(w.XS_WRITE, b"/s/a/b/c\0deep")
    assert err(c.one(w.XS_TRANSACTION_END, strings("T"), tx=t)) == "EAGAIN"
    assert other.one(w.XS_READ, strings("/s/a/b/c")).payload == b"deep"


def test_sibling_creation_conflicts(store: XenStore) -> None:
    a, b = Sans(store), Sans(store)
    a.one(w.XS_MKDIR, strings("/p"))
    ta, tb = start(a), start(b)
    a.one(w.XS_WRITE, b"/p/x\0v", tx=ta)
    b.one(w.XS_WRITE, b"/p/y\0v", tx=tb)
    assert a.one(w.XS_TRANSACTION_END, strings("T"), tx=ta).payload == b"OK\0"
    assert err(b.one(w.XS_TRANSACTION_END, strings("T"), tx=tb)) == "EAGAIN"


def test_abort_and_watches_fire_at_commit_only(store: XenStore) -> None:
    c, watcher = Sans(store), Sans(store)
    watcher.req(w.XS_WATCH, strings("/wt", "tok"))
    t = start(c)
    c.one(w.XS_WRITE, b"/wt/a\0v", tx=t)
    assert watcher.events() == []
    c.one(w.XS_TRANSACTION_END, strings("F"), tx=t)
    assert watcher.events() == []
    assert err(c.one(w.XS_READ, strings("/wt/a"))) == "ENOENT"
    t = start(c)
    c.one(w.XS_WRITE, b"/wt/a\0v", tx=t)
    c.one(w.XS_WRITE, b"/wt/b\0v", tx=t)
    c.one(w.XS_TRANSACTION_END, strings("T"), tx=t)
    assert watcher.events() == [(b"/wt/a", b"tok"), (b"/wt/b", b"tok")]


def test_reset_watches_and_close_drop_transactions(store: XenStore) -> None:
    c = Sans(store)
    t = start(c)
    c.one(w.XS_WRITE, b"/gone\0v", tx=t)
    assert c.one(w.XS_RESET_WATCHES, b"\0").payload == b"OK\0"
    assert err(c.one(w.XS_READ, strings("/gone"), tx=t)) == "ENOENT"
    t = start(c)
    c.one(w.XS_WRITE, b"/gone\0v", tx=t)
    c.conn.close()  # client vanishes mid-transaction
    assert err(Sans(store).one(w.XS_READ, strings("/gone"))) == "ENOENT"
    assert c.conn.feed(b"\0" * 16) == []


def test_commit_fires_once_per_changed_node_in_access_order(store: XenStore) -> None:
    """Issue 14 §2.2: ``finalize_transaction`` fires one event per accessed node with
    ``fire_watch`` set, in first-access order, and none for a node created and
    removed inside the transaction (no perms recorded, no node to check in
    ``watch_permitted``)."""
    c, watcher = Sans(store), Sans(store)
    c.one(w.XS_MKDIR, strings("/ce"))
    watcher.req(w.XS_WATCH, strings("/ce", "t"))
    watcher.events()
    t = start(c)
    c.one(w.XS_WRITE, b"/ce/b\0v1", tx=t)
    c.one(w.XS_WRITE, b"/ce/a\0v", tx=t)
    c.one(w.XS_WRITE, b"/ce/b\0v2", tx=t)  # same node again: still one event
    c.one(w.XS_WRITE, b"/ce/tmp/x\0v", tx=t)
    c.one(w.XS_RM, strings("/ce/tmp"), tx=t)  # created then removed: silent
    assert watcher.events() == []
    assert c.one(w.XS_TRANSACTION_END, strings("T"), tx=t).payload == b"OK\0"
    assert watcher.events() == [(b"/ce/b", b"t"), (b"/ce/a", b"t")]
    assert c.one(w.XS_DIRECTORY, strings("/ce")).payload == b"b\0a\0"


def test_commit_cost_does_not_replay_requests(store: XenStore) -> None:
    """§3: a commit writes the records it holds; repeated writes of one node are one record."""
    c = Sans(store)
    t = start(c)
    for i in range(50):
        c.one(w.XS_WRITE, f"/rep\0{i}".encode(), tx=t)
    tx = c.conn.transactions[t]
    assert [p for p, e in tx.accessed.items() if e.modified] == ["/rep", "/"]
    assert c.one(w.XS_TRANSACTION_END, strings("T"), tx=t).payload == b"OK\0"
    assert c.one(w.XS_READ, strings("/rep")).payload == b"49"


def test_failed_write_fails_the_commit_enomem(store: XenStore) -> None:
    """Issue 14 §2.7: ``write_node`` failing in a transaction calls
    ``fail_transaction``; ``do_transaction_end`` then answers ENOMEM."""
    store.introduce_domain(5)
    dom0 = Sans(store)
    dom0.one(w.XS_MKDIR, strings("/local/domain/5"))
    dom0.one(w.XS_SET_PERMS, strings("/local/domain/5", "n5"))
    g = Sans(store, 5)
    t = start(g)
    g.one(w.XS_WRITE, b"ok\0small", tx=t)
    assert err(g.one(w.XS_WRITE, b"big\0" + b"x" * 3000, tx=t)) == "ENOSPC"
    assert err(g.one(w.XS_TRANSACTION_END, strings("T"), tx=t)) == "ENOMEM"
    assert err(dom0.one(w.XS_READ, strings("/local/domain/5/ok"))) == "ENOENT"


def test_rm_in_transaction_conflicts_with_new_child(store: XenStore) -> None:
    """The removal walked /s; a child created outside rewrites /s: EAGAIN (check_gen)."""
    c, other = Sans(store), Sans(store)
    c.one(w.XS_WRITE, b"/s2/a\0v")
    t = start(c)
    c.one(w.XS_RM, strings("/s2"), tx=t)
    other.one(w.XS_WRITE, b"/s2/b\0v")
    assert err(c.one(w.XS_TRANSACTION_END, strings("T"), tx=t)) == "EAGAIN"


def test_big_subtree_removed_in_transaction_commits(store: XenStore) -> None:
    """Removing a 2000-node subtree in a transaction: each node one record, all deleted."""
    c, watcher = Sans(store), Sans(store)
    for i in range(40):
        for j in range(49):
            c.one(w.XS_WRITE, f"/big/{i}/{j}\0v".encode())
    watcher.req(w.XS_WATCH, strings("/big/3/7", "x"))
    watcher.events()
    t = start(c)
    c.one(w.XS_RM, strings("/big"), tx=t)
    assert c.one(w.XS_TRANSACTION_END, strings("T"), tx=t).payload == b"OK\0"
    assert err(c.one(w.XS_READ, strings("/big"))) == "ENOENT"
    assert watcher.events() == [(b"/big/3/7", b"x")]  # exact, as delnode_sub fires
    assert store.tree.owned[0] == 8  # only setup_structure and dom0's nodes remain


def test_commit_keeps_per_owner_counts_equal_to_a_recount(store: XenStore) -> None:
    # The commit updates node and byte counts incrementally (in place when
    # the owner stays); they must equal a count of the committed tree.
    from collections import Counter

    from xenpci.xenstore.tree import walk

    c = Sans(store)
    c.one(w.XS_WRITE, b"/acct/a\0short")
    c.one(w.XS_WRITE, b"/acct/b\0x")
    c.one(w.XS_WRITE, b"/acct/gone/kid\0y")
    t = start(c)
    c.one(w.XS_WRITE, b"/acct/a\0a much longer value than before", tx=t)  # owner kept
    c.one(w.XS_SET_PERMS, strings("/acct/b", "n5"), tx=t)  # owner changed
    c.one(w.XS_WRITE, b"/acct/new/deep\0z", tx=t)  # created, with a parent
    c.one(w.XS_RM, strings("/acct/gone"), tx=t)
    assert c.one(w.XS_TRANSACTION_END, strings("T"), tx=t).payload == b"OK\0"
    owned: Counter[int] = Counter()
    memory: Counter[int] = Counter()
    for path, node in walk("/", store.tree.get("/")):  # type: ignore[arg-type]
        owner = node.perms.entries[0].domid
        owned[owner] += 1
        memory[owner] += node.record_size() + len(path)
    assert {d: n for d, n in store.tree.owned.items() if n} == dict(owned)
    assert {d: n for d, n in store.tree.memory.items() if n} == dict(memory)
    assert owned[5] == 1
