"""Version-1 grant entries of ``xen/include/public/grant_table.h``.

A domain shares a frame by filling a ``grant_entry_v1`` in its grant table:
``GTF_permit_access`` (plus ``GTF_readonly``) for ``domid``; the hypervisor
sets ``GTF_reading``/``GTF_writing`` while the grantee has it mapped, which is
why ending access fails while mapped. Also the ``GNTMAP_*`` map flags and the
``GNTST_*`` status codes the grant hypercalls return. Only v1 is modelled.
"""

from __future__ import annotations

import ctypes
from typing import Final

grant_ref_t = ctypes.c_uint32
domid_t = ctypes.c_uint16


class grant_entry_v1(ctypes.LittleEndianStructure):
    """``struct grant_entry_v1``: flags, the grantee domain and the granted frame."""

    _fields_ = (
        ("flags", ctypes.c_uint16),
        ("domid", domid_t),
        ("frame", ctypes.c_uint32),
    )


GTF_invalid: Final = 0 << 0
GTF_permit_access: Final = 1 << 0
GTF_accept_transfer: Final = 2 << 0
GTF_transitive: Final = 3 << 0
GTF_type_mask: Final = 3 << 0
_GTF_readonly: Final = 2
GTF_readonly: Final = 1 << _GTF_readonly
_GTF_reading: Final = 3
GTF_reading: Final = 1 << _GTF_reading
_GTF_writing: Final = 4
GTF_writing: Final = 1 << _GTF_writing
_GTF_PWT: Final = 5
GTF_PWT: Final = 1 << _GTF_PWT
_GTF_PCD: Final = 6
GTF_PCD: Final = 1 << _GTF_PCD
_GTF_PAT: Final = 7
GTF_PAT: Final = 1 << _GTF_PAT
_GTF_sub_page: Final = 8
GTF_sub_page: Final = 1 << _GTF_sub_page
_GTF_transfer_committed: Final = 2
GTF_transfer_committed: Final = 1 << _GTF_transfer_committed
_GTF_transfer_completed: Final = 3
GTF_transfer_completed: Final = 1 << _GTF_transfer_completed

_GNTMAP_device_map: Final = 0
GNTMAP_device_map: Final = 1 << _GNTMAP_device_map
_GNTMAP_host_map: Final = 1
GNTMAP_host_map: Final = 1 << _GNTMAP_host_map
_GNTMAP_readonly: Final = 2
GNTMAP_readonly: Final = 1 << _GNTMAP_readonly
_GNTMAP_application_map: Final = 3
GNTMAP_application_map: Final = 1 << _GNTMAP_application_map
_GNTMAP_contains_pte: Final = 4
GNTMAP_contains_pte: Final = 1 << _GNTMAP_contains_pte
_GNTMAP_guest_avail0: Final = 16
GNTMAP_guest_avail_mask: Final = (0xFFFFFFFF << _GNTMAP_guest_avail0) & 0xFFFFFFFF

GNTST_okay: Final = 0
GNTST_general_error: Final = -1
GNTST_bad_domain: Final = -2
GNTST_bad_gntref: Final = -3
GNTST_bad_handle: Final = -4
GNTST_bad_virt_addr: Final = -5
GNTST_bad_dev_addr: Final = -6
GNTST_no_device_space: Final = -7
GNTST_permission_denied: Final = -8
GNTST_bad_page: Final = -9
GNTST_bad_copy_arg: Final = -10
GNTST_address_too_big: Final = -11
GNTST_eagain: Final = -12
GNTST_no_space: Final = -13

#: Entries of one 4 KiB grant-table frame.
GRANT_ENTRIES_PER_FRAME_V1: Final = 4096 // ctypes.sizeof(grant_entry_v1)
