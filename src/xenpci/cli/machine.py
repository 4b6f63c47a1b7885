"""``xenpci machine start|status|stop``: a machine that stays up.

``start`` boots the hypervisor model, dom0, xenstored and the toolstack
(:class:`xenpci.toolstack.daemon.MachineDaemon`) and serves until SIGTERM/SIGINT
or ``machine stop``; ``--daemon`` starts the same command as a detached child
and returns once it answers. The machine directory comes from ``--dir`` or
``$XENPCI_DIR``.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from xenpci.toolstack.daemon import (
    ControlClient,
    DaemonError,
    MachineDaemon,
    default_dir,
    read_pid,
)
from xenpci.toolstack.errors import ToolstackError
from xenpci.toolstack.host import DEFAULT_SOURCES, HostDescription, load_host

group = typer.Typer(help="Start, inspect and stop a running machine.", no_args_is_help=True)

DirOption = Annotated[
    Path | None,
    typer.Option("--dir", help="Machine directory (default: $XENPCI_DIR or a per-user dir)"),
]


def _dir(d: Path | None) -> Path:
    return d if d is not None else default_dir()


def _fail(msg: str) -> None:
    typer.echo(f"xenpci machine: {msg}", err=True)
    raise typer.Exit(1)


@group.command()
def start(
    dir: DirOption = None,
    host: Annotated[
        Path | None, typer.Option("--host", help="Host description (TOML) listing device sources")
    ] = None,
    no_iommu: Annotated[
        bool, typer.Option("--no-iommu", help="Boot a machine without an IOMMU")
    ] = False,
    daemon: Annotated[
        bool, typer.Option("--daemon", help="Run in the background; return when it answers")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds the toolstack waits for a backend")
    ] = 10.0,
) -> None:
    """Boot the machine and keep it running."""
    run_dir = _dir(dir).absolute()
    try:
        desc = load_host(host) if host is not None else HostDescription(sources=DEFAULT_SOURCES)
    except ToolstackError as e:
        _fail(str(e))
        return
    if no_iommu:
        desc = dataclasses.replace(desc, iommu=False)
    if daemon:
        _start_daemon(run_dir, host, no_iommu, timeout)
        return
    d = MachineDaemon(run_dir, desc, timeout=timeout)

    def _stop(signum: int, frame: FrameType | None) -> None:
        d.request_stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        d.start()
    except ToolstackError as e:
        _fail(str(e))
    typer.echo(f"machine: running (pid {os.getpid()}); XENSTORED_PATH={d.xenstored_path}", err=True)
    d.serve_forever()
    typer.echo("machine: stopped", err=True)


def _start_daemon(run_dir: Path, host: Path | None, no_iommu: bool, timeout: float) -> None:
    if read_pid(run_dir) is not None:
        _fail(f"a machine is already running in {run_dir} (pid {read_pid(run_dir)})")
    cmd = [sys.executable, "-m", "xenpci", "machine", "start", "--dir", str(run_dir)]
    cmd += ["--timeout", str(timeout)]
    if host is not None:
        cmd += ["--host", str(host.absolute())]
    if no_iommu:
        cmd.append("--no-iommu")
    # The child's early output goes to a temporary file outside DIR (so the machine
    # directory is the child's to create and to remove), shown if it fails to start.
    fd, log_name = tempfile.mkstemp(prefix="xenpci-machine-", suffix=".log")
    log = Path(log_name)
    with os.fdopen(fd, "wb") as out:
        child = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if child.poll() is not None:
            text = log.read_text(errors="replace").strip()
            log.unlink(missing_ok=True)
            # the child's own one-line error (it failed before serving) is the message
            typer.echo(
                text or f"xenpci machine: the machine exited at start (status {child.returncode})",
                err=True,
            )
            raise typer.Exit(1)
        if read_pid(run_dir) == child.pid:
            try:
                with ControlClient(run_dir, timeout=5) as c:
                    c.call("status")
            except (DaemonError, OSError):
                pass
            else:
                log.unlink(missing_ok=True)  # the child holds it open; nothing left on disk
                typer.echo(f"machine: started (pid {child.pid}) in {run_dir}")
                return
        time.sleep(0.05)
    child.terminate()
    log.unlink(missing_ok=True)
    _fail("the machine did not answer within 30 s")


@group.command()
def status(dir: DirOption = None) -> None:
    """Show the running machine: pid, sockets, domains and host devices."""
    run_dir = _dir(dir)
    try:
        with ControlClient(run_dir, timeout=30) as c:
            st: dict[str, Any] = c.call("status")
    except ToolstackError as e:
        _fail(str(e))
        return
    typer.echo(f"pid        {st['pid']}")
    typer.echo(f"dir        {st['dir']}")
    typer.echo(f"xenstored  {st['xenstored']}")
    typer.echo(f"iommu      {'on' if st['iommu'] else 'off'}")
    typer.echo(f"domains    {st['domains']}")
    typer.echo("devices:")
    for dev in st["devices"]:
        resets = "-" if dev["resets"] is None else str(dev["resets"])
        typer.echo(
            f"  {dev['bdf']}  {dev['owner']:<12} command={dev['command']:04x} "
            f"resets={resets:<3} {dev['source']}"
        )


@group.command()
def stop(
    dir: DirOption = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for exit")] = 30.0,
) -> None:
    """Stop the machine cleanly: guests shut down, devices released and reset."""
    run_dir = _dir(dir)
    pid = read_pid(run_dir)
    try:
        with ControlClient(run_dir, timeout=timeout) as c:
            c.call("shutdown")
    except ToolstackError as e:
        _fail(str(e))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid is None or read_pid(run_dir) is None:
            typer.echo("machine: stopped")
            return
        time.sleep(0.05)
    _fail(f"pid {pid} still running after {timeout:g} s")


def register(app: typer.Typer) -> None:
    """Add ``machine`` to the ``xenpci`` app."""
    app.add_typer(group, name="machine")
