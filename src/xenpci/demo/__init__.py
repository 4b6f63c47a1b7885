"""xenpci.demo: the whole passthrough story, above the toolstack (what ``xenpci demo`` runs).

* :mod:`~xenpci.demo.scenario` -- :func:`run_demo`, the story as :data:`STEPS`
  (name, action, check) and the :class:`DemoReport` it fills;
* :mod:`~xenpci.demo.paths` -- the path table (:func:`path_counts`);
* :mod:`~xenpci.demo.diagram` -- the sequence diagram (:func:`sequence`,
  :func:`mermaid`, :func:`html`, :func:`write_diagram`).
"""

from xenpci.demo.diagram import PARTICIPANTS, Message, html, mermaid, sequence, write_diagram
from xenpci.demo.paths import CATEGORIES, PathCount, path_counts
from xenpci.demo.scenario import (
    NIC,
    NVME,
    STEPS,
    UART,
    Check,
    DemoError,
    DemoReport,
    Step,
    run_demo,
)

__all__ = [
    "CATEGORIES",
    "NIC",
    "NVME",
    "PARTICIPANTS",
    "STEPS",
    "UART",
    "Check",
    "DemoError",
    "DemoReport",
    "Message",
    "PathCount",
    "Step",
    "html",
    "mermaid",
    "path_counts",
    "run_demo",
    "sequence",
    "write_diagram",
]
