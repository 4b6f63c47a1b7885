"""Layer 2: the hypervisor (domains, memory, grants, event channels, permissions, IOMMU).

Public names for the layers above; each lives in a module named after the Xen
component it models.
"""

from xenpci.hv.domain import (
    DOMID_FIRST_RESERVED,
    DOMID_SELF,
    MAX_CONTROLLER_PAUSES,
    Domain,
    Vcpu,
)
from xenpci.hv.errors import (
    Deadlock,
    DeviceError,
    DmaFault,
    DomainDead,
    DomainExists,
    EvtchnError,
    GrantError,
    HvError,
    InvalidArgument,
    MmioDenied,
    NoSuchDomain,
    OutOfMemory,
    PermissionDenied,
)
from xenpci.hv.event_channel import NR_EVTCHN_PORTS, PortInfo, PortState
from xenpci.hv.grant_table import GrantMapping
from xenpci.hv.hypercalls import Hypercalls, MmioMapping
from xenpci.hv.hypervisor import Hypervisor
from xenpci.hv.iobus import IoBus, MmioHandler
from xenpci.hv.iommu import DmaPort, FaultRecord, Iommu, format_sbdf
from xenpci.hv.memory import MMIO_BASE, PAGE_SHIFT, PAGE_SIZE
from xenpci.hv.msixtbl import MsixRegion, MsixTables
from xenpci.hv.rangeset import RangeSet
from xenpci.hv.scheduler import Scheduler, SteppedVcpu

__all__ = [
    "DOMID_FIRST_RESERVED",
    "DOMID_SELF",
    "MAX_CONTROLLER_PAUSES",
    "MMIO_BASE",
    "NR_EVTCHN_PORTS",
    "PAGE_SHIFT",
    "PAGE_SIZE",
    "Deadlock",
    "DeviceError",
    "DmaFault",
    "DmaPort",
    "Domain",
    "DomainDead",
    "DomainExists",
    "EvtchnError",
    "FaultRecord",
    "GrantError",
    "GrantMapping",
    "HvError",
    "Hypercalls",
    "Hypervisor",
    "InvalidArgument",
    "IoBus",
    "Iommu",
    "MmioDenied",
    "MmioHandler",
    "MmioMapping",
    "MsixRegion",
    "MsixTables",
    "NoSuchDomain",
    "OutOfMemory",
    "PermissionDenied",
    "PortInfo",
    "PortState",
    "RangeSet",
    "Scheduler",
    "SteppedVcpu",
    "Vcpu",
    "format_sbdf",
]
