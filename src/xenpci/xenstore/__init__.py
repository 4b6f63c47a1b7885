"""xenpci.xenstore."""
