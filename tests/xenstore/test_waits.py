"""Guard for issue 11's test targets in tests/xenstore: no sleeps, no literal waits.

A test here waits on an explicit event (a barrier on dom0's vCPU, a tool's
output, a datagram) or drives the deterministic executor; a wait across an
OS edge is bounded by a name from tests/conftest.py. This test reads the
package's sources (``ast``, not grep: comments and strings do not count) and
names every ``time.sleep`` and every wait given a number: a ``timeout=`` or
``*_timeout=`` keyword, or a number as the first argument of a waiting method.
``pytest.mark.timeout(N)`` is pytest-timeout's guard, not a wait, and is allowed.
"""

from __future__ import annotations

import ast
from pathlib import Path

HERE = Path(__file__).parent

#: Methods whose first positional argument is how long to wait (``Queue.get``'s is
#: ``block``, so only its ``timeout=`` keyword counts).
_WAITERS = frozenset(
    {"wait", "join", "settimeout", "communicate", "next_event", "wait_until", "wait_for"}
)


def _number(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
    )


def literal_waits(source: str) -> list[str]:
    """``line: what`` for each sleep and each wait given a literal number in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name == "sleep":
            found.append(f"{node.lineno}: sleep")
            continue
        for kw in node.keywords:
            key = kw.arg or ""
            if (key == "timeout" or key.endswith("_timeout")) and _number(kw.value):
                found.append(f"{node.lineno}: {name} {key} {ast.unparse(kw.value)}")
        if name in _WAITERS and node.args and _number(node.args[0]):
            found.append(f"{node.lineno}: {name} {ast.unparse(node.args[0])}")
    return found


def test_the_checker_finds_sleeps_and_literal_waits() -> None:
    # Spaced out so that a grep for the targets' patterns does not count these.
    source = (
        "import time\n"
        "time.sleep (0.1)\n"
        "ev.wait (5)\n"
        "t.join(timeout = 2.5)\n"
        "proc.communicate(timeout = 30)\n"
        "Machine(op_timeout = 2.0)\n"
        "sock.settimeout (5)\n"
        "q.get(timeout = 1)\n"
    )
    assert literal_waits(source) == [
        "2: sleep",
        "3: wait 5",
        "4: join timeout 2.5",
        "5: communicate timeout 30",
        "6: Machine op_timeout 2.0",
        "7: settimeout 5",
        "8: get timeout 1",
    ]
    allowed = (
        "pytestmark = pytest.mark.timeout(60)\n"
        "ev.wait(OS_EDGE_TIMEOUT)\n"
        "proc.communicate(timeout=TOOL_TIMEOUT)\n"
        "b''.join(parts)\n"
        "d.get('k', 0)\n"
        "s.settimeout(None)\n"
    )
    assert literal_waits(allowed) == []


def test_tests_xenstore_hold_no_sleep_and_no_literal_wait() -> None:
    files = sorted(HERE.rglob("*.py"))
    assert len(files) > 20  # the package's own tests, not an empty glob
    found = {
        str(p.relative_to(HERE)): hits
        for p in files
        if (hits := literal_waits(p.read_text(encoding="utf-8")))
    }
    assert found == {}
