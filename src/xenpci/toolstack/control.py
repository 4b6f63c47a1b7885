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
"message": "...", "exit_code": 1}}``; ``code`` is libxl's error code, ``exit_code``
the status xl exits with (2 or 6 for what the parser rejects, else 1).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xenpci.errors import XenpciError
from xenpci.toolstack.errors import LibxlErrorCode, Refused, ToolstackError, XlError
from xenpci.toolstack.libxl import Libxl
from xenpci.toolstack.xlcfg import (
    PciDefaults,
    XlCfgError,
    load_domain_config,
    parse_bdf,
    parse_pci_spec,
)

MAX_LINE = 1 << 20  # an xl.cfg file fits many times over; a hostile client cannot grow us
#: Ops that take libxl's context lock or a domain's lock and may wait holding it.
#: On the machine's one executor thread two of them cannot block each other as two
#: threads would (the locks are re-entrant, and a nested op would walk through), so
#: the daemon runs these one at a time on the toolstack's lane; the others (list,
#: pause, unpause, status...) run on their connection's own lane and so also while
#: one of these waits, as a second xl process would.
SERIAL_OPS = frozenset(
    {
        "create",
        "destroy",
        "pci-attach",
        "pci-detach",
        "pci-assignable-add",
        "pci-assignable-remove",
        "pci-assignable-list",
    }
)


class ControlProtocolError(ToolstackError):
    """A malformed frame or request; the connection answers it and stays usable unless fatal."""

    def __init__(self, message: str, *, fatal: bool = False) -> None:
        self.fatal = fatal
        super().__init__(message, LibxlErrorCode.ERROR_INVAL)


class RemoteError(ToolstackError):
    """An error the daemon reported: its type name, libxl code and refusal reason, if any."""

    def __init__(
        self,
        type_name: str,
        code: int,
        message: str,
        reason: str | None,
        exit_code: int = 1,
        *,
        xl: bool = False,
    ) -> None:
        self.type_name = type_name
        self.reason = reason
        #: xl's own message (print as is) rather than a libxl error
        self.xl = xl
        try:
            lcode = LibxlErrorCode(code)
        except ValueError:
            lcode = LibxlErrorCode.ERROR_FAIL
        # an exit status is a byte; anything else a daemon sends is plain failure
        super().__init__(message, lcode, exit_code=exit_code if 0 < exit_code < 256 else 1)


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
        exit_code = getattr(exc, "exit_code", 1)
        err = {
            "type": type(exc).__name__,
            "code": int(exc.code)
            if isinstance(exc, ToolstackError)
            else int(LibxlErrorCode.ERROR_FAIL),
            "message": exc.message if isinstance(exc, ToolstackError) else str(exc),
            "reason": getattr(exc, "reason", None),
            "exit_code": exit_code if isinstance(exit_code, int) else 1,
            # xl's own message (printed as is), not a libxl log line
            "xl": isinstance(exc, XlError),
        }
        return cls(rid, False, error=err)

    def unwrap(self) -> Any:
        """The result, or raise the reported error as :class:`RemoteError`."""
        if self.ok:
            return self.result
        e = self.error or {}
        code, exit_code, reason = e.get("code", -3), e.get("exit_code", 1), e.get("reason")
        raise RemoteError(
            str(e.get("type", "Error")),
            code if isinstance(code, int) else -3,
            str(e.get("message", "unknown error")),
            reason if isinstance(reason, str) else None,
            exit_code if isinstance(exit_code, int) else 1,
            xl=e.get("xl") is True,
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


def _opt_domain(args: dict[str, Any]) -> int | str | None:
    return None if args.get("domain") is None else _domain(args)


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
            "list-long": lambda a: self.libxl.domain_config(_opt_domain(a)),
            "info": lambda a: [list(kv) for kv in self.libxl.host_info()],
            "dmesg": lambda a: self.libxl.dmesg(clear=_bool(a, "clear")),
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
            # A lower layer's error (hv, xenstore, xlcfg): its own text (no class
            # name: users read it), code FAIL/INVAL, and the exit status it asks for.
            code = LibxlErrorCode.ERROR_INVAL if isinstance(e, ValueError) else None
            exit_code = getattr(e, "exit_code", 1)
            # a parse error is xl's own message (xl parses before calling libxl)
            kind = XlError if isinstance(e, XlCfgError) else ToolstackError
            return Response.failure(
                req.id,
                kind(str(e), code, exit_code=exit_code if isinstance(exit_code, int) else 1),
            )
        except ValueError as e:
            return Response.failure(req.id, ToolstackError(str(e), LibxlErrorCode.ERROR_INVAL))
        except Exception as e:
            # A bug below must cost this request, not the daemon: answer it and go on.
            return Response.failure(req.id, ToolstackError(f"internal error: {e}"))

    def cancel_waits(self, req: Request) -> None:
        """Before a queued ``destroy``: cancel what the domain's running op waits on.

        ``Libxl.domain_destroy`` does this first itself; the daemon calls this
        ahead of queueing a destroy behind that very op (:data:`SERIAL_OPS`), so
        the op ends (:class:`DomainGone`) and the destroy can run. Anything else
        (a malformed request, an unknown domain) is left to ``handle`` to answer.
        """
        if req.op != "destroy":
            return
        try:
            dom = _domain(req.args)
        except ControlProtocolError:
            return
        for rec in list(self.libxl.domains.values()):
            if dom in (rec.domid, rec.name):
                rec.cancel.cancel()

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
                "time": d.cpu_time,
            }
            for d in self.libxl.domain_list(_opt_domain(args))
        ]

    def _assignable_add(self, args: dict[str, Any]) -> str:
        sbdf, _all = parse_bdf(_str(args, "bdf"))  # xl's own parser (xlu_pci_parse_bdf)
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
    "SERIAL_OPS",
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
