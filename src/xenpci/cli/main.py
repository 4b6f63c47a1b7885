"""The ``xenpci`` command: a thin shell over the toolstack and the layers below.

Each subcommand group lives in its own module and adds itself to the app
through ``register(app)``, so groups can grow without touching this file.
"""

from __future__ import annotations

import typer

from xenpci.cli import check, compare, demo, guest_view, machine, pci, xenstored, xl

app = typer.Typer(
    name="xenpci",
    help="Xen PCI passthrough for PV guests, modelled end to end (no hypervisor needed).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: a flag shows as ``-r``, not ``-r <bool>``, as xl's help does.
    rich_markup_mode=None,
    # xl takes -h anywhere (SWITCH_FOREACH_OPT); so does every xenpci command.
    context_settings={"help_option_names": ["-h", "--help"]},
)

for _group in (demo, xenstored, pci, guest_view, machine, xl, check, compare):
    _group.register(app)


def main() -> None:
    """Entry point for ``python -m xenpci``."""
    app()
