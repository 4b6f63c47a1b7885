"""Suite-wide settings.

Hypothesis: no per-example deadline and no ``too_slow`` health check. Both
fire on a loaded 2-core CI machine (thread hand-offs, daemons), not on a
defect; the property itself is still checked on every example.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile("xenpci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("xenpci")
