"""Layer 1: byte-exact public layouts and constants (ctypes), keeping the C names.

Each module mirrors one public Xen header; a test compiles C against Debian's
``libxen-dev`` and checks every size, offset and constant against these.
"""
