"""xenpci.xenstore: a wire-compatible xenstored, its transports, and a client.

Public API (other layers use only these names):

* :class:`XenStore` -- the sans-IO store and request handler.
  ``XenStore(dom0_nodes=True, quotas=None, trace=None, domain_exists=None)``
  (with a ``xenpci.trace.Trace``, every request is recorded as
  ``xenstore_request`` with the caller's domid, op, first argument and
  result; ``domain_exists(domid)`` is what C asks the hypervisor for
  SET_PERMS, every domid exists without it);
  ``.connection(domid, readonly=False) -> Connection``;
  ``Connection.feed(data: bytes) -> list[bytes]`` (replies and watch events),
  ``Connection.take_output()``, ``Connection.notify`` (called when events
  are queued by other connections, after the request that queued them),
  ``Connection.close()``, ``.queued`` (frames not yet taken),
  ``.dropped_events`` (duplicates and over-quota events the store dropped),
  ``.can_read()`` (C's ``domain_can_read`` quota rules); a transport sets
  ``Connection.sink`` (non-blocking writer: bytes in, count taken out) and
  then output waits in the connection (``.out_bytes``, ``.outstanding``)
  until ``flush()`` or the end of a request hands it over;
  ``.introduce_domain(domid, gfn=0, evtchn=1)``, ``.release_domain(domid)``,
  ``.is_introduced(domid)``, ``.memory_used(domid)`` (C 4.17's count).
  Single-threaded, no lock: threads that share a store enter it through
  ``xenpci.xenstore.gate.gate_of(store)`` (``with gate: conn.feed(data)``).
* :class:`xenpci.xenstore.server.XenstoredServer` ``(store, socket_path,
  ro_socket_path=None, domain_sockets={domid: path})`` with ``start()``,
  ``stop()``, ``serve_forever()``; also a context manager.
* :class:`xenpci.xenstore.client.XsClient`: ``XsClient.unix(path)``,
  ``XsClient.in_process(store, domid)``, ``XsClient.ring(transport)``;
  ``read(path) -> bytes``, ``write(path, value)``, ``ls(path) -> list[str]``,
  ``rm``, ``mkdir``, ``exists``, ``get_perms -> Perms``, ``set_perms(path,
  Perms)``, ``watch(path, token, callback=None)``, ``unwatch(path, token)``,
  ``events(timeout) -> Iterator[WatchEvent]``, ``next_event(timeout)``,
  ``transaction()`` (context manager: commit on exit, XsError("EAGAIN") on
  conflict), ``retry_transaction(fn)``.
* Ring transport (:mod:`xenpci.xenstore.ring`): ``XenstoredRings(store,
  hv.dom0)`` serves every introduced domain on dom0's vCPU; the guest side is
  ``ring = GuestRing(guest_domain)`` (allocates, grants and binds its page),
  then dom0 calls ``introduce_domain(domid, ring.gref, ring.port)`` (or sends
  INTRODUCE) and the guest uses ``XsClient.ring(ring)``. INTRODUCE's gfn field
  carries the grant reference (see the module docstring for why).
* :class:`Perms` / :class:`Perm` / :class:`Access`: ACL values, wire form
  ``Perms.of("b0", "r5")``, ``Perms.from_wire``, ``.to_wire()``, ``str()``.
* :class:`XsError` (``.code`` is the xs_wire.h name), :class:`ProtocolError`,
  :class:`ConnectionClosed`, all under :class:`XenstoreError`.

Modules mirror C xenstored: ``core`` (xenstored_core.c), ``transaction``,
``domain`` (domains and quotas), ``control``, ``tree`` (nodes and paths),
``wire`` (the codec both sides share), ``server`` (Unix sockets), ``ring``
(the xenstore_domain_interface page), ``client`` (libxenstore's role).
"""

from xenpci.xenstore.core import Connection, XenStore
from xenpci.xenstore.errors import ConnectionClosed, ProtocolError, XenstoreError, XsError
from xenpci.xenstore.perms import Access, Perm, Perms

__all__ = [
    "Access",
    "Connection",
    "ConnectionClosed",
    "Perm",
    "Perms",
    "ProtocolError",
    "XenStore",
    "XenstoreError",
    "XsError",
]
