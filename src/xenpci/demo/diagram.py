"""The sequence diagram of the demo: pcifront's connect handshake, one op, the data path.

No real counterpart (a picture for a Xen engineer). The arrows are picked
from the trace by typed kind (:class:`xenpci.trace.Kind`) and by the records'
structured fields (domid, port, op); XenStore requests are matched by their
``op`` and path fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xenpci.trace import Kind, Trace

PARTICIPANTS = ("guest1", "xenstored", "dom0", "Xen", "device")


@dataclass(frozen=True, slots=True)
class Message:
    """One arrow of the diagram."""

    src: str
    dst: str
    label: str
    section: str

    def __post_init__(self) -> None:
        if self.src not in PARTICIPANTS or self.dst not in PARTICIPANTS:
            raise ValueError(f"unknown participant in {self.src} -> {self.dst}")
        if self.section not in ("connect", "op", "data"):
            raise ValueError(f"unknown section {self.section!r}")


_XS_OPS = ("XS_WRITE", "XS_WATCH", "XS_MKDIR")

#: The data-path arrows: the first record of each kind the guest causes after its op.
_DATA_ARROWS: dict[str, tuple[str, str, str]] = {
    Kind.MMIO_MAP: ("guest1", "Xen", "mmio_map BAR (checked against the iomem grant)"),
    Kind.EVTCHN_BIND_PIRQ: ("guest1", "Xen", "evtchn_bind_pirq (MSI-X vector)"),
    Kind.DMA_READ: ("device", "Xen", "DMA read, translated by the IOMMU"),
    Kind.DMA_WRITE: ("device", "Xen", "DMA write, translated by the IOMMU"),
    Kind.PIRQ: ("Xen", "guest1", "MSI-X -> pirq -> event channel"),
}


def sequence(trace: Trace, guest: int) -> list[Message]:
    """Arrows for ``guest``'s pcifront connect handshake, its first pci op, first data path.

    Read from the trace: the guest's XenStore ring set-up (before it watches
    ``device/pci/0``) is left out, as are events of other domains.
    """
    front = f"/local/domain/{guest}/device/pci/0"
    back = f"/backend/pci/{guest}/0"
    out: list[Message] = []
    labels: set[str] = set()
    watching = False
    port: int | None = None
    op_state = 0  # 0: none yet, 1: request seen, 2: served, 3: answered
    data_seen: set[str] = set()

    def add(src: str, dst: str, label: str, section: str) -> None:
        key = f"{src}>{dst}:{label}"
        if key not in labels:
            labels.add(key)
            out.append(Message(src, dst, label, section))

    for ev in trace.events:
        a = ev.args
        kind = ev.kind
        if kind == Kind.XENSTORE_REQUEST and ev.domid in (0, guest):
            path = str(a.get("arg", ""))
            if a.get("op") not in _XS_OPS or not (path.startswith(front) or back in path):
                continue
            if op_state:
                continue  # the handshake is over; later writes are hot-plug
            if ev.domid == guest and a.get("op") == "XS_WATCH":
                watching = True
            short = path.replace("/local/domain/", "")
            add(
                "guest1" if ev.domid == guest else "dom0",
                "xenstored",
                f"{a['op']} {short}",
                "connect",
            )
        elif not watching or ev.domid not in (0, guest):
            continue
        elif kind == Kind.EVTCHN_ALLOC_UNBOUND and ev.domid == guest and port is None:
            port = a.get("result")
            add("guest1", "Xen", "evtchn_alloc_unbound (pcifront port)", "connect")
        elif kind == Kind.GNTTAB_GRANT_FOREIGN_ACCESS and ev.domid == guest:
            add("guest1", "Xen", "grant the pci_op page to dom0", "connect")
        elif kind in (Kind.GNTTAB_MAP_GRANT_REF, Kind.EVTCHN_BIND_INTERDOMAIN) and ev.domid == 0:
            if a.get("granter", a.get("remote_domid")) == guest:
                add("dom0", "Xen", kind, "connect")
        elif kind == Kind.EVTCHN_SEND and port is not None and op_state < 3:
            if ev.domid == guest and a.get("port") == port and op_state == 0:
                add("guest1", "dom0", "event: pci_op posted", "op")
                op_state = 1
            elif (
                op_state == 2
                and ev.domid == 0
                and a.get("to_domid") == guest
                and a.get("to_port") == port
            ):
                add("dom0", "guest1", "event: pci_op answered", "op")
                op_state = 3
        elif kind == Kind.PCI_OP and ev.domid == guest and op_state == 1:
            where = f" at {a['offset']:#x}" if isinstance(a.get("offset"), int) else ""
            add("dom0", "device", f"{a.get('cmd')}{where} (through the config filter)", "op")
            op_state = 2
        elif ev.domid == guest and kind not in data_seen and op_state == 3:
            arrow = _DATA_ARROWS.get(kind)
            if arrow is None:
                continue
            data_seen.add(kind)
            src, dst, label = arrow
            add(src, dst, label, "data")
    return out


def mermaid(messages: list[Message]) -> str:
    lines = ["sequenceDiagram"]
    for p in PARTICIPANTS:
        lines.append(f"    participant {p}")
    section = ""
    for m in messages:
        if m.section != section:
            section = m.section
            lines.append(f"    Note over guest1,device: {section}")
        label = m.label.replace(";", ",").replace("#", "")
        lines.append(f"    {m.src}->>{m.dst}: {label}")
    return "\n".join(lines) + "\n"


def _esc(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


def html(messages: list[Message], title: str = "xenpci: connect handshake and one op") -> str:
    """A self-contained HTML page with the diagram as inline SVG (no scripts, no fetches)."""
    col, top, step = 190, 60, 26
    width = col * len(PARTICIPANTS) + 40
    x = {p: 20 + col // 2 + i * col for i, p in enumerate(PARTICIPANTS)}
    height = top + step * (len(messages) + 2) + 20
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="monospace" font-size="11">',
        '<defs><marker id="arrow" markerWidth="8" markerHeight="8" refX="8" refY="4" '
        'orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#333"/></marker></defs>',
    ]
    for p, px in x.items():
        parts.append(
            f'<rect x="{px - 80}" y="10" width="160" height="28" fill="#eef" stroke="#336"/>'
            f'<text x="{px}" y="29" text-anchor="middle">{_esc(p)}</text>'
            f'<line x1="{px}" y1="38" x2="{px}" y2="{height - 10}" stroke="#99a" '
            'stroke-dasharray="4,3"/>'
        )
    y = top
    for m in messages:
        x1, x2 = x[m.src], x[m.dst]
        colour = {"connect": "#225", "op": "#552", "data": "#252"}[m.section]
        parts.append(
            f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="{colour}" '
            'marker-end="url(#arrow)"/>'
            f'<text x="{(x1 + x2) / 2}" y="{y - 4}" text-anchor="middle" fill="{colour}">'
            f"{_esc(m.label)}</text>"
        )
        y += step
    parts.append("</svg>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title></head><body>\n<h1>{_esc(title)}</h1>\n"
        "<p>Blue: XenBus connect handshake; olive: one pcifront op through dom0; "
        "green: the data plane, straight between guest, Xen and the device.</p>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )


def write_diagram(trace: Trace, guest: int, path: str | Path) -> int:
    """Write the diagram (Mermaid if ``path`` ends in ``.mmd``, else HTML); return arrows."""
    messages = sequence(trace, guest)
    p = Path(path)
    text = mermaid(messages) if p.suffix == ".mmd" else html(messages)
    p.write_text(text, encoding="utf-8")
    return len(messages)
