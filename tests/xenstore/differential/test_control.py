"""CONTROL (XS_CONTROL, what xenstore-control sends): C 4.17 against ours, one command each.

Commands that write files (memreport with a file, logfile with one) are left
out: they would write where the oracle's process runs.
"""

from __future__ import annotations

import pytest

from xenpci.abi import xs_wire as w

from .exceptions import known_mark
from .scenario import compare, op

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]


def _case(*args: str, known: str | None = None) -> object:
    marks = [known_mark(known)] if known else []
    return pytest.param(args, id=" ".join(args), marks=marks)


@pytest.mark.parametrize(
    "args",
    [
        _case("help"),
        _case("help", "x"),
        _case("check"),
        _case("check", "x"),
        _case("log", "on"),
        _case("log", "off"),
        _case("print", "hello"),
        _case("logfile"),
        _case("quota"),
        _case("quota", "0"),
        _case("quota", "5"),
        _case("quota", "9"),
        _case("quota", "x"),
        _case("quota-soft"),
        _case("quota", "set", "nodes", "2000"),
        _case("quota", "set", "nodes", "0"),
        _case("quota", "set", "bogus", "1"),
        _case("quota-soft", "set", "memory", "5000"),
        _case("nonsense"),
        _case("live-update", "-a"),
    ],
)
def test_control_command(args: tuple[str, ...]) -> None:
    # A second command shows whether the first changed anything it reports.
    compare([op("a", w.XS_CONTROL, *args), op("a", w.XS_CONTROL, "quota", "5")])


def test_control_from_a_guest_is_refused() -> None:
    from .scenario import Introduce

    compare(
        [
            op("a", w.XS_MKDIR, "/local/domain/5"),
            op("a", w.XS_SET_PERMS, "/local/domain/5", "n5"),
            Introduce(5),
            op("g5", w.XS_CONTROL, "print", "x"),
            op("g5", w.XS_CONTROL, "quota", "5"),
        ]
    )
