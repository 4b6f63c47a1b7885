"""xenpci.xenbus."""
