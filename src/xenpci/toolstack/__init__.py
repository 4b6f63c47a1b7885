"""xenpci.toolstack."""
