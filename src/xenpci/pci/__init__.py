"""xenpci.pci."""
