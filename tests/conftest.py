"""Suite-wide settings, and the suite's only bounds on waits.

Hypothesis: no per-example deadline and no ``too_slow`` health check. Both
fire on a loaded 2-core CI machine (thread hand-offs, daemons), not on a
defect; the property itself is still checked on every example.

Waits: a test waits on an explicit event (a watch firing, a process ending, a
future resolving) or drives the deterministic executor, whose timeouts are
deadlines on a virtual clock and cost no wall time. Where the event comes
from across an OS edge (another thread, a child process, a socket), the wait
is bounded by one of the names below, never by a literal: the bound only
matters for a test that is already failing (a hung peer), so it is generous.
"""

from __future__ import annotations

from typing import Final

from hypothesis import HealthCheck, settings

settings.register_profile("xenpci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("xenpci")

#: A thread, socket or child process reaching a state the test waits for.
OS_EDGE_TIMEOUT: Final = 30.0
#: A tool run to completion as a child process (the CLI, lspci, xenstore-utils, gcc).
TOOL_TIMEOUT: Final = 120.0
#: A model wait in a *threaded* machine (libxl's backend waits): a deadline on real
#: time there, so it too is an OS-edge bound; deterministic machines use virtual time.
THREADED_MODEL_TIMEOUT: Final = 20.0
#: A wait the test expects to run out (its peer is stuck on purpose): always waited
#: out in full, so short.
EXPECTED_TIMEOUT: Final = 0.1
