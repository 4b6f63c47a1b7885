"""xenpci.pcifront."""
