"""xenpci.pciback."""
