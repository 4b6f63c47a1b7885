"""The root of every xenpci error hierarchy.

Each layer defines its own subclasses carrying their data (offset, size,
expected, got) and, across a protocol boundary, the protocol's own code.
"""


class XenpciError(Exception):
    """Base class for all errors raised by xenpci."""
