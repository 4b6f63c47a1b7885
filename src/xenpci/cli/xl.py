"""``xenpci xl ...``: xl's domain and PCI commands, sent to a running machine.

Output formats are xl's (``tools/xl/xl_list.c``, ``xl_pci.c``); errors go to
stderr with exit status 1 as xl's ``EXIT_FAILURE``. The machine is selected by
``--dir`` or ``$XENPCI_DIR`` (see ``xenpci machine start``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from xenpci.toolstack.control import RemoteError
from xenpci.toolstack.daemon import ControlClient, default_dir
from xenpci.toolstack.errors import ToolstackError

group = typer.Typer(
    help="xl-style toolstack commands against a running machine.", no_args_is_help=True
)

_state: dict[str, Path] = {}


@group.callback()
def _select(
    dir: Annotated[
        Path | None,
        typer.Option("--dir", help="Machine directory (default: $XENPCI_DIR or a per-user dir)"),
    ] = None,
) -> None:
    _state["dir"] = dir if dir is not None else default_dir()


def _call(op: str, **args: Any) -> Any:
    try:
        with ControlClient(_state.get("dir", default_dir())) as c:
            return c.call(op, **args)
    except RemoteError as e:
        why = f" [{e.reason}]" if e.reason else ""
        typer.echo(f"libxl: error: {e.message}{why}", err=True)
        raise typer.Exit(1) from None
    except ToolstackError as e:
        typer.echo(f"xl: {e.message}", err=True)
        raise typer.Exit(1) from None


AllowUnsafe = Annotated[
    bool,
    typer.Option(
        "--allow-unsafe",
        help="Attach even when the device shares a BAR page with another device or the "
        "machine has no IOMMU (the guest becomes as trusted as dom0)",
    ),
]


@group.command()
def create(config: Path, allow_unsafe: AllowUnsafe = False) -> None:
    """Create a domain from an xl.cfg file."""
    try:
        text = config.read_text(encoding="utf-8")
    except OSError as e:
        typer.echo(f"Failed to read config file: {config}: {e.strerror}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"Parsing config from {config}")
    r = _call("create", config=text, path=str(config), allow_unsafe=allow_unsafe)
    typer.echo(f"Domain {r['domid']} ({r['name']}) created")


@group.command()
def destroy(domain: str) -> None:
    """Destroy a domain (its devices are force-detached and reset)."""
    _call("destroy", domain=domain)


@group.command()
def pause(domain: str) -> None:
    """Pause a domain: its vCPU stops; events for it wait until it is unpaused."""
    _call("pause", domain=domain)


@group.command()
def unpause(domain: str) -> None:
    """Unpause a paused domain (pauses are counted: one unpause per pause)."""
    _call("unpause", domain=domain)


@group.command("list")
def list_() -> None:
    """List domains in xl's format."""
    domains = _call("list")
    typer.echo("Name                                        ID   Mem VCPUs\tState\tTime(s)")
    for d in domains:
        typer.echo(
            f"{d['name']:<40} {d['domid']:5d} {d['memory']:5d} {d['vcpus']:5d}     "
            f"{d['state']}  {0.0:8.1f}"
        )


@group.command("pci-assignable-add")
def pci_assignable_add(
    bdf: str,
    name: Annotated[str | None, typer.Option("-n", "--name", help="Name the device")] = None,
) -> None:
    """Make a device assignable (bind it to pciback)."""
    _call("pci-assignable-add", bdf=bdf, name=name)


@group.command("pci-assignable-remove")
def pci_assignable_remove(
    target: Annotated[str, typer.Argument(metavar="BDF|NAME")],
    rebind: Annotated[
        bool, typer.Option("-r", help="Rebind to the driver it had before pciback")
    ] = False,
) -> None:
    """Give an assignable device back to dom0."""
    _call("pci-assignable-remove", target=target, rebind=rebind)


@group.command("pci-assignable-list")
def pci_assignable_list(
    names: Annotated[bool, typer.Option("-n", help="Show the device names")] = False,
) -> None:
    """List assignable devices: one BDF a line, with -n followed by its name."""
    for d in _call("pci-assignable-list"):
        line = d["bdf"]
        if names and d["name"]:
            line += f" {d['name']}"
        typer.echo(line)


@group.command("pci-attach")
def pci_attach(domain: str, spec: str, allow_unsafe: AllowUnsafe = False) -> None:
    """Hot-plug a device (PCI_SPEC_STRING) into a running domain."""
    _call("pci-attach", domain=domain, spec=spec, allow_unsafe=allow_unsafe)


@group.command("pci-detach")
def pci_detach(
    domain: str,
    spec: str,
    force: Annotated[
        bool, typer.Option("-f", help="Detach even if the guest does not answer")
    ] = False,
) -> None:
    """Hot-unplug a device from a domain."""
    _call("pci-detach", domain=domain, spec=spec, force=force)


@group.command("pci-list")
def pci_list(domain: str) -> None:
    """List a domain's devices (columns Vdev and Device, as xl prints them)."""
    entries = _call("pci-list", domain=domain)
    if not entries:
        return
    typer.echo("Vdev Device")
    for e in entries:
        v = e["vdevfn"]
        typer.echo(f"{(v >> 3) & 0x1F:02x}.{v & 7:01x} {e['bdf']}")


def register(app: typer.Typer) -> None:
    """Add ``xl`` to the ``xenpci`` app."""
    app.add_typer(group, name="xl")
