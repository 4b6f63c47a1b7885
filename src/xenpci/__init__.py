"""xenpci: Xen PCI passthrough for paravirtualized guests, modelled end to end.

Layers (lower never imports higher), as in ARCHITECTURE.md: ``abi`` (byte-exact
public layouts), ``hv`` (the hypervisor), ``xenstore``, ``xenbus``, ``pci``,
``devices``, ``pciback``/``pcifront``, ``guest``, ``toolstack``, ``cli``.
"""

__version__ = "0.1.0"
