"""blkfront: the PV block frontend in a guest (Linux ``drivers/block/xen-blkfront.c``)."""
