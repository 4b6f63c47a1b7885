"""The machine's control protocol: JSON lines between ``xenpci xl`` and the machine daemon.

Real xl links libxl and talks to the hypervisor and xenstored itself; our
machine lives in another process, so xl sends each libxl call as one JSON
object per line over a Unix socket and gets one back. This module is the
sans-IO part: framing with a line-length limit, request/response values, and
the dispatch of a request to a :class:`~xenpci.toolstack.libxl.Libxl` call.
The socket loops live in :mod:`xenpci.toolstack.daemon`.

Request:  ``{"id": 1, "op": "pci-attach", "args": {"domain": "guest1", "spec": "03:00.0"}}``
Response: ``{"id": 1, "ok": true, "result": ...}`` or
``{"id": 1, "ok": false, "error": {"type": "Refused", "code": -3, "reason": "...",
"message": "..."}}``; ``code`` is libxl's error code.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xenpci.errors import XenpciError
from xenpci.pci.address import SBDF
from xenpci.toolstack.errors import LibxlErrorCode, Refused, ToolstackError
from xenpci.toolstack.libxl import Libxl
from xenpci.toolstack.xlcfg import PciDefaults, load_domain_config, parse_pci_spec

MAX_LINE = 1 << 20  # an xl.cfg file fits many times over; a hostile client cannot grow us


class ControlProtocolError(ToolstackError):
    """A malformed frame or request; the connection answers it and stays usable unless fatal."""

    def __init__(self, message: str, *, fatal: bool = False) -> None:
        self.fatal = fatal
        super().__init__(message, LibxlErrorCode.ERROR_INVAL)


class RemoteError(ToolstackError):
    """An error the daemon reported: its type name, libxl code and refusal reason, if any."""

    def __init__(self, type_name: str, code: int, message: str, reason: str | None) -> None:
        self.type_name = type_name
        self.reason = reason
        try:
            lcode = LibxlErrorCode(code)
        except ValueError:
            lcode = LibxlErrorCode.ERROR_FAIL
        super().__init__(message, lcode)


@dataclass(frozen=True, slots=True)
class Request:
    id: int
    op: str
    args: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return json.dumps({"id": self.id, "op": self.op, "args": self.args}).encode() + b"\n"


@dataclass(frozen=True, slots=True)
class Response:
    id: int | None
    ok: bool
    result: Any = None
    error: dict[str, Any] | None = None

    def encode(self) -> bytes:
        obj: dict[str, Any] = {"id": self.id, "ok": self.ok}
        if self.ok:
            obj["result"] = self.result
        else:
            obj["error"] = self.error
        return json.dumps(obj).encode() + b"\n"

    @classmethod
    def failure(cls, rid: int | None, exc: BaseException) -> Response:
        if isinstance(exc, ToolstackError):
            err = {
                "type": type(exc).__name__,
                "code": int(exc.code),
                "message": exc.message,
                "reason": getattr(exc, "reason", None),
            }
        else:
            err = {
                "type": type(exc).__name__,
                "code": int(LibxlErrorCode.ERROR_FAIL),
                "message": str(exc),
                "reason": None,
            }
        return cls(rid, False, error=err)

    def unwrap(self) -> Any:
        """The result, or raise the reported error as :class:`RemoteError`."""
        if self.ok:
            return self.result
        e = self.error or {}
        raise RemoteError(
            str(e.get("type", "Error")),
            int(e.get("code", -3)),
            str(e.get("message", "unknown error")),
            e.get("reason"),
        )


class LineFramer:
    """Split a byte stream into lines; a line over ``MAX_LINE`` is a fatal protocol error."""

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        lines: list[bytes] = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                break
            lines.append(bytes(self._buf[:nl]))
            del self._buf[: nl + 1]
        if len(self._buf) > self.limit or any(len(ln) > self.limit for ln in lines):
            raise ControlProtocolError(f"line longer than {self.limit} bytes", fatal=True)
        return lines


def decode_request(line: bytes) -> Request:
    """Parse and validate one request line."""
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ControlProtocolError(f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ControlProtocolError("request must be a JSON object")
    rid, op, args = obj.get("id"), obj.get("op"), obj.get("args", {})
    if not isinstance(rid, int) or isinstance(rid, bool):
        raise ControlProtocolError("request id must be an integer")
    if not isinstance(op, str):
        raise ControlProtocolError("request op must be a string")
    if not isinstance(args, dict):
        raise ControlProtocolError("request args must be an object")
    return Request(rid, op, args)


def decode_response(line: bytes) -> Response:
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ControlProtocolError(f"daemon sent non-JSON: {e}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("ok"), bool):
        raise ControlProtocolError("daemon sent a malformed response")
    rid = obj.get("id")
    return Response(
        rid if isinstance(rid, int) else None, obj["ok"], obj.get("result"), obj.get("error")
    )


def request_id_of(line: bytes) -> int | None:
    """Best-effort id of a request that failed validation, so the error can name it."""
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    rid = obj.get("id") if isinstance(obj, dict) else None
    return rid if isinstance(rid, int) and not isinstance(rid, bool) else None


# ----------------------------------------------------------------------- dispatch


def _str(args: dict[str, Any], key: str) -> str:
    v = args.get(key)
    if not isinstance(v, str):
        raise ControlProtocolError(f"argument {key!r} must be a string")
    return v


def _bool(args: dict[str, Any], key: str) -> bool:
    v = args.get(key, False)
    if not isinstance(v, bool):
        raise ControlProtocolError(f"argument {key!r} must be true or false")
    return v


def _opt_str(args: dict[str, Any], key: str) -> str | None:
    v = args.get(key)
    if v is not None and not isinstance(v, str):
        raise ControlProtocolError(f"argument {key!r} must be a string")
    return v


def _domain(args: dict[str, Any]) -> int | str:
    v = args.get("domain")
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise ControlProtocolError("argument 'domain' must be a name or a domid")
    return int(v) if isinstance(v, str) and v.isdigit() else v


class ControlService:
    """Maps request ops onto a :class:`Libxl`; never raises, always answers."""

    def __init__(self, libxl: Libxl, status: Callable[[], dict[str, Any]]) -> None:
        self.libxl = libxl
        self._status = status
        self.shutdown_requested = False
        self._ops: dict[str, Callable[[dict[str, Any]], Any]] = {
            "status": lambda a: self._status(),
            "shutdown": self._shutdown,
            "create": self._create,
            "destroy": lambda a: self.libxl.domain_destroy(_domain(a)),
            "list": self._list,
            "pause": lambda a: self.libxl.domain_pause(_domain(a)),
            "unpause": lambda a: self.libxl.domain_unpause(_domain(a)),
            "pci-assignable-add": self._assignable_add,
            "pci-assignable-remove": lambda a: str(
                self.libxl.assignable_remove(_str(a, "target"), rebind=_bool(a, "rebind"))
            ),
            "pci-assignable-list": lambda a: [
                {"bdf": str(d.sbdf), "name": d.name} for d in self.libxl.assignable_list()
            ],
            "pci-attach": self._attach,
            "pci-detach": self._detach,
            "pci-list": self._pci_list,
        }

    def handle(self, req: Request) -> Response:
        fn = self._ops.get(req.op)
        if fn is None:
            return Response.failure(
                req.id, ControlProtocolError(f"unknown op {req.op!r} (known: {sorted(self._ops)})")
            )
        try:
            return Response(req.id, True, fn(req.args))
        except XenpciError as e:
            if isinstance(e, ToolstackError):
                return Response.failure(req.id, e)
            # a lower layer's error (hv, xenstore, xlcfg): keep its text, code FAIL/INVAL
            code = LibxlErrorCode.ERROR_INVAL if isinstance(e, ValueError) else None
            return Response.failure(req.id, ToolstackError(f"{type(e).__name__}: {e}", code))
        except ValueError as e:
            return Response.failure(req.id, ToolstackError(str(e), LibxlErrorCode.ERROR_INVAL))
        except Exception as e:
            # A bug below must cost this request, not the daemon: answer it and go on.
            return Response.failure(req.id, ToolstackError(f"internal error: {e!r}"))

    def handle_line(self, line: bytes) -> Response:
        try:
            req = decode_request(line)
        except ControlProtocolError as e:
            return Response.failure(request_id_of(line), e)
        return self.handle(req)

    # -- ops -------------------------------------------------------------------
    def _shutdown(self, args: dict[str, Any]) -> None:
        self.shutdown_requested = True

    def _create(self, args: dict[str, Any]) -> dict[str, Any]:
        cfg = load_domain_config(_str(args, "config"), _opt_str(args, "path") or "<xl.cfg>")
        domid = self.libxl.domain_create(cfg, allow_unsafe=_bool(args, "allow_unsafe"))
        return {"domid": domid, "name": cfg.name}

    def _list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {
                "name": d.name,
                "domid": d.domid,
                "memory": d.memory_mib,
                "vcpus": d.vcpus,
                "state": d.state,
            }
            for d in self.libxl.domain_list()
        ]

    def _assignable_add(self, args: dict[str, Any]) -> str:
        sbdf = SBDF.parse(_str(args, "bdf"))
        self.libxl.assignable_add(sbdf, _opt_str(args, "name"))
        return str(sbdf)

    def _attach(self, args: dict[str, Any]) -> None:
        spec = parse_pci_spec(_str(args, "spec"), PciDefaults(), path="<pci-attach>")
        self.libxl.pci_attach(_domain(args), spec, allow_unsafe=_bool(args, "allow_unsafe"))

    def _detach(self, args: dict[str, Any]) -> None:
        spec = parse_pci_spec(_str(args, "spec"), PciDefaults(), path="<pci-detach>")
        self.libxl.pci_detach(_domain(args), spec, force=_bool(args, "force"))

    def _pci_list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {"vdevfn": e.vdevfn, "bdf": str(e.sbdf), "name": e.name, "index": e.index}
            for e in self.libxl.pci_list(_domain(args))
        ]


__all__ = [
    "MAX_LINE",
    "ControlProtocolError",
    "ControlService",
    "LineFramer",
    "Refused",
    "RemoteError",
    "Request",
    "Response",
    "decode_request",
    "decode_response",
]
