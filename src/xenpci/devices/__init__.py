"""xenpci.devices."""
