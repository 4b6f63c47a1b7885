"""Stateful property test: the store against a plain ordered-dict model of XenStore.

Outside writes and a transaction interleave at random. Checked after each
step: every node's value and child order match the model; reads inside the
transaction see the snapshot plus its own writes; a commit either applies the
transaction's operations to the current model (serialisable) or fails with
EAGAIN and changes nothing; and a commit with no outside change in between
always succeeds, while one that read a value changed outside since always fails.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from xenpci.abi import xs_wire as w
from xenpci.xenstore import XenStore
from xenpci.xenstore.tree import parent_of
from xenpci.xenstore.wire import strings

from .conftest import Sans

_names = ["a", "b", "c"]
PATHS = [f"/h/{x}" for x in _names] + [f"/h/{x}/{y}" for x in _names for y in _names[:2]]
paths = st.sampled_from(PATHS)
values = st.binary(max_size=6)
Model = dict[str, bytes]


def m_write(m: Model, path: str, value: bytes | None) -> None:
    chain = []
    p = path
    while p not in m:
        chain.append(p)
        p = parent_of(p)
    for q in reversed(chain):
        m[q] = b""
    if value is not None:
        m[path] = value


def m_rm(m: Model, path: str) -> bool:
    """False if the parent is missing too (ENOENT)."""
    if path not in m:
        return parent_of(path) in m
    for q in [q for q in m if q == path or q.startswith(path + "/")]:
        del m[q]
    return True


def children(m: Model, path: str) -> list[str]:
    return [q.rsplit("/", 1)[1] for q in m if q != path and parent_of(q) == path]


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store = XenStore()
        self.out = Sans(self.store)
        self.txc = Sans(self.store)
        self.out.one(w.XS_MKDIR, strings("/h"))
        self.model: Model = {"/h": b""}
        self.tx: int | None = None
        self.tx_model: Model = {}
        self.tx_ops: list[tuple[str, str, bytes | None]] = []
        self.dirty = False
        self.tx_reads: dict[str, bytes | None] = {}

    def _outside(self) -> None:
        if self.tx is not None:
            self.dirty = True

    @rule(path=paths, value=values)
    def write(self, path: str, value: bytes) -> None:
        assert self.out.one(w.XS_WRITE, path.encode() + b"\0" + value).payload == b"OK\0"
        m_write(self.model, path, value)
        self._outside()

    @rule(path=paths)
    def mkdir(self, path: str) -> None:
        existed = path in self.model
        assert self.out.one(w.XS_MKDIR, strings(path)).payload == b"OK\0"
        m_write(self.model, path, None)
        if not existed:
            self._outside()

    @rule(path=paths)
    def rm(self, path: str) -> None:
        existed = path in self.model
        f = self.out.one(w.XS_RM, strings(path))
        ok = m_rm(self.model, path)
        assert (f.type == w.XS_RM) == ok, f
        if existed:
            self._outside()

    @precondition(lambda self: self.tx is None)
    @rule()
    def start(self) -> None:
        f = self.txc.one(w.XS_TRANSACTION_START, b"\0")
        self.tx = int(f.payload.rstrip(b"\0"))
        self.tx_model = dict(self.model)
        self.tx_ops = []
        self.tx_reads = {}
        self.dirty = False

    @precondition(lambda self: self.tx is not None)
    @rule(path=paths, value=st.one_of(st.none(), values), kind=st.sampled_from(["w", "rm"]))
    def tx_op(self, path: str, value: bytes | None, kind: str) -> None:
        assert self.tx is not None
        if kind == "w":
            if value is None:
                f = self.txc.one(w.XS_MKDIR, strings(path), tx=self.tx)
            else:
                f = self.txc.one(w.XS_WRITE, path.encode() + b"\0" + value, tx=self.tx)
            assert f.payload == b"OK\0"
            m_write(self.tx_model, path, value)
            self.tx_ops.append(("w", path, value))
        else:
            f = self.txc.one(w.XS_RM, strings(path), tx=self.tx)
            ok = m_rm(self.tx_model, path)
            assert (f.type == w.XS_RM) == ok
            if ok:
                self.tx_ops.append(("rm", path, None))

    @precondition(lambda self: self.tx is not None)
    @rule(path=paths)
    def tx_read(self, path: str) -> None:
        assert self.tx is not None
        f = self.txc.one(w.XS_READ, strings(path), tx=self.tx)
        if not self.tx_ops:  # still the pure snapshot: the value came from outside
            self.tx_reads.setdefault(path, self.tx_model.get(path))
        if path in self.tx_model:
            assert f.payload == self.tx_model[path]
        else:
            assert f.payload == b"ENOENT\0"

    @precondition(lambda self: self.tx is not None)
    @rule(commit=st.booleans())
    def end(self, commit: bool) -> None:
        assert self.tx is not None
        f = self.txc.one(w.XS_TRANSACTION_END, strings("T" if commit else "F"), tx=self.tx)
        self.tx = None
        if not commit:
            assert f.payload == b"OK\0"
            return
        if not self.dirty:
            assert f.payload == b"OK\0", "commit failed without any outside change"
        stale = [p for p, v in self.tx_reads.items() if self.model.get(p) != v]
        if stale:
            # It read a value that has since changed outside: it must not commit.
            assert f.payload == b"EAGAIN\0", stale
        if f.payload == b"OK\0":
            for kind, path, value in self.tx_ops:
                if kind == "w":
                    m_write(self.model, path, value)
                else:
                    m_rm(self.model, path)
        else:
            assert f.payload == b"EAGAIN\0"

    @invariant()
    def matches_model(self) -> None:
        for path in ["/h", *PATHS]:
            f = self.out.one(w.XS_READ, strings(path))
            if path in self.model:
                assert f.payload == self.model[path], path
                d = self.out.one(w.XS_DIRECTORY, strings(path)).payload
                assert d.split(b"\0")[:-1] == [c.encode() for c in children(self.model, path)]
            else:
                assert f.payload == b"ENOENT\0", path


StoreMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_store_matches_model = pytest.mark.timeout(120)(StoreMachine.TestCase)
