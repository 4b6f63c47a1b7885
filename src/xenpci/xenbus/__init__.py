"""xenpci.xenbus: XenBus connection state machines (``drivers/xen/xenbus/``).

:mod:`xenpci.xenbus.state` is the sans-IO core (transition dict, the pciback
and pcifront reactions, Mermaid export); :mod:`xenpci.xenbus.watch` drives it
from a XenStore client; :mod:`xenpci.xenbus.client` holds the helpers every
split driver's probe and ring set-up use (``xenbus_client.c``,
``xenbus_probe.c``); :mod:`xenpci.xenbus.probe_backend` is the backend bus
(``xenbus_probe_backend.c``) that blkback and pciback subclass.
"""
