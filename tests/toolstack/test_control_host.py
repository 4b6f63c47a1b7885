"""The control protocol's framing and validation, and the host description parser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xenpci.toolstack.control import (
    ControlProtocolError,
    LineFramer,
    RemoteError,
    Request,
    Response,
    decode_request,
    decode_response,
)
from xenpci.toolstack.errors import LibxlErrorCode, Refused
from xenpci.toolstack.host import DEFAULT_SOURCES, HostConfigError, load_host, parse_host


def test_request_round_trip() -> None:
    r = Request(3, "pci-attach", {"domain": "g1", "spec": "03:00.0"})
    (line,) = LineFramer().feed(r.encode())
    assert decode_request(line) == r


def test_framer_splits_and_buffers() -> None:
    f = LineFramer()
    a = Request(1, "list").encode()
    b = Request(2, "status").encode()
    data = a + b
    assert f.feed(data[:5]) == []
    got = f.feed(data[5:])
    assert [decode_request(x).id for x in got] == [1, 2]


def test_framer_refuses_endless_line() -> None:
    f = LineFramer(limit=100)
    with pytest.raises(ControlProtocolError) as e:
        f.feed(b"x" * 101)
    assert e.value.fatal


@pytest.mark.parametrize(
    ("line", "msg"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1,2]", "object"),
        (b'{"id": "1", "op": "list"}', "id"),
        (b'{"id": true, "op": "list"}', "id"),
        (b'{"id": 1, "op": 5}', "op"),
        (b'{"id": 1, "op": "list", "args": []}', "args"),
    ],
)
def test_bad_requests_are_named(line: bytes, msg: str) -> None:
    with pytest.raises(ControlProtocolError, match=msg):
        decode_request(line)


def test_refusal_crosses_the_wire_with_reason_and_code() -> None:
    resp = Response.failure(9, Refused("shared-page", "BAR0 shares a page"))
    back = decode_response(resp.encode().rstrip(b"\n"))
    with pytest.raises(RemoteError) as e:
        back.unwrap()
    assert e.value.reason == "shared-page"
    assert e.value.code == LibxlErrorCode.ERROR_FAIL
    assert e.value.type_name == "Refused"
    assert back.id == 9


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_lines_never_raise_anything_but_protocol_errors(data: bytes) -> None:
    f = LineFramer(limit=256)
    try:
        lines = f.feed(data)
    except ControlProtocolError:
        return
    for ln in lines:
        try:
            r = decode_request(ln)
        except ControlProtocolError:
            continue
        assert isinstance(r.args, dict)
        json.dumps(r.args)


# ------------------------------------------------------------------------ host


def test_default_host() -> None:
    h = parse_host("")
    assert h.iommu is True
    assert h.sources == DEFAULT_SOURCES


def test_host_file(tmp_path: Path) -> None:
    p = tmp_path / "host.toml"
    p.write_text(
        'iommu = false\ncatalog = false\n[[device]]\nsource = "model:gpu@0000:08:00.0"\n'
        '[[device]]\nsource = "sysfs:0000:00:02.0"\n'
    )
    h = load_host(p)
    assert h.iommu is False
    assert h.sources == ("model:gpu@0000:08:00.0", "sysfs:0000:00:02.0")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("iommu = 1", "iommu"),
        ("colour = 'red'", "colour"),
        ("[[device]]\npath = 'x'", "device[0]"),
        ("[[device]]\nsource = ''", "device[0].source"),
        ("device = 3", "device"),
        ("catalog = false\n[[device]]\nsource='a'\n[[device]]\nsource='a'", "device[1].source"),
        ("iommu = ", "TOML"),
    ],
)
def test_bad_host_files(text: str, where: str) -> None:
    with pytest.raises(HostConfigError) as e:
        parse_host(text, "h.toml")
    assert where in str(e.value)


def test_missing_host_file(tmp_path: Path) -> None:
    with pytest.raises(HostConfigError, match="cannot read"):
        load_host(tmp_path / "nope.toml")


def test_service_answers_every_failure_without_raising() -> None:
    """Unknown ops, bad arguments, lower-layer errors and plain bugs all become responses."""
    from typing import Any

    from xenpci.toolstack.control import ControlService

    class Boom:
        def domain_list(self) -> Any:
            raise KeyError("bug")

        def domain_destroy(self, dom: object) -> None:
            from xenpci.hv.errors import NoSuchDomain

            raise NoSuchDomain("d9 does not exist")

    svc = ControlService(Boom(), lambda: {})  # type: ignore[arg-type]
    cases = {
        b'{"id": 1, "op": "list"}': "internal error",
        b'{"id": 2, "op": "destroy", "args": {"domain": 9}}': "d9 does not exist",
        b'{"id": 3, "op": "destroy", "args": {"domain": [1]}}': "domain",
        b'{"id": 4, "op": "pci-attach", "args": {"domain": "g", "spec": 5}}': "spec",
        b'{"id": 5, "op": "pci-assignable-add", "args": {"bdf": "zz:00.0"}}': "malformed BDF",
        b'{"id": 6, "op": "create", "args": {"config": "name = "}}': "<xl.cfg>:1",
        b'{"id": 7, "op": "nope"}': "unknown op",
    }
    for line, want in cases.items():
        resp = svc.handle_line(line)
        assert not resp.ok and resp.error is not None
        assert want in resp.error["message"], (line, resp.error)
        # users read these: no Python class names, no reprs
        assert "Error" not in resp.error["message"] and "(" not in resp.error["message"][:1]
        assert resp.id == json.loads(line)["id"]
