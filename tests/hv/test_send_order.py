"""A handler's trace events never precede the evtchn_send that caused them.

Truth: the trace's own sequence numbers, against the causal chain of a
ping-pong where each handler records what it received before sending on.
"""

from __future__ import annotations

import threading

import pytest

from tests.conftest import OS_EDGE_TIMEOUT
from xenpci.hv import Hypervisor

pytestmark = pytest.mark.timeout(60)

#: A test of the threaded mode (vCPUs are OS threads): a bound on its wait.


def test_each_handler_event_follows_its_send() -> None:
    rounds = 300
    with Hypervisor(ram_frames=1024, dom0_memory_kib=256) as hv:
        a, b = hv.create_domain("a", 64), hv.create_domain("b", 64)
        pa = a.hypercalls.evtchn_alloc_unbound(b.domid)
        pb = b.hypercalls.evtchn_bind_interdomain(a.domid, pa)
        done = threading.Event()
        seen = {"a": 0}

        def on_a(port: int) -> None:
            hv.trace.record("got", a.domid, "direct", port=port)
            seen["a"] += 1
            if seen["a"] == rounds:
                done.set()
            else:
                a.hypercalls.evtchn_send(port)

        def on_b(port: int) -> None:
            hv.trace.record("got", b.domid, "direct", port=port)
            b.hypercalls.evtchn_send(port)

        a.hypercalls.evtchn_set_handler(pa, on_a)
        b.hypercalls.evtchn_set_handler(pb, on_b)
        b.hypercalls.evtchn_send(pb)
        assert done.wait(OS_EDGE_TIMEOUT)
        chain = [e for e in hv.trace.events if e.kind in ("evtchn_send", "got")]
    # Strictly alternating: send by one end, then the other end's handler, and so on.
    assert len(chain) == 4 * rounds - 2  # b starts; a stops after its last "got"
    for i, ev in enumerate(chain):
        want = "evtchn_send" if i % 2 == 0 else "got"
        assert ev.kind == want, (i, ev)
        if want == "got":
            send = chain[i - 1]
            assert (ev.domid, ev.args["port"]) == (send.args["to_domid"], send.args["to_port"])
            assert ev.seq > send.seq and ev.t >= send.t
