"""RPV server and client commands (the seed's ``smitty rpvserver`` / ``smitty rpvclient``)."""

from __future__ import annotations

import typer

from glvmctl.context import rpc
from glvmctl.devices import JSON
from glvmctl.output import columns, emit_json

server_app = typer.Typer(help="RPV servers: site name, add servers for local disks.",
                         no_args_is_help=True)
client_app = typer.Typer(help="RPV clients: discover a remote site's disks, add clients.",
                         no_args_is_help=True)


@server_app.command("site")
def site(name: str = typer.Argument(None, help="new site name; omit to show it"),
         as_json: bool = JSON) -> None:
    """Define, change or show the RPV server site name."""
    r = rpc("site", name=name)
    if as_json:
        emit_json(r)
    else:
        typer.echo(r["site"] or "(no site name defined)")


@server_app.command("add")
def server_add(
    pvids: list[str] = typer.Argument(..., help="PVIDs of local disks to serve"),
    client_addr: str = typer.Option(..., "--client-addr", help="the only RPV client IP "
                                                               "address to accept"),
    auto_online: str = typer.Option("y", "--auto-online", help="configure at system restart "
                                                               "(y/n)"),
    define_only: bool = typer.Option(False, "-d", help="leave the new servers Defined"),
) -> None:
    """Add one RPV server per PVID (like SMIT 'Add Remote Physical Volume Servers')."""
    for pvid in pvids:
        r = rpc("mkdev", dev_class="rpvserver", dev_type="rpvstype", define_only=define_only,
                attrs={"rpvs_pvid": pvid, "client_addr": client_addr,
                       "auto_online": auto_online})
        typer.echo(f"{r['name']} {r['state']}")


@client_app.command("discover")
def discover(
    server_addr: str = typer.Option(..., "--server-addr", help="RPV server IP address"),
    local_addr: str = typer.Option(None, "--local-addr", help="local IP address to connect "
                                   "from (default: try each local address, list those that "
                                   "reach the server)"),
    port: int = typer.Option(None, "--port", help="RPV server TCP port (default: rpv/tcp "
                                                  "in /etc/services, else 6192)"),
    as_json: bool = JSON,
) -> None:
    """Ask an RPV server for its site name and the disks it serves to this address."""
    r = rpc("discover", server_addr=server_addr, local_addr=local_addr, port=port)
    if as_json:
        emit_json(r)
        return
    if local_addr is None:
        typer.echo(f"# Local addresses that can reach RPV server {server_addr}:")
        for a in r["local_addrs"]:
            typer.echo(f"#   {a['addr']:<15} " + (f"reaches it ({a['disks']} disks offered)"
                                                  if a["reaches"] else f"no: {a['error']}"))
    typer.echo(f"# These remote physical volumes are available at site {r['site']}:")
    typer.echo(f"# (The physical volume names are as they are known on the host named "
               f"{r['node']}; asked from {r['local_addr']})")
    columns([[d["name"], d["pvid"], d["state"], d["local_name"] or ""] for d in r["disks"]],
            header=["# Physical Volume", "Physical Volume Identifier", "Server State",
                    "Known Here As"])


@client_app.command("add")
def client_add(
    pvids: list[str] = typer.Argument(..., help="PVIDs of remote disks"),
    server_addr: str = typer.Option(..., "--server-addr", help="RPV server IP address"),
    local_addr: str = typer.Option(None, "--local-addr", help="local IP address "
                                                              "(default: by routing)"),
    io_timeout: int = typer.Option(180, "--io-timeout", help="I/O timeout interval, seconds"),
    port: int = typer.Option(None, "--port", help="RPV server TCP port (default: rpv/tcp "
                                                  "in /etc/services, else 6192)"),
    define_only: bool = typer.Option(False, "-d", help="leave the new clients Defined"),
    compress: str = typer.Option("none", "--compress", help="compress data payloads: none, "
                                 "zstd or lz4 (the server must accept it)"),
) -> None:
    """Add one RPV client per PVID (like SMIT 'Add Remote Physical Volume Clients').
    Without --local-addr, the first local address that reaches the server is used."""
    local = local_addr or rpc("discover", server_addr=server_addr, port=port)["local_addr"]
    for pvid in pvids:
        attrs = {"pvid": pvid, "server_addr": server_addr, "local_addr": local,
                 "io_timeout": str(io_timeout), "compress": compress}
        if port is not None:
            attrs["server_port"] = str(port)
        r = rpc("mkdev", dev_class="disk", dev_type="rpvclient", define_only=define_only,
                attrs=attrs)
        typer.echo(f"{r['name']} {r['state']}")
