"""The differential suite needs Xen's real daemons: skip outside CI, fail in CI (interop.py)."""

from __future__ import annotations

import pytest

from tests.interop import require_executable, require_file
from xenpci.testing.xs_oracle import OracleUnavailable, shim_library, xen_utils_binary


@pytest.fixture(autouse=True)
def _oracle_available() -> None:
    for daemon in ("xenstored", "oxenstored"):
        if xen_utils_binary(daemon) is None:
            # Not unpacked (./dev setup does it into $XENPCI_XEN_UTILS).
            require_executable(f"/usr/lib/xen-4.17/bin/{daemon}")
    require_executable("gcc")
    for header in ("xenctrl.h", "xenevtchn.h", "xengnttab.h", "xen/io/xs_wire.h"):
        require_file(f"/usr/include/{header}")  # libxen-dev
    try:
        shim_library()
    except OracleUnavailable as e:
        pytest.fail(str(e), pytrace=False)
