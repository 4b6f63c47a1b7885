"""blkback: the PV block backend in dom0 (Linux ``drivers/block/xen-blkback/``).

:mod:`.dom0_block` binds dom0's own NVMe driver to the physical disk (dom0's
block layer); :mod:`.ring` is the backend half of ``io/ring.h``;
:mod:`.blkback` serves ``blkif`` requests; :mod:`.xenbus` is the XenBus
backend driver for ``backend/vbd/<domid>/<devid>``.
"""
