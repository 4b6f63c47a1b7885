"""PCI configuration space register offsets and bits.

Mirrors the names of Linux ``include/uapi/linux/pci_regs.h`` (which follows the
PCI Local Bus 3.0 and PCIe Base specifications), so code using them reads like
the kernel. Only the subset the project needs is defined; values are facts
from the specs, not copied text. Deliberate difference: plain ``int`` constants
in one flat module (no macros taking arguments except the few helper
functions at the end).
"""

from __future__ import annotations

from typing import Final

# --- Sizes -------------------------------------------------------------------
PCI_CFG_SPACE_SIZE: Final = 256
PCI_CFG_SPACE_EXP_SIZE: Final = 4096
PCI_STD_HEADER_SIZEOF: Final = 64
PCI_STD_NUM_BARS: Final = 6

# --- Type-0/1 common header ----------------------------------------------------
PCI_VENDOR_ID: Final = 0x00
PCI_DEVICE_ID: Final = 0x02
PCI_COMMAND: Final = 0x04
PCI_COMMAND_IO: Final = 0x1
PCI_COMMAND_MEMORY: Final = 0x2
PCI_COMMAND_MASTER: Final = 0x4
PCI_COMMAND_SPECIAL: Final = 0x8
PCI_COMMAND_INVALIDATE: Final = 0x10
PCI_COMMAND_VGA_PALETTE: Final = 0x20
PCI_COMMAND_PARITY: Final = 0x40
PCI_COMMAND_WAIT: Final = 0x80
PCI_COMMAND_SERR: Final = 0x100
PCI_COMMAND_FAST_BACK: Final = 0x200
PCI_COMMAND_INTX_DISABLE: Final = 0x400

PCI_STATUS: Final = 0x06
PCI_STATUS_IMM_READY: Final = 0x01
PCI_STATUS_INTERRUPT: Final = 0x08
PCI_STATUS_CAP_LIST: Final = 0x10
PCI_STATUS_66MHZ: Final = 0x20
PCI_STATUS_UDF: Final = 0x40
PCI_STATUS_FAST_BACK: Final = 0x80
PCI_STATUS_PARITY: Final = 0x100
PCI_STATUS_DEVSEL_MASK: Final = 0x600
PCI_STATUS_DEVSEL_FAST: Final = 0x000
PCI_STATUS_DEVSEL_MEDIUM: Final = 0x200
PCI_STATUS_DEVSEL_SLOW: Final = 0x400
PCI_STATUS_SIG_TARGET_ABORT: Final = 0x800
PCI_STATUS_REC_TARGET_ABORT: Final = 0x1000
PCI_STATUS_REC_MASTER_ABORT: Final = 0x2000
PCI_STATUS_SIG_SYSTEM_ERROR: Final = 0x4000
PCI_STATUS_DETECTED_PARITY: Final = 0x8000
#: The write-1-to-clear error bits of STATUS (PCI 3.0 §6.2.3).
PCI_STATUS_ERROR_BITS: Final = (
    PCI_STATUS_DETECTED_PARITY
    | PCI_STATUS_SIG_SYSTEM_ERROR
    | PCI_STATUS_REC_MASTER_ABORT
    | PCI_STATUS_REC_TARGET_ABORT
    | PCI_STATUS_SIG_TARGET_ABORT
    | PCI_STATUS_PARITY
)

PCI_CLASS_REVISION: Final = 0x08
PCI_REVISION_ID: Final = 0x08
PCI_CLASS_PROG: Final = 0x09
PCI_CLASS_DEVICE: Final = 0x0A
PCI_CACHE_LINE_SIZE: Final = 0x0C
PCI_LATENCY_TIMER: Final = 0x0D
PCI_HEADER_TYPE: Final = 0x0E
PCI_HEADER_TYPE_MASK: Final = 0x7F
PCI_HEADER_TYPE_NORMAL: Final = 0
PCI_HEADER_TYPE_BRIDGE: Final = 1
PCI_HEADER_TYPE_CARDBUS: Final = 2
PCI_HEADER_TYPE_MFD: Final = 0x80
PCI_BIST: Final = 0x0F
PCI_BIST_CODE_MASK: Final = 0x0F
PCI_BIST_START: Final = 0x40
PCI_BIST_CAPABLE: Final = 0x80

PCI_BASE_ADDRESS_0: Final = 0x10
PCI_BASE_ADDRESS_1: Final = 0x14
PCI_BASE_ADDRESS_2: Final = 0x18
PCI_BASE_ADDRESS_3: Final = 0x1C
PCI_BASE_ADDRESS_4: Final = 0x20
PCI_BASE_ADDRESS_5: Final = 0x24
PCI_BASE_ADDRESS_SPACE: Final = 0x01
PCI_BASE_ADDRESS_SPACE_IO: Final = 0x01
PCI_BASE_ADDRESS_SPACE_MEMORY: Final = 0x00
PCI_BASE_ADDRESS_MEM_TYPE_MASK: Final = 0x06
PCI_BASE_ADDRESS_MEM_TYPE_32: Final = 0x00
PCI_BASE_ADDRESS_MEM_TYPE_1M: Final = 0x02
PCI_BASE_ADDRESS_MEM_TYPE_64: Final = 0x04
PCI_BASE_ADDRESS_MEM_PREFETCH: Final = 0x08
PCI_BASE_ADDRESS_MEM_MASK: Final = 0xFFFFFFF0
PCI_BASE_ADDRESS_IO_MASK: Final = 0xFFFFFFFC

# --- Type 0 only -----------------------------------------------------------------
PCI_CARDBUS_CIS: Final = 0x28
PCI_SUBSYSTEM_VENDOR_ID: Final = 0x2C
PCI_SUBSYSTEM_ID: Final = 0x2E
PCI_ROM_ADDRESS: Final = 0x30
PCI_ROM_ADDRESS_ENABLE: Final = 0x01
PCI_ROM_ADDRESS_MASK: Final = 0xFFFFF800
PCI_CAPABILITY_LIST: Final = 0x34
PCI_INTERRUPT_LINE: Final = 0x3C
PCI_INTERRUPT_PIN: Final = 0x3D
PCI_MIN_GNT: Final = 0x3E
PCI_MAX_LAT: Final = 0x3F

# --- Type 1 (PCI-to-PCI bridge) header ---------------------------------------------
PCI_PRIMARY_BUS: Final = 0x18
PCI_SECONDARY_BUS: Final = 0x19
PCI_SUBORDINATE_BUS: Final = 0x1A
PCI_SEC_LATENCY_TIMER: Final = 0x1B
PCI_IO_BASE: Final = 0x1C
PCI_IO_LIMIT: Final = 0x1D
PCI_IO_RANGE_TYPE_MASK: Final = 0x0F
PCI_IO_RANGE_TYPE_16: Final = 0x00
PCI_IO_RANGE_TYPE_32: Final = 0x01
PCI_SEC_STATUS: Final = 0x1E
PCI_MEMORY_BASE: Final = 0x20
PCI_MEMORY_LIMIT: Final = 0x22
PCI_PREF_MEMORY_BASE: Final = 0x24
PCI_PREF_MEMORY_LIMIT: Final = 0x26
PCI_PREF_RANGE_TYPE_MASK: Final = 0x0F
PCI_PREF_RANGE_TYPE_32: Final = 0x00
PCI_PREF_RANGE_TYPE_64: Final = 0x01
PCI_PREF_BASE_UPPER32: Final = 0x28
PCI_PREF_LIMIT_UPPER32: Final = 0x2C
PCI_IO_BASE_UPPER16: Final = 0x30
PCI_IO_LIMIT_UPPER16: Final = 0x32
PCI_ROM_ADDRESS1: Final = 0x38
PCI_BRIDGE_CONTROL: Final = 0x3E
PCI_BRIDGE_CTL_PARITY: Final = 0x01
PCI_BRIDGE_CTL_SERR: Final = 0x02
PCI_BRIDGE_CTL_ISA: Final = 0x04
PCI_BRIDGE_CTL_VGA: Final = 0x08
PCI_BRIDGE_CTL_MASTER_ABORT: Final = 0x20
PCI_BRIDGE_CTL_BUS_RESET: Final = 0x40
PCI_BRIDGE_CTL_FAST_BACK: Final = 0x80

# --- Type 2 (CardBus) header: only what the dump reader needs ---------------------
PCI_CB_CAPABILITY_LIST: Final = 0x14
PCI_CB_HEADER_SIZEOF: Final = 128

# --- Standard capability IDs (PCI Code and ID Assignment spec §2) -------------------
PCI_CAP_LIST_ID: Final = 0
PCI_CAP_LIST_NEXT: Final = 1
PCI_CAP_FLAGS: Final = 2
PCI_CAP_SIZEOF: Final = 4
PCI_CAP_ID_PM: Final = 0x01
PCI_CAP_ID_AGP: Final = 0x02
PCI_CAP_ID_VPD: Final = 0x03
PCI_CAP_ID_SLOTID: Final = 0x04
PCI_CAP_ID_MSI: Final = 0x05
PCI_CAP_ID_CHSWP: Final = 0x06
PCI_CAP_ID_PCIX: Final = 0x07
PCI_CAP_ID_HT: Final = 0x08
PCI_CAP_ID_VNDR: Final = 0x09
PCI_CAP_ID_DBG: Final = 0x0A
PCI_CAP_ID_CCRC: Final = 0x0B
PCI_CAP_ID_SHPC: Final = 0x0C
PCI_CAP_ID_SSVID: Final = 0x0D
PCI_CAP_ID_AGP3: Final = 0x0E
PCI_CAP_ID_SECDEV: Final = 0x0F
PCI_CAP_ID_EXP: Final = 0x10
PCI_CAP_ID_MSIX: Final = 0x11
PCI_CAP_ID_SATA: Final = 0x12
PCI_CAP_ID_AF: Final = 0x13
PCI_CAP_ID_EA: Final = 0x14
PCI_CAP_ID_FPB: Final = 0x15
PCI_CAP_ID_MAX: Final = PCI_CAP_ID_FPB

# --- Extended capability IDs (PCIe Base §7.6 onwards) ----------------------------------
PCI_EXT_CAP_ID_ERR: Final = 0x01
PCI_EXT_CAP_ID_VC: Final = 0x02
PCI_EXT_CAP_ID_DSN: Final = 0x03
PCI_EXT_CAP_ID_PWR: Final = 0x04
PCI_EXT_CAP_ID_RCLD: Final = 0x05
PCI_EXT_CAP_ID_RCILC: Final = 0x06
PCI_EXT_CAP_ID_RCEC: Final = 0x07
PCI_EXT_CAP_ID_MFVC: Final = 0x08
PCI_EXT_CAP_ID_VC9: Final = 0x09
PCI_EXT_CAP_ID_RCRB: Final = 0x0A
PCI_EXT_CAP_ID_VNDR: Final = 0x0B
PCI_EXT_CAP_ID_CAC: Final = 0x0C
PCI_EXT_CAP_ID_ACS: Final = 0x0D
PCI_EXT_CAP_ID_ARI: Final = 0x0E
PCI_EXT_CAP_ID_ATS: Final = 0x0F
PCI_EXT_CAP_ID_SRIOV: Final = 0x10
PCI_EXT_CAP_ID_MRIOV: Final = 0x11
PCI_EXT_CAP_ID_MCAST: Final = 0x12
PCI_EXT_CAP_ID_PRI: Final = 0x13
PCI_EXT_CAP_ID_AMD_XXX: Final = 0x14
PCI_EXT_CAP_ID_REBAR: Final = 0x15
PCI_EXT_CAP_ID_DPA: Final = 0x16
PCI_EXT_CAP_ID_TPH: Final = 0x17
PCI_EXT_CAP_ID_LTR: Final = 0x18
PCI_EXT_CAP_ID_SECPCI: Final = 0x19
PCI_EXT_CAP_ID_PMUX: Final = 0x1A
PCI_EXT_CAP_ID_PASID: Final = 0x1B
PCI_EXT_CAP_ID_LNR: Final = 0x1C
PCI_EXT_CAP_ID_DPC: Final = 0x1D
PCI_EXT_CAP_ID_L1SS: Final = 0x1E
PCI_EXT_CAP_ID_PTM: Final = 0x1F
PCI_EXT_CAP_ID_MPHY: Final = 0x20
PCI_EXT_CAP_ID_FRS: Final = 0x21
PCI_EXT_CAP_ID_RTR: Final = 0x22
PCI_EXT_CAP_ID_DVSEC: Final = 0x23
PCI_EXT_CAP_ID_VF_REBAR: Final = 0x24
PCI_EXT_CAP_ID_DLF: Final = 0x25
PCI_EXT_CAP_ID_PL_16GT: Final = 0x26
PCI_EXT_CAP_ID_LMR: Final = 0x27
PCI_EXT_CAP_ID_HIER_ID: Final = 0x28
PCI_EXT_CAP_ID_NPEM: Final = 0x29
PCI_EXT_CAP_ID_PL_32GT: Final = 0x2A
PCI_EXT_CAP_ID_ALT_PROTO: Final = 0x2B
PCI_EXT_CAP_ID_SFI: Final = 0x2C
PCI_EXT_CAP_ID_SHDW_FUNC: Final = 0x2D
PCI_EXT_CAP_ID_DOE: Final = 0x2E
PCI_EXT_CAP_ID_DEV3: Final = 0x2F
PCI_EXT_CAP_ID_IDE: Final = 0x30
PCI_EXT_CAP_ID_PL_64GT: Final = 0x31
# PCIe 6.0 Flit Logging; pciutils decodes it, Linux has no name for it yet.
PCI_EXT_CAP_ID_FLIT_LOG: Final = 0x32
PCI_EXT_CAP_ID_MAX: Final = PCI_EXT_CAP_ID_PL_64GT
PCI_EXT_CAP_DSN_SIZEOF: Final = 12

# --- Power management (PCI PM 1.2) -------------------------------------------------
PCI_PM_PMC: Final = 2
PCI_PM_CAP_VER_MASK: Final = 0x0007
PCI_PM_CAP_PME_CLOCK: Final = 0x0008
PCI_PM_CAP_DSI: Final = 0x0020
PCI_PM_CAP_D1: Final = 0x0200
PCI_PM_CAP_D2: Final = 0x0400
PCI_PM_CAP_PME_MASK: Final = 0xF800
PCI_PM_CAP_PME_D0: Final = 0x0800
PCI_PM_CAP_PME_D3HOT: Final = 0x4000
PCI_PM_CAP_PME_D3COLD: Final = 0x8000
PCI_PM_CTRL: Final = 4
PCI_PM_CTRL_STATE_MASK: Final = 0x0003
PCI_PM_CTRL_NO_SOFT_RESET: Final = 0x0008
PCI_PM_CTRL_PME_ENABLE: Final = 0x0100
PCI_PM_CTRL_DATA_SEL_MASK: Final = 0x1E00
PCI_PM_CTRL_DATA_SCALE_MASK: Final = 0x6000
PCI_PM_CTRL_PME_STATUS: Final = 0x8000
PCI_PM_PPB_EXTENSIONS: Final = 6
PCI_PM_DATA_REGISTER: Final = 7
PCI_PM_SIZEOF: Final = 8

# --- MSI (PCI 3.0 §6.8.1) --------------------------------------------------------------
PCI_MSI_FLAGS: Final = 0x02
PCI_MSI_FLAGS_ENABLE: Final = 0x0001
PCI_MSI_FLAGS_QMASK: Final = 0x000E
PCI_MSI_FLAGS_QSIZE: Final = 0x0070
PCI_MSI_FLAGS_64BIT: Final = 0x0080
PCI_MSI_FLAGS_MASKBIT: Final = 0x0100
PCI_MSI_RFU: Final = 3
PCI_MSI_ADDRESS_LO: Final = 0x04
PCI_MSI_ADDRESS_HI: Final = 0x08
PCI_MSI_DATA_32: Final = 0x08
PCI_MSI_MASK_32: Final = 0x0C
PCI_MSI_PENDING_32: Final = 0x10
PCI_MSI_DATA_64: Final = 0x0C
PCI_MSI_MASK_64: Final = 0x10
PCI_MSI_PENDING_64: Final = 0x14

# --- MSI-X (PCI 3.0 §6.8.2) ------------------------------------------------------------
PCI_MSIX_FLAGS: Final = 2
PCI_MSIX_FLAGS_QSIZE: Final = 0x07FF
PCI_MSIX_FLAGS_MASKALL: Final = 0x4000
PCI_MSIX_FLAGS_ENABLE: Final = 0x8000
PCI_MSIX_TABLE: Final = 4
PCI_MSIX_TABLE_BIR: Final = 0x00000007
PCI_MSIX_TABLE_OFFSET: Final = 0xFFFFFFF8
PCI_MSIX_PBA: Final = 8
PCI_MSIX_PBA_BIR: Final = 0x00000007
PCI_MSIX_PBA_OFFSET: Final = 0xFFFFFFF8
PCI_MSIX_FLAGS_BIRMASK: Final = PCI_MSIX_PBA_BIR
PCI_CAP_MSIX_SIZEOF: Final = 12
# One MSI-X table entry (in BAR memory, not config space).
PCI_MSIX_ENTRY_SIZE: Final = 16
PCI_MSIX_ENTRY_LOWER_ADDR: Final = 0x0
PCI_MSIX_ENTRY_UPPER_ADDR: Final = 0x4
PCI_MSIX_ENTRY_DATA: Final = 0x8
PCI_MSIX_ENTRY_VECTOR_CTRL: Final = 0xC
PCI_MSIX_ENTRY_CTRL_MASKBIT: Final = 0x00000001

# --- PCI Express capability (PCIe Base §7.5.3) ---------------------------------------
PCI_EXP_FLAGS: Final = 0x02
PCI_EXP_FLAGS_VERS: Final = 0x000F
PCI_EXP_FLAGS_TYPE: Final = 0x00F0
PCI_EXP_TYPE_ENDPOINT: Final = 0x0
PCI_EXP_TYPE_LEG_END: Final = 0x1
PCI_EXP_TYPE_ROOT_PORT: Final = 0x4
PCI_EXP_TYPE_UPSTREAM: Final = 0x5
PCI_EXP_TYPE_DOWNSTREAM: Final = 0x6
PCI_EXP_TYPE_PCI_BRIDGE: Final = 0x7
PCI_EXP_TYPE_PCIE_BRIDGE: Final = 0x8
PCI_EXP_TYPE_RC_END: Final = 0x9
PCI_EXP_TYPE_RC_EC: Final = 0xA
PCI_EXP_FLAGS_SLOT: Final = 0x0100
PCI_EXP_FLAGS_IRQ: Final = 0x3E00
PCI_EXP_DEVCAP: Final = 0x04
PCI_EXP_DEVCAP_PAYLOAD: Final = 0x00000007
PCI_EXP_DEVCAP_PHANTOM: Final = 0x00000018
PCI_EXP_DEVCAP_EXT_TAG: Final = 0x00000020
PCI_EXP_DEVCAP_RBER: Final = 0x00008000
PCI_EXP_DEVCAP_FLR: Final = 0x10000000
PCI_EXP_DEVCTL: Final = 0x08
PCI_EXP_DEVCTL_CERE: Final = 0x0001
PCI_EXP_DEVCTL_NFERE: Final = 0x0002
PCI_EXP_DEVCTL_FERE: Final = 0x0004
PCI_EXP_DEVCTL_URRE: Final = 0x0008
PCI_EXP_DEVCTL_RELAX_EN: Final = 0x0010
PCI_EXP_DEVCTL_PAYLOAD: Final = 0x00E0
PCI_EXP_DEVCTL_EXT_TAG: Final = 0x0100
PCI_EXP_DEVCTL_PHANTOM: Final = 0x0200
PCI_EXP_DEVCTL_AUX_PME: Final = 0x0400
PCI_EXP_DEVCTL_NOSNOOP_EN: Final = 0x0800
PCI_EXP_DEVCTL_READRQ: Final = 0x7000
PCI_EXP_DEVCTL_BCR_FLR: Final = 0x8000
PCI_EXP_DEVSTA: Final = 0x0A
PCI_EXP_DEVSTA_CED: Final = 0x0001
PCI_EXP_DEVSTA_NFED: Final = 0x0002
PCI_EXP_DEVSTA_FED: Final = 0x0004
PCI_EXP_DEVSTA_URD: Final = 0x0008
PCI_EXP_DEVSTA_AUXPD: Final = 0x0010
PCI_EXP_DEVSTA_TRPND: Final = 0x0020
PCI_EXP_LNKCAP: Final = 0x0C
PCI_EXP_LNKCAP_SLS: Final = 0x0000000F
PCI_EXP_LNKCAP_MLW: Final = 0x000003F0
PCI_EXP_LNKCTL: Final = 0x10
PCI_EXP_LNKSTA: Final = 0x12
PCI_EXP_LNKSTA_CLS: Final = 0x000F
PCI_EXP_LNKSTA_NLW: Final = 0x03F0
PCI_EXP_SLTCAP: Final = 0x14
PCI_EXP_SLTCTL: Final = 0x18
PCI_EXP_SLTSTA: Final = 0x1A
PCI_EXP_RTCTL: Final = 0x1C
PCI_EXP_RTCAP: Final = 0x1E
PCI_EXP_RTSTA: Final = 0x20
PCI_EXP_DEVCAP2: Final = 0x24
PCI_EXP_DEVCTL2: Final = 0x28
PCI_EXP_LNKCAP2: Final = 0x2C
PCI_EXP_LNKCTL2: Final = 0x30
PCI_EXP_LNKSTA2: Final = 0x32
PCI_CAP_EXP_ENDPOINT_SIZEOF_V1: Final = 20
PCI_CAP_EXP_ENDPOINT_SIZEOF_V2: Final = 44
PCI_CAP_EXP_SIZEOF: Final = 60

# --- PCI-X capability: only the bits that decide whether extended space exists ----------
PCI_X_STATUS: Final = 4
PCI_X_STATUS_266MHZ: Final = 0x00400000
PCI_X_STATUS_533MHZ: Final = 0x00800000

# --- Advanced Features capability (conventional PCI FLR) -----------------------------
PCI_AF_LENGTH: Final = 2
PCI_AF_CAP: Final = 3
PCI_AF_CAP_TP: Final = 0x01
PCI_AF_CAP_FLR: Final = 0x02
PCI_AF_CTRL: Final = 4
PCI_AF_CTRL_FLR: Final = 0x01
PCI_AF_STATUS: Final = 5
PCI_AF_STATUS_TP: Final = 0x01

# --- Extended capability header (PCIe Base §7.6.3) -----------------------------------
PCI_EXT_CAP_HEADER_SIZEOF: Final = 4


def PCI_EXT_CAP_ID(header: int) -> int:
    """Capability ID of an extended capability header dword (bits 15:0)."""
    return header & 0xFFFF


def PCI_EXT_CAP_VER(header: int) -> int:
    """Capability version of an extended capability header dword (bits 19:16)."""
    return (header >> 16) & 0xF


def PCI_EXT_CAP_NEXT(header: int) -> int:
    """Next-capability offset of an extended header (bits 31:20, low 2 bits reserved)."""
    return (header >> 20) & 0xFFC
