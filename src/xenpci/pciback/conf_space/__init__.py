"""xenpci.pciback.conf_space."""
