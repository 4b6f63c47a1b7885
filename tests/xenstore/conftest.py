"""Fixtures: a store, a running socket daemon, and raw-frame helpers."""

from __future__ import annotations

import os
import socket
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import OS_EDGE_TIMEOUT
from xenpci.xenstore import XenStore
from xenpci.xenstore.server import XenstoredServer
from xenpci.xenstore.wire import Frame, FrameDecoder, encode

HDR = struct.Struct("<IIII")


@dataclass
class Daemon:
    store: XenStore
    server: XenstoredServer
    path: str
    ro_path: str
    dom5_path: str

    def env(self, path: str | None = None) -> dict[str, str]:
        return {**os.environ, "XENSTORED_PATH": path or self.path}


@pytest.fixture
def store() -> XenStore:
    return XenStore()


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    # Short directory: sun_path is 108 bytes.
    with tempfile.TemporaryDirectory(prefix="xs", dir="/tmp") as d:
        store = XenStore()
        path, ro, d5 = f"{d}/socket", f"{d}/socket_ro", f"{d}/socket.d5"
        server = XenstoredServer(store, path, ro, {5: d5})
        server.start()
        try:
            yield Daemon(store, server, path, ro, d5)
        finally:
            server.stop()


class RawConn:
    """A raw socket speaking frames, for attack tests and exact-byte checks."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(OS_EDGE_TIMEOUT)  # only turns a hang into a failure
        self.sock.connect(path)
        self.dec = FrameDecoder()
        self.pending: list[Frame] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_frame(self) -> Frame:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("closed")
            self.pending.extend(self.dec.feed(data))
        return self.pending.pop(0)

    def request(self, type_: int, payload: bytes, tx_id: int = 0, req_id: int = 0) -> Frame:
        self.send(encode(type_, req_id, tx_id, payload))
        return self.recv_frame()

    def is_closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(daemon: Daemon) -> Iterator[RawConn]:
    c = RawConn(daemon.path)
    yield c
    c.close()


class Sans:
    """Sans-IO driver: one connection, requests in, decoded frames out."""

    def __init__(self, store: XenStore, domid: int = 0, readonly: bool = False) -> None:
        self.store = store
        self.conn = store.connection(domid, readonly)
        self.dec = FrameDecoder()
        self.req_id = 0
        self.stash: list[tuple[bytes, bytes]] = []

    def req(self, type_: int, payload: bytes, tx: int = 0) -> list[Frame]:
        self.req_id += 1
        out = self.conn.feed(encode(type_, self.req_id, tx, payload))
        return [f for o in out for f in self.dec.feed(o)]

    def one(self, type_: int, payload: bytes, tx: int = 0) -> Frame:
        out = self.req(type_, payload, tx)
        self.stash += [_ev(f.payload) for f in out if f.type == 15]
        frames = [f for f in out if f.type != 15]
        assert len(frames) == 1, frames
        return frames[0]

    def events(self) -> list[tuple[bytes, bytes]]:
        """Events queued since the last call (including those beside replies)."""
        out = [f for o in self.conn.take_output() for f in self.dec.feed(o)]
        evs, self.stash = self.stash + [_ev(f.payload) for f in out if f.type == 15], []
        return evs


def _ev(payload: bytes) -> tuple[bytes, bytes]:
    path, token, *_ = payload.split(b"\0")
    return path, token
