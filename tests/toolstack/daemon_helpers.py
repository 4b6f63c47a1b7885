"""A running :class:`MachineDaemon` for the tests that drive one over its sockets."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import THREADED_MODEL_TIMEOUT
from xenpci.toolstack.daemon import MachineDaemon
from xenpci.toolstack.host import HostDescription

_serial = itertools.count()


@contextlib.contextmanager
def running_daemon(tag: str) -> Iterator[MachineDaemon]:
    """Start a machine daemon on the default host; stop it (and its directory) after.

    The directory is short and under /tmp: its Unix sockets' paths must fit
    ``sun_path``. The pid and a serial keep xdist workers and repeated fixtures apart.
    """
    d = MachineDaemon(
        Path(f"/tmp/xenpci-{tag}-{os.getpid()}-{next(_serial)}"),
        HostDescription(),
        timeout=THREADED_MODEL_TIMEOUT,
    )
    d.start()
    try:
        yield d
    finally:
        d.stop()
