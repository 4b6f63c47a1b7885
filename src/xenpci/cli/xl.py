"""``xenpci xl ...``: xl's domain and PCI commands, sent to a running machine.

Mirrors ``tools/xl`` (``xl_cmdtable.c``, ``xl_pci.c``, ``xl_info.c``,
``xl_vmcontrol.c``): output formats, messages and exit statuses are xl's. What
xl parses itself (a ``PCI_SPEC_STRING``, a BDF, an xl.cfg) is parsed here,
before the machine is asked: a malformed spec or BDF exits 2, a bad spec inside
a cfg exits with the parser's status (6), anything libxl refuses exits 1
(``EXIT_FAILURE``). Every error, of any layer, becomes one stderr line and its
exit status in one place, :class:`XlGroup`. ``Parsing config from ...`` goes to
stderr, as xl prints it.

The machine is selected by ``--dir`` or ``$XENPCI_DIR`` (see ``xenpci machine
start``).

Deliberate differences: xl looks the domain up (``find_domain``) before it
parses a spec; here the spec is parsed first (no round trip for a typo).
``destroy`` has no ``-f``: dom0 is never destroyed. ``xl list -l`` prints only
the fields modelled (``c_info`` type/name/domid, ``b_info`` vCPUs and memory,
``pcidevs``), as libxl's JSON would with everything else at its default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from xenpci.errors import XenpciError
from xenpci.toolstack import xlcfg
from xenpci.toolstack.control import RemoteError
from xenpci.toolstack.daemon import ControlClient, default_dir
from xenpci.toolstack.errors import ToolstackError, XlError
from xenpci.toolstack.xlcfg import (
    BdfError,
    PciDefaults,
    PciSpecError,
    load_domain_config,
    parse_bdf,
    parse_pci_spec,
)

#: The parser's deliberate differences from libxlutil 4.17's bugs, shown by
#: ``xenpci xl --help`` (the parser owns the text; empty if it has none).
_DIVERGENCES: str = getattr(xlcfg, "LIBXLUTIL_DIVERGENCES", "")


def error_line(e: BaseException) -> tuple[str, int]:
    """The one stderr line and the exit status xl would give for ``e``."""
    exit_code = getattr(e, "exit_code", 1)
    if not isinstance(exit_code, int) or not 0 < exit_code < 256:
        exit_code = 1
    if isinstance(e, RemoteError):
        if e.xl:
            return e.message, exit_code
        why = f" [{e.reason}]" if e.reason else ""
        return f"libxl: error: {e.message}{why}", exit_code
    if isinstance(e, XlError):
        return e.message, exit_code
    if isinstance(e, ToolstackError):
        return f"xl: {e.message}", exit_code
    if isinstance(e, OSError):
        return f"xl: {e.strerror or e}", 1
    return str(e), exit_code


class XlGroup(TyperGroup):
    """The ``xl`` group: any error of a command ends as one line and its exit status."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        # xl.c: an unknown command is "command not implemented", EXIT_FAILURE (click
        # would say "No such command" and exit 2, xl's status for bad arguments)
        if args and not args[0].startswith("-") and self.get_command(ctx, args[0]) is None:
            typer.echo("command not implemented", err=True)
            raise typer.Exit(1)
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (XenpciError, OSError, ValueError) as e:
            line, code = error_line(e)
            typer.echo(line, err=True)
            raise typer.Exit(code) from None
        except (KeyError, TypeError, IndexError) as e:
            # a daemon answer of the wrong shape (another version?) or a bug: still one line
            typer.echo(f"xl: internal error: unexpected answer from the machine ({e})", err=True)
            raise typer.Exit(1) from None


group = typer.Typer(
    cls=XlGroup,
    help="xl-style toolstack commands against a running machine."
    # "\b": click keeps the paragraph's line breaks (a list) instead of re-wrapping it
    + (f"\n\n\b\n{_DIVERGENCES}" if _DIVERGENCES else ""),
    no_args_is_help=True,
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
    with ControlClient(_state.get("dir", default_dir())) as c:
        return c.call(op, **args)


def _spec(command: str, spec: str) -> None:
    """xl parses a PCI_SPEC_STRING itself; a malformed one exits 2 (``xl_pci.c``)."""
    try:
        parse_pci_spec(spec, PciDefaults(), path="command line")
    except PciSpecError as e:
        # xlu's own diagnostic first, as libxlutil prints it, then xl's line
        typer.echo(str(e), err=True)
        raise XlError(f'{command}: malformed PCI_SPEC_STRING "{spec}"', exit_code=2) from None


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
        raw = config.read_bytes()
    except OSError as e:
        raise XlError(f"Failed to read config file: {config}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise XlError(
            f"Failed to read config file: {config}: not UTF-8 "
            f"(byte 0x{raw[e.start]:02x} at offset {e.start})"
        ) from None
    typer.echo(f"Parsing config from {config}", err=True)
    cfg = load_domain_config(text, str(config))  # xl parses; its errors carry the exit status
    for warning in getattr(cfg, "warnings", ()):  # libxlutil's warnings, in its words
        typer.echo(str(warning), err=True)
    r = _call("create", config=text, path=str(config), allow_unsafe=allow_unsafe)
    typer.echo(f"Domain {r['domid']} ({r['name'] or cfg.name}) created")


@group.command()
def destroy(domain: str) -> None:
    """Destroy a domain (its devices are force-detached and reset). Never domain 0."""
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
def list_(
    domain: Annotated[str | None, typer.Argument(help="Only this domain")] = None,
    long: Annotated[
        bool, typer.Option("-l", "--long", help="Each domain's configuration as libxl's JSON")
    ] = False,
) -> None:
    """List domains in xl's format (Time(s) is vCPU time)."""
    if long:
        typer.echo(json.dumps(_call("list-long", domain=domain), indent=4))
        return
    domains = _call("list", domain=domain)
    typer.echo("Name                                        ID   Mem VCPUs\tState\tTime(s)")
    for d in domains:
        typer.echo(
            f"{d['name']:<40} {d['domid']:5d} {d['memory']:5d} {d['vcpus']:5d}     "
            f"{d['state']}  {d['time']:8.1f}"
        )


@group.command()
def info() -> None:
    """Host facts in xl's format, among them whether the IOMMU is on (virt_caps)."""
    for name, value in _call("info"):
        typer.echo(f"{name:<23}: {value}")


@group.command()
def dmesg(
    clear: Annotated[bool, typer.Option("-c", help="Clear the ring after reading it")] = False,
) -> None:
    """The hypervisor's console: IOMMU faults, dropped MSI-X writes, refused mappings."""
    for line in _call("dmesg", clear=clear):
        typer.echo(line)


@group.command("pci-assignable-add")
def pci_assignable_add(
    bdf: str,
    name: Annotated[str | None, typer.Option("-n", "--name", help="Name the device")] = None,
) -> None:
    """Make a device assignable (bind it to pciback)."""
    try:
        # xlu_pci_parse_bdf, as xl: "3:0.0" is 0000:03:00.0, text after the function ignored
        sbdf, _all = parse_bdf(bdf)
    except BdfError:
        raise XlError(f'pci-assignable-add: malformed BDF "{bdf}"', exit_code=2) from None
    _call("pci-assignable-add", bdf=str(sbdf), name=name)


@group.command("pci-assignable-remove")
def pci_assignable_remove(
    target: Annotated[str, typer.Argument(metavar="BDF|NAME")],
    rebind: Annotated[
        bool, typer.Option("-r", help="Rebind to the driver it had before pciback")
    ] = False,
) -> None:
    """Give an assignable device back to dom0 (NAME is tried first, then BDF)."""
    _call("pci-assignable-remove", target=target, rebind=rebind)


@group.command("pci-assignable-list")
def pci_assignable_list(
    names: Annotated[
        bool, typer.Option("-n", "--show-names", help="Show the device names")
    ] = False,
) -> None:
    """List assignable devices: ``BDF NAME`` a line (xl's format: no name, a trailing space)."""
    for d in _call("pci-assignable-list"):
        name = d["name"] if names and d["name"] else ""
        typer.echo(f"{d['bdf']} {name}")


@group.command("pci-attach")
def pci_attach(domain: str, spec: str, allow_unsafe: AllowUnsafe = False) -> None:
    """Hot-plug a device (PCI_SPEC_STRING) into a running domain."""
    _spec("pci-attach", spec)
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
    _spec("pci-detach", spec)
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
