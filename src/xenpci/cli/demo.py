"""``xenpci demo``: boot a machine, share a page and an event channel, show the trace.

v1 of the demo (issue 2): dom0 and one guest; the guest grants a page to dom0
and offers an unbound event channel, dom0 maps the page and binds the
channel, and the two exchange a few notifications with messages in the shared
page (the same handshake pcifront and pciback do, minus XenStore). Then it
prints the trace and a summary. Later issues grow it; keep it one small
orchestrating function over the public ``xenpci.hv`` API.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from xenpci.hv import PAGE_SIZE, Hypervisor
from xenpci.trace import Trace

MSG_LEN = 32


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What the demo did, for the summary and for tests."""

    guest_domid: int
    gref: int
    guest_port: int
    dom0_port: int
    rounds: int
    dom0_saw: tuple[str, ...]
    guest_saw: tuple[str, ...]
    counts: dict[str, int]
    trace: Trace


def _put(view: memoryview, text: str) -> None:
    view[:MSG_LEN] = text.encode().ljust(MSG_LEN, b"\0")


def _get(view: memoryview) -> str:
    return bytes(view[:MSG_LEN]).rstrip(b"\0").decode()


def run_demo(rounds: int = 3, timeout: float = 10.0) -> DemoResult:
    """Boot, share, notify ``rounds`` times each way, tear down; return what happened."""
    trace = Trace()
    hv = Hypervisor(trace=trace)
    try:
        guest = hv.create_domain("guest", 16 * 1024)
        g, d0 = guest.hypercalls, hv.dom0.hypercalls
        guest_saw: list[str] = []
        dom0_saw: list[str] = []
        done = threading.Event()

        # Guest side (as pcifront's probe): a page, a grant for dom0, an unbound port.
        def guest_setup() -> tuple[int, int, int]:
            gfn = g.alloc_page()
            g.write(gfn * PAGE_SIZE, b"hello from the guest".ljust(MSG_LEN, b"\0"))
            gref = g.gnttab_grant_foreign_access(0, gfn, readonly=False)
            port = g.evtchn_alloc_unbound(0)
            return gfn, gref, port

        gfn, gref, gport = guest.call(guest_setup)
        page = g.page(gfn)

        def on_guest(port: int) -> None:
            msg = _get(page)
            guest_saw.append(msg)
            _put(page, "pong " + msg.removeprefix("ping "))
            g.evtchn_send(port)

        g.evtchn_set_handler(gport, on_guest)

        # dom0 side (as pciback's connect): map the page, bind the channel.
        def dom0_setup() -> tuple[int, memoryview, int]:
            mapping = d0.gnttab_map_grant_ref(guest.domid, gref, readonly=False)
            dom0_saw.append(_get(mapping.view))  # the guest's bytes, through the grant
            return mapping.handle, mapping.view, d0.evtchn_bind_interdomain(guest.domid, gport)

        handle, shared, dport = hv.dom0.call(dom0_setup)

        def on_dom0(port: int) -> None:
            dom0_saw.append(_get(shared))
            if len(dom0_saw) > rounds:
                done.set()
                return
            _put(shared, f"ping {len(dom0_saw)}")
            d0.evtchn_send(port)

        d0.evtchn_set_handler(dport, on_dom0)

        def kick() -> None:
            _put(shared, "ping 1")
            d0.evtchn_send(dport)

        hv.dom0.call(kick)
        if not done.wait(timeout):
            raise RuntimeError("the notification exchange did not finish")

        # Teardown in the real order: backend unmaps, then the frontend ends access.
        hv.dom0.call(d0.gnttab_unmap_grant_ref, handle)
        hv.dom0.call(d0.evtchn_close, dport)
        guest.call(g.gnttab_end_foreign_access, gref)
        guest.call(g.evtchn_close, gport)
        return DemoResult(
            guest.domid,
            gref,
            gport,
            dport,
            rounds,
            tuple(dom0_saw),
            tuple(guest_saw),
            trace.counts(),
            trace,
        )
    finally:
        hv.shutdown()


def _summary(result: DemoResult) -> Table:
    table = Table(title="summary")
    table.add_column("what")
    table.add_column("value")
    table.add_row("guest", f"d{result.guest_domid}")
    table.add_row("shared page", f"gref {result.gref} (granted by d{result.guest_domid} to d0)")
    ends = f"d{result.guest_domid}:{result.guest_port} <-> d0:{result.dom0_port}"
    table.add_row("event channel", ends)
    table.add_row("dom0 read", " | ".join(result.dom0_saw))
    table.add_row("guest read", " | ".join(result.guest_saw))
    for kind, n in result.counts.items():
        table.add_row(f"count {kind}", str(n))
    return table


def register(app: typer.Typer) -> None:
    """Add ``xenpci demo`` to the app."""

    @app.command()
    def demo(
        trace: Annotated[
            Path | None, typer.Option("--trace", help="also write the trace as JSON lines")
        ] = None,
        rounds: Annotated[int, typer.Option(min=1, max=1000, help="notifications each way")] = 3,
    ) -> None:
        """Boot dom0 and a guest, share a granted page and an event channel, print the trace."""
        result = run_demo(rounds)
        console = Console()
        console.print(result.trace.render())
        console.print(_summary(result))
        if trace is not None:
            n = result.trace.to_jsonl(trace)
            console.print(f"wrote {n} trace records to {trace}")
