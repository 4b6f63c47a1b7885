"""The XenStore message codec shared by xenstored and the client (sans-IO).

Models the framing of ``docs/misc/xenstore.txt`` and ``xs_wire.h``: a 16-byte
``struct xsd_sockmsg`` (little-endian, as on x86) then ``len`` payload bytes,
the same on the Unix socket and on the ring. :class:`FrameDecoder` reassembles
a byte stream into frames and refuses ``len > XENSTORE_PAYLOAD_MAX`` the way C
xenstored's ``handle_input`` does (it gives up on the connection).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from xenpci.abi.xs_wire import XENSTORE_PAYLOAD_MAX, XS_ERROR, XS_WATCH_EVENT
from xenpci.xenstore.errors import ProtocolError, XsError

HEADER = struct.Struct("<IIII")
HEADER_SIZE = HEADER.size  # 16, sizeof(struct xsd_sockmsg)
U32_MAX = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Frame:
    """One message: header fields plus payload."""

    type: int
    req_id: int
    tx_id: int
    payload: bytes

    def __post_init__(self) -> None:
        if 0 <= self.type <= U32_MAX and 0 <= self.req_id <= U32_MAX and 0 <= self.tx_id <= U32_MAX:
            return  # the common case, without a loop (every request is a Frame)
        for name in ("type", "req_id", "tx_id"):
            v = getattr(self, name)
            if not 0 <= v <= U32_MAX:
                raise ValueError(f"{name} {v} does not fit a uint32_t")

    def encode(self) -> bytes:
        """The frame's bytes on the wire."""
        return HEADER.pack(self.type, self.req_id, self.tx_id, len(self.payload)) + self.payload

    def args(self) -> list[bytes]:
        """The NUL-terminated strings of the payload (a trailing unterminated part dropped)."""
        return self.payload.split(b"\0")[:-1]


# A decoded header's fields are uint32 by construction: the decoder fills the
# slots directly instead of running the frozen dataclass's __init__ and range
# check (which cost a third of handling a READ).
_new_frame = object.__new__
_slots = vars(Frame)
_set_type: Callable[[Frame, int], None] = _slots["type"].__set__
_set_req_id: Callable[[Frame, int], None] = _slots["req_id"].__set__
_set_tx_id: Callable[[Frame, int], None] = _slots["tx_id"].__set__
_set_payload: Callable[[Frame, bytes], None] = _slots["payload"].__set__


def _decoded(type_: int, req_id: int, tx_id: int, payload: bytes) -> Frame:
    f: Frame = _new_frame(Frame)
    _set_type(f, type_)
    _set_req_id(f, req_id)
    _set_tx_id(f, tx_id)
    _set_payload(f, payload)
    return f


def encode(type_: int, req_id: int, tx_id: int, payload: bytes) -> bytes:
    """Encode one message (no size check: the caller decides what is legal)."""
    return HEADER.pack(type_, req_id, tx_id, len(payload)) + payload


def strings(*parts: str | bytes) -> bytes:
    """Payload of NUL-terminated strings, as every request argument is sent."""
    return b"".join((p.encode() if isinstance(p, str) else p) + b"\0" for p in parts)


def error_frame(req: Frame, code: str) -> bytes:
    """An ``XS_ERROR`` reply echoing ``req``'s ids, payload ``"<code>\\0"``."""
    return encode(XS_ERROR, req.req_id, req.tx_id, code.encode() + b"\0")


def watch_event(path: str, token: bytes) -> bytes:
    """A ``XS_WATCH_EVENT``: ``path\\0token\\0``, req_id and tx_id 0."""
    return encode(XS_WATCH_EVENT, 0, 0, path.encode() + b"\0" + token + b"\0")


def check_reply(req_type: int, frame: Frame) -> bytes:
    """Client side: the payload of a reply to ``req_type``, or raise its XsError."""
    if frame.type == XS_ERROR:
        code = frame.payload.rstrip(b"\0").decode("ascii", "replace")
        # libxenstore's get_error: an unknown name decodes as EINVAL.
        try:
            raise XsError(code)
        except ValueError:
            raise XsError("EINVAL", f"unknown error string {code!r}") from None
    if frame.type != req_type:
        raise ProtocolError(f"reply type {frame.type} to a request of type {req_type}")
    return frame.payload


class FrameDecoder:
    """Reassemble frames from a byte stream that may arrive in any fragments.

    On a header with ``len`` > ``max_payload`` the frames before it are still
    returned; ``error`` is set and every later :meth:`feed` raises it.
    """

    __slots__ = ("_buf", "error", "max_payload")

    def __init__(self, max_payload: int = XENSTORE_PAYLOAD_MAX) -> None:
        self._buf = bytearray()
        self.max_payload = max_payload
        self.error: ProtocolError | None = None

    def one(self, data: bytes) -> Frame | None:
        """The frame if ``data`` is exactly one whole frame and nothing is buffered
        (the usual request), else None with nothing consumed: then use :meth:`feed`."""
        if (
            self._buf
            or self.error is not None
            or type(data) is not bytes
            or len(data) < HEADER_SIZE
        ):
            return None
        type_, req_id, tx_id, length = HEADER.unpack_from(data)
        if length > self.max_payload or len(data) != HEADER_SIZE + length:
            return None
        f: Frame = _new_frame(Frame)
        _set_type(f, type_)
        _set_req_id(f, req_id)
        _set_tx_id(f, tx_id)
        _set_payload(f, data[HEADER_SIZE:])
        return f

    def feed(self, data: bytes) -> list[Frame]:
        """Add bytes; return every complete frame (ProtocolError if the stream is broken)."""
        if self.error is not None:
            raise self.error
        if not self._buf and type(data) is bytes and len(data) >= HEADER_SIZE:
            # Nothing buffered and exactly one whole frame: the usual request.
            type_, req_id, tx_id, length = HEADER.unpack_from(data)
            if length <= self.max_payload and len(data) == HEADER_SIZE + length:
                # _decoded inlined: once per request.
                f: Frame = _new_frame(Frame)
                _set_type(f, type_)
                _set_req_id(f, req_id)
                _set_tx_id(f, tx_id)
                _set_payload(f, data[HEADER_SIZE:])
                return [f]
        self._buf += data
        frames: list[Frame] = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= HEADER_SIZE:
            type_, req_id, tx_id, length = HEADER.unpack_from(buf, pos)
            if length > self.max_payload:
                self.error = ProtocolError(f"payload length {length} > {self.max_payload}", length)
                del buf[:]
                if frames:
                    return frames
                raise self.error
            end = pos + HEADER_SIZE + length
            if len(buf) < end:
                break
            frames.append(_decoded(type_, req_id, tx_id, bytes(buf[pos + HEADER_SIZE : end])))
            pos = end
        del buf[:pos]
        return frames

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet make a whole frame."""
        return len(self._buf)
