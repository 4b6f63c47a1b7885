"""Passthrough readiness: is this host, and this device, safe to pass through?

``xenpci check`` (issue 13): :mod:`xenpci.check.host` gathers the facts
(sysfs, a captured tree, or an lspci dump), :mod:`xenpci.check.rules` holds
the rule table the CLI and the toolstack's refusals share. Layer: above
:mod:`xenpci.pci`, below :mod:`xenpci.toolstack`.
"""

from xenpci.check.host import HostFacts, facts_from_functions, load_host_facts
from xenpci.check.rules import RULES, CheckRule, Finding, Row, exit_status, refusal, run_checks

__all__ = [
    "RULES",
    "CheckRule",
    "Finding",
    "HostFacts",
    "Row",
    "exit_status",
    "facts_from_functions",
    "load_host_facts",
    "refusal",
    "run_checks",
]
