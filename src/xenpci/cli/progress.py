"""The progress display of the long-running commands (``xenpci demo``, ``xenpci compare``).

A spinner while the run boots and works, one ticked line per step the run
reports through its ``progress`` callback, and the one-line failure message
with exit status 1 when the run raises one of the errors it may raise (no
traceback reaches the user).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import typer
from rich.console import Console

from xenpci.errors import XenpciError

T = TypeVar("T")
Progress = Callable[[str], None]


def run_with_progress(
    console: Console,
    command: str,
    run: Callable[[Progress], T],
    *,
    errors: tuple[type[Exception], ...] = (XenpciError,),
) -> T:
    """``run(progress)`` under a spinner; ``errors`` become "<command> failed: ..." and exit 1."""
    try:
        with console.status("booting...") as status:

            def progress(text: str) -> None:
                console.print(f"[green]\u2713[/green] {text}")
                status.update("running...")

            return run(progress)
    except errors as e:
        console.print(f"[red]{command} failed:[/red] {e}")
        raise typer.Exit(1) from None
