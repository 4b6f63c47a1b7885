"""pciback's virtual config space (Linux ``drivers/xen/xen-pciback/conf_space*.c``).

The engine (:mod:`.engine`) merges field values over hardware; the tables
live in :mod:`.header`, :mod:`.capability`, :mod:`.quirks` and, for the
stricter vPCI-like policy, :mod:`.strict`. :mod:`.explain` names the rule
behind every difference a guest sees. :func:`config_init_dev` builds a
device's field list in Linux' order: header, capabilities (VPD, PM, MSI,
MSI-X), then quirk fields as they are added.
"""

from __future__ import annotations

from xenpci.pciback.conf_space.capability import capability_add_fields
from xenpci.pciback.conf_space.engine import (
    ConfigField,
    DevData,
    DeviceOptions,
    FieldEntry,
    ModuleParams,
    add_field,
    config_free_dev,
    config_free_dyn_fields,
    config_read,
    config_reset_dev,
    config_write,
)
from xenpci.pciback.conf_space.header import header_fields
from xenpci.pciback.conf_space.strict import strict_add_fields
from xenpci.pciback.errors import EINVAL, FieldError

__all__ = [
    "ConfigField",
    "DevData",
    "DeviceOptions",
    "FieldEntry",
    "ModuleParams",
    "add_field",
    "config_free_dev",
    "config_free_dyn_fields",
    "config_init_dev",
    "config_read",
    "config_reset_dev",
    "config_write",
]


def config_init_dev(dd: DevData) -> None:
    """``xen_pcibk_config_init_dev``: build the field list for the device's policy.
    Header types other than 0 and 1 are refused with -EINVAL, as Linux does."""
    header_type = dd.hw.config.header_type
    fields = header_fields(header_type)
    if fields is None:
        raise FieldError("header.type", f"header type {header_type} not handled (errno {EINVAL})")
    dd.config_fields = []
    if dd.options.policy == "strict":
        strict_add_fields(dd, header_type)
        return
    for fld in fields:
        add_field(dd, fld)
    capability_add_fields(dd)
