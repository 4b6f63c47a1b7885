"""The differential suite needs Xen's real daemons: fail in CI when they cannot run."""

from __future__ import annotations

import pytest

from tests.interop import require_executable
from xenpci.testing.xs_oracle import OracleUnavailable, shim_library, xen_utils_binary


@pytest.fixture(autouse=True)
def _oracle_available() -> None:
    if xen_utils_binary("xenstored") is None or xen_utils_binary("oxenstored") is None:
        # Not unpacked: skip outside CI, fail in CI (tests/interop.py).
        require_executable("xen-utils-4.17/xenstored")
    require_executable("gcc")
    try:
        shim_library()
    except OracleUnavailable as e:
        pytest.fail(str(e), pytrace=False)
