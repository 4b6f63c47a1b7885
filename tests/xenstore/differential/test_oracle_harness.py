"""The oracle harness itself: the shim's fake hypervisor and clean teardown."""

from __future__ import annotations

import os

import pytest

from tests.conftest import OS_EDGE_TIMEOUT
from xenpci.abi import xs_wire as w
from xenpci.testing.xs_oracle import RealXenstored, ShimRingClient, start_daemon

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]


@pytest.mark.parametrize("kind", ["c", "ocaml", "ours"])
def test_daemon_and_its_files_are_gone_after_close(kind: str) -> None:
    d = start_daemon(kind)
    a = d.connect()
    assert a.request(w.XS_WRITE, b"/x\0y")[0].payload == b"OK\0"
    pid, directory = d.pid, getattr(d, "dir", None)
    a.close()
    d.close()
    if kind != "ours":
        assert not os.path.exists(f"/proc/{pid}")  # exited and reaped
    assert directory is not None and not directory.exists()
    d.close()  # idempotent


def test_dying_domain_fires_release_domain_through_virq() -> None:
    # VIRQ_DOM_EXC as the hypervisor raises it: C rescans its domains
    # (xc_domain_getinfo via the shim), finds 6 dying and releases it.
    with RealXenstored("c", domids=(0, 5, 6)) as d:
        a = d.connect()
        a.request(w.XS_WATCH, b"@releaseDomain\0rel\0")
        assert [f.payload for f in a.sync()] == [b"@releaseDomain\0rel\0"]
        _, guest = d.introduce(a, 6)
        assert guest.request(w.XS_GET_DOMAIN_PATH, b"6\0")[0].payload == b"/local/domain/6\0"
        d.virq_dom_exc({0: "", 5: "", 6: "dying"})
        event = a.recv_frame()  # blocks until C fires it
        assert event is not None
        assert (event.type, event.payload) == (w.XS_WATCH_EVENT, b"@releaseDomain\0rel\0")
        assert a.request(w.XS_IS_DOMAIN_INTRODUCED, b"6\0")[0].payload == b"F\0"


def test_guest_ring_is_the_shim_file_and_errors_show_on_the_page() -> None:
    with RealXenstored("c") as d:
        a = d.connect()
        _, guest = d.introduce(a, 5)
        assert guest.request(w.XS_READ, b"/tool\0")[0].payload == b"EACCES\0"
        page = (d.dir / "ring-5").read_bytes()
        # The request went through req[] of the file C mapped, the reply through rsp[].
        assert b"/tool\0" in page[:1024] and b"EACCES\0" in page[1024:2048]
        guest.send(w.XS_READ.to_bytes(4, "little") + bytes(8) + (5000).to_bytes(4, "little"))
        d.settle(a)
        assert isinstance(guest, ShimRingClient)
        assert guest.ring_error == w.XENSTORE_ERROR_PROTO


def _c_aborts(script: list[tuple[str, int, bytes]]) -> bool:
    """Run raw requests on C, the last one unanswered; True if C then dies of an assertion.

    The wait is on the daemon's exit (a guest ring cannot see its peer die).
    """
    import signal

    with RealXenstored("c") as d:
        conns = {"a": d.connect()}
        *setup, (last_who, last_type, last_payload) = script
        for who, type_, payload in setup:
            if who == "intro5":
                conns["a"].request(w.XS_MKDIR, b"/local/domain/5\0")
                conns["a"].request(w.XS_SET_PERMS, b"/local/domain/5\0n5\0")
                conns["g5"] = d.introduce(conns["a"], 5)[1]
                continue
            assert conns[who].request(type_, payload)[-1].type == type_
        conns[last_who].send_frame(last_type, last_payload)
        proc = d._proc
        assert proc is not None
        return (
            proc.wait(timeout=OS_EDGE_TIMEOUT) == -signal.SIGABRT and "Assertion" in d.stderr_text()
        )


def test_c_bug_read_without_nul_after_rm_still_aborts() -> None:
    # exceptions.py "c-no-nul": why the test of one-arg ops without NUL is skipped.
    assert _c_aborts(
        [("a", w.XS_WRITE, b"/a\0v"), ("a", w.XS_RM, b"/a\0"), ("a", w.XS_READ, b"/a")]
    )


def test_c_bug_guest_set_perms_on_watched_special_still_aborts() -> None:
    # exceptions.py "c-special-perms-assert".
    assert _c_aborts(
        [
            ("intro5", 0, b""),
            ("g5", w.XS_WATCH, b"@releaseDomain\0r\0"),
            ("g5", w.XS_SET_PERMS, b"@releaseDomain\0n5\0"),
        ]
    )


def test_c_bug_extra_argument_answers_a_stale_errno() -> None:
    # exceptions.py "c-stale-errno": the same request gets whatever the call
    # before it left in errno, so C's answer is no rule to copy.
    from .scenario import Op, run

    two = b"/a\0b\0"
    got = run(
        "c",
        [
            Op("a", w.XS_READ, b"/missing\0"),
            Op("a", w.XS_READ, two),
            Op("a", w.XS_READ, b"bad//path\0"),
            Op("a", w.XS_READ, two),
        ],
    )
    assert [line.split("b'")[-1] for line in got] == [
        "ENOENT\\x00'",
        "ENOENT\\x00'",
        "EINVAL\\x00'",
        "EINVAL\\x00'",
    ]
