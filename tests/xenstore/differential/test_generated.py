"""Hypothesis-generated request sequences, C xenstored 4.17 against ours.

The generator covers dom0 clients on the socket (``a``, ``b``) and guest 5 on
its ring: reads, writes, mkdir, rm, directory, perms and watches over a small
path alphabet, so sequences collide on the same nodes. It stays clear of the
differences already named in :mod:`.exceptions` (each has its own directed
test): no transactions (§2.1/2.2/2.13), at most one watch per connection
(§2.4), no guest watches (§2.5), guests only inside their home (§2.6), and
permission entries only for existing domains (§2.12).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xenpci.abi import xs_wire as w

from .scenario import Introduce, Op, Step, Tx, compare, op

pytestmark = [pytest.mark.interop, pytest.mark.timeout(300)]

DOM0_PATHS = ["/h", "/h/a", "/h/a/b", "/h/b", "/h/a/c", "rel", "rel/x"]
GUEST_PATHS = ["data", "data/x", "data/x/y", "data/z", "/local/domain/5/data"]
PERMS = ["n0", "r0", "b0", "w0", "n5", "r5", "b5"]
VALUES = [b"", b"1", b"two", b"\x00bin\xff"]

_SETUP: list[Step] = [
    op("a", w.XS_MKDIR, "/local/domain/5"),
    op("a", w.XS_SET_PERMS, "/local/domain/5", "n5"),
    Introduce(5),
]


def _tree_ops(conn: str, paths: list[str]) -> st.SearchStrategy[Step]:
    p = st.sampled_from(paths)
    return st.one_of(
        st.builds(lambda x, v: op(conn, w.XS_WRITE, x, v), p, st.sampled_from(VALUES)),
        st.builds(lambda x: op(conn, w.XS_READ, x), p),
        st.builds(lambda x: op(conn, w.XS_MKDIR, x), p),
        st.builds(lambda x: op(conn, w.XS_RM, x), p),
        st.builds(lambda x: op(conn, w.XS_DIRECTORY, x), p),
        st.builds(lambda x: op(conn, w.XS_GET_PERMS, x), p),
    )


def _dom0_ops(conn: str) -> st.SearchStrategy[Step]:
    paths = [*DOM0_PATHS, "/local/domain/5/data/x"]
    p = st.sampled_from(paths)
    perms = st.lists(st.sampled_from(PERMS), min_size=1, max_size=3)
    return st.one_of(
        _tree_ops(conn, paths),
        st.builds(lambda x, ps: op(conn, w.XS_SET_PERMS, x, *ps), p, perms),
    )


@st.composite
def scripts(draw: st.DrawFn) -> list[Step]:
    steps: list[Step] = list(_SETUP)
    watched: dict[str, bool] = {"a": False, "b": False}
    n = draw(st.integers(min_value=1, max_value=14))
    for _ in range(n):
        who = draw(st.sampled_from(["a", "b", "g5", "g5"]))
        if who == "g5":
            steps.append(draw(_tree_ops("g5", GUEST_PATHS)))
            continue
        if not watched[who] and draw(st.integers(0, 4)) == 0:
            path = draw(st.sampled_from([*DOM0_PATHS, "/", "/local/domain/5"]))
            steps.append(op(who, w.XS_WATCH, path, f"tok-{who}"))
            watched[who] = True
            continue
        steps.append(draw(_dom0_ops(who)))
    return steps


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scripts())
def test_generated_sequences_match_c(script: list[Step]) -> None:
    compare(script)


@st.composite
def transaction_scripts(draw: st.DrawFn) -> list[Step]:
    """One connection, transactions included, nobody else acting meanwhile.

    With no other writer and no watcher, C's lazy reads (§2.1), blind writes
    (§2.13) and commit events (§2.2) cannot show; what is compared is what a
    transaction sees of its own changes, the ids, and the commit/abort result.
    """
    steps: list[Step] = [op("a", w.XS_WRITE, "/h/a", b"before")]
    tx: Tx | None = None
    for _ in range(draw(st.integers(min_value=1, max_value=16))):
        choice = draw(st.integers(0, 9))
        if tx is None and choice == 0:
            tx = Tx(len(steps))
            steps.append(op("a", w.XS_TRANSACTION_START, ""))
        elif tx is not None and choice == 0:
            steps.append(op("a", w.XS_TRANSACTION_END, draw(st.sampled_from(["T", "F"])), tx=tx))
            tx = None
        else:
            step = draw(_tree_ops("a", DOM0_PATHS))
            assert isinstance(step, Op)
            steps.append(Op(step.conn, step.type, step.payload, tx or 0))
    if tx is not None:
        steps.append(op("a", w.XS_TRANSACTION_END, "T", tx=tx))
    steps += [op("a", w.XS_DIRECTORY, "/h"), op("a", w.XS_READ, "/h/a")]
    return steps


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(transaction_scripts())
def test_generated_transactions_match_c(script: list[Step]) -> None:
    compare(script)
