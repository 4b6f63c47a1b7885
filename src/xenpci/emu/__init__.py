"""emu: the HVM device model in dom0 (QEMU's role) beside pciback.

:mod:`xenpci.hv.ioreq` is Xen's side (trap, forward, wait); here are the
device model's pieces: :mod:`.mapcache` (guest RAM through foreign
mappings), :mod:`.nvme` (the emulated controller: the project's NVMe model
with its media on dom0's disk), :mod:`.device_model` (the ioreq loop and
dispatch), and :mod:`.hvm_guest` (the HVM guest kernel's view: config space
through 0xCF8/0xCFC, MSI-X as injected events).
"""
