"""Run one request script against two XenStore daemons and compare the bytes.

A script is a list of steps on named connections: ``a``, ``b``, ... are dom0
clients on the Unix socket, ``g5``, ``g6`` ... guests on their ring pages
(created by an :class:`Introduce` step). After every step the runner collects
the acting connection's frames up to its reply, then every other connection's
pending frames (a barrier request each, in a fixed order), so watch events and
their order are part of the transcript. Transaction ids are taken from the
replies (``Tx(step)``), so a difference in ids shows up once, not everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from xenpci.abi import xs_wire as w
from xenpci.testing.xs_oracle import RawClient, XsDaemon, start_daemon
from xenpci.xenstore.wire import Frame, encode


@dataclass(frozen=True)
class Tx:
    """The transaction id returned by TRANSACTION_START at script index ``step``."""

    step: int


@dataclass(frozen=True)
class Op:
    conn: str
    type: int
    payload: bytes
    tx: int | Tx = 0
    req_id: int = 0


@dataclass(frozen=True)
class Raw:
    """Send raw bytes; ``reply`` says whether a reply (or a close) is due before the next step."""

    conn: str
    data: bytes
    reply: bool = True


@dataclass(frozen=True)
class Introduce:
    """INTRODUCE ``domid`` over dom0 connection ``via``; the guest becomes ``g<domid>``."""

    domid: int
    via: str = "a"


@dataclass(frozen=True)
class Close:
    conn: str


@dataclass(frozen=True)
class Hold:
    """Stop draining ``conn`` (it does not read, so the daemon queues for it) or resume."""

    conn: str
    hold: bool = True


Step = Op | Raw | Introduce | Close | Hold


def op(conn: str, type_: int, *args: bytes | str, tx: int | Tx = 0, raw: bytes | None = None) -> Op:
    """``op("a", XS_WRITE, "/p", b"v")``: NUL after each arg but a WRITE's value."""
    if raw is not None:
        return Op(conn, type_, raw, tx)
    parts = [a.encode() if isinstance(a, str) else a for a in args]
    if type_ == w.XS_WRITE and len(parts) == 2:
        payload = parts[0] + b"\0" + parts[1]
    else:
        payload = b"".join(p + b"\0" for p in parts)
    return Op(conn, type_, payload, tx)


def show(f: Frame) -> str:
    try:
        name = w.xsd_sockmsg_type(f.type).name
    except ValueError:
        name = str(f.type)
    return f"{name} req={f.req_id:#x} tx={f.tx_id} {f.payload!r}"


@dataclass
class Run:
    daemon: XsDaemon
    #: Names of exceptions (exceptions.py) applied as normalisations, e.g. "dirpart-gen".
    normalize: tuple[str, ...] = ()
    conns: dict[str, RawClient] = field(default_factory=dict)
    replies: dict[int, list[Frame]] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    _gens: dict[bytes, int] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)

    def _norm(self, f: Frame) -> Frame:
        if "dirpart-gen" in self.normalize and f.type == w.XS_DIRECTORY_PART:
            # Only equality of generations matters to clients: number them by
            # first appearance so "same"/"changed" is still compared.
            gen, _, rest = f.payload.partition(b"\0")
            n = self._gens.setdefault(gen, len(self._gens))
            return Frame(f.type, f.req_id, f.tx_id, b"G%d\0" % n + rest)
        return f

    def conn(self, name: str) -> RawClient:
        if name not in self.conns:
            if name.startswith("g"):
                raise KeyError(f"guest {name} used before its Introduce step")
            self.conns[name] = self.daemon.connect(name)
        return self.conns[name]

    def tx_of(self, tx: int | Tx) -> int:
        if isinstance(tx, int):
            return tx
        frames = [f for f in self.replies.get(tx.step, []) if f.type == w.XS_TRANSACTION_START]
        if not frames:
            return 0xDEAD  # that START failed: use an id neither daemon issued
        return int(frames[0].payload.rstrip(b"\0") or b"0")

    def record(self, i: int, who: str, what: str, frames: list[Frame]) -> None:
        shown = " | ".join(show(self._norm(f)) for f in frames)
        self.lines.append(f"{i:3} {who:4} {what}: " + shown)

    def step(self, i: int, s: Step) -> None:
        if isinstance(s, Op):
            c = self.conn(s.conn)
            frames = c.request(s.type, s.payload, self.tx_of(s.tx), s.req_id)
            self.replies[i] = frames
            self.record(i, s.conn, "reply", frames)
            if c.closed:
                self.lines.append(f"{i:3} {s.conn:4} closed")
            if s.type == w.XS_RELEASE and frames and frames[-1].type == w.XS_RELEASE:
                # The released guest's ring is no longer served: stop using it.
                guest = self.conns.get("g" + s.payload.rstrip(b"\0").decode(errors="replace"))
                if guest is not None:
                    guest.closed = True
        elif isinstance(s, Raw):
            c = self.conn(s.conn)
            c.send(s.data)
            if s.reply:
                frames = c.reply()
                self.record(i, s.conn, "reply", frames)
                if c.closed:
                    self.lines.append(f"{i:3} {s.conn:4} closed")
        elif isinstance(s, Introduce):
            via = self.conn(s.via)
            frames, guest = self.daemon.introduce(via, s.domid)
            self.record(i, s.via, f"introduce {s.domid}", frames)
            self.conns[f"g{s.domid}"] = guest
        elif isinstance(s, Hold):
            if s.hold:
                self.held.add(s.conn)
            else:
                self.held.discard(s.conn)
        else:
            self.conns.pop(s.conn).close()
            self.lines.append(f"{i:3} {s.conn:4} closed by client")
        self.drain(i)

    def drain(self, i: int) -> None:
        """Every connection's pending frames, in name order."""
        settled = False
        for name in sorted(self.conns):
            c = self.conns[name]
            if c.closed or name in self.held:
                continue
            ring_error = getattr(c, "ring_error", None)
            if ring_error is not None:
                if not settled:
                    self.daemon.settle(self._dom0())
                    settled = True
                if c.ring_error:
                    c.closed = True
                    self.lines.append(f"{i:3} {name:4} ring error {c.ring_error}")
                    continue
            frames = c.sync()
            if frames:
                self.record(i, name, "pending", frames)
            if c.closed:
                self.lines.append(f"{i:3} {name:4} closed")

    def _dom0(self) -> RawClient:
        for name in sorted(self.conns):
            if not name.startswith("g") and not self.conns[name].closed:
                return self.conns[name]
        return self.conn("zz-settle")


def run(
    kind: str, script: Sequence[Step], normalize: tuple[str, ...] = (), **daemon_args: object
) -> list[str]:
    """The transcript of ``script`` against daemon ``kind``."""
    with start_daemon(kind, **daemon_args) as d:  # type: ignore[arg-type]
        r = Run(d, normalize)
        try:
            for i, s in enumerate(script):
                r.step(i, s)
        finally:
            for c in r.conns.values():
                c.close()
        return r.lines


def diff(oracle: list[str], ours: list[str]) -> str:
    import difflib

    return "\n".join(difflib.unified_diff(oracle, ours, "oracle", "ours", lineterm="", n=2))


def compare(
    script: Sequence[Step],
    oracle: str = "c",
    normalize: tuple[str, ...] = (),
    **daemon_args: object,
) -> None:
    """Assert ours answers ``script`` byte for byte as the ``oracle`` daemon does.

    ``normalize`` names entries of the exception table whose difference is
    masked in this comparison (each has its own strict test as well).
    """
    from .exceptions import EXCEPTIONS  # not at import: exceptions.py builds scripts

    for name in normalize:
        assert name in EXCEPTIONS, name
    expected = run(oracle, script, normalize, **daemon_args)
    got = run("ours", script, normalize, **daemon_args)
    assert got == expected, "ours differs from " + oracle + ":\n" + diff(expected, got)


def frame(type_: int, payload: bytes, tx: int = 0, req_id: int = 0) -> bytes:
    return encode(type_, req_id, tx, payload)


Builder = Callable[[], list[Step]]
