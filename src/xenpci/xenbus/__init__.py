"""xenpci.xenbus: XenBus connection state machines (``drivers/xen/xenbus/``).

:mod:`xenpci.xenbus.state` is the sans-IO core (transition dict, the pciback
and pcifront reactions, Mermaid export); :mod:`xenpci.xenbus.watch` drives it
from a XenStore client.
"""
