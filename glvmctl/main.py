"""``glvmctl``: AIX-style device, RPV and error-log commands for a site's rpvd."""

from __future__ import annotations

import typer

from glvmctl import attach, devices, errlog, gmvg, jobs, lvm, rpv, stats, tls
from glvmctl.context import set_socket
from rpv import control_api as api

app = typer.Typer(
    help="Manage geographic LVM mirroring at this site: devices (mkdev, chdev, rmdev, lsdev, "
         "lsattr, lspv), RPV servers and clients, and the error log. Talks to rpvd over its "
         "control socket ($GLVM_SOCKET).",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]})


def _version(show: bool) -> None:
    if show:
        typer.echo(f"glvmctl {api.package_version()} (control API {api.API_VERSION}, "
                   f"RPV protocol {api.RPV_PROTOCOL_VERSION})")
        raise typer.Exit()


@app.callback()
def _global(socket: str = typer.Option(None, "--socket", envvar="GLVM_SOCKET",
                                       help="rpvd control socket "
                                            "(default /var/lib/glvm/control.sock)"),
            version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                         help="print the version and the protocol versions")
            ) -> None:
    set_socket(socket)


devices.register(app)
errlog.register(app)
lvm.register(app)
attach.register(app)
stats.register(app)
app.add_typer(rpv.server_app, name="rpvserver")
app.add_typer(rpv.client_app, name="rpvclient")
app.add_typer(gmvg.app, name="gmvg")
app.add_typer(tls.app, name="tls")
app.add_typer(jobs.app, name="jobs")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
