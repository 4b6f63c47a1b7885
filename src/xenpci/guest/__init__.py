"""xenpci.guest."""
