"""oxenstored (Xen's OCaml daemon) under the same shim: a smoke test and its known divergences.

oxenstored is the second reference (reference/xenstore.md). It runs here with
the shim's path redirection, its port file without a newline and a clamped
RLIMIT_NOFILE. Where it agrees with C, ours must match both; where it does
not, the divergence is in :data:`.exceptions.OCAML_DIVERGENCES` and asserted
here against the running daemons, so the table cannot go stale.
"""

from __future__ import annotations

import pytest

from xenpci.abi import xs_wire as w

from .exceptions import OCAML_DIVERGENCES
from .scenario import Introduce, Step, Tx, diff, op, run

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

SMOKE: list[Step] = [
    op("a", w.XS_WRITE, "/a/b", b"v"),
    op("a", w.XS_READ, "/a/b"),
    op("a", w.XS_DIRECTORY, "/a"),
    op("a", w.XS_GET_PERMS, "/a/b"),
    op("b", w.XS_WATCH, "/a", "t"),
    op("a", w.XS_WRITE, "/a/c", b"x"),
    op("a", w.XS_RM, "/a/b"),
    op("a", w.XS_READ, "/a/b"),
    op("a", w.XS_MKDIR, "/local/domain/5"),
    op("a", w.XS_SET_PERMS, "/local/domain/5", "n5"),
    Introduce(5),
    op("g5", w.XS_WRITE, "data/x", b"1"),
    op("g5", w.XS_READ, "data/x"),
    op("g5", w.XS_READ, "/a/c"),
    op("g5", w.XS_DIRECTORY, "/local/domain/5"),
    op("a", w.XS_TRANSACTION_START, ""),
    op("a", w.XS_WRITE, "/t", b"1", tx=Tx(15)),
    op("a", w.XS_TRANSACTION_END, "T", tx=Tx(15)),
    op("a", w.XS_READ, "/t"),
]


def test_oxenstored_smoke_agrees_with_c_and_ours() -> None:
    c = run("c", SMOKE)
    ocaml = run("ocaml", SMOKE)
    ours = run("ours", SMOKE)
    assert ocaml == c, diff(c, ocaml)
    assert ours == ocaml, diff(ocaml, ours)
    # The guest really was served over its ring by oxenstored.
    assert any(line.startswith(" 12 g5   reply: XS_READ") and "b'1'" in line for line in ocaml)


def _last_reply(lines: list[str]) -> str:
    return [line for line in lines if " reply: " in line][-1].split(" reply: ", 1)[1]


@pytest.mark.parametrize("name", sorted(OCAML_DIVERGENCES))
def test_oxenstored_divergence_still_holds(name: str) -> None:
    d = OCAML_DIVERGENCES[name]
    setup: list[Step] = [
        op("a", w.XS_MKDIR, "/local/domain/5"),
        op("a", w.XS_SET_PERMS, "/local/domain/5", "n5"),
        Introduce(5),
    ]
    c = _last_reply(run("c", setup + d.script, **d.daemon_args))
    ocaml = _last_reply(run("ocaml", setup + d.script, **d.daemon_args))
    assert (c, ocaml) == (d.c_reply, d.ocaml_reply), d.reason
