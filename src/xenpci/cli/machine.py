"""``xenpci machine``: not yet built (see the open issues)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this command group to the ``xenpci`` app (nothing yet)."""
