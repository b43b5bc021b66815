"""``glvmctl tls init`` / ``tls issue SITE`` / ``tls client NAME``: a small site CA for mutual
TLS on the RPV link and on NBD over TCP.

These run locally (no daemon): copy ca.pem and each site's SITE.pem/SITE.key to that site and
name them in rpvd's config (tls_ca, tls_cert, tls_key). ``tls client`` makes the certificate
directory an NBD client (nbdinfo, nbdcopy, qemu) needs to reach ``nbd_listen``.
"""

from __future__ import annotations

import typer

from glvmctl import ca as tls
from glvmctl.output import fail

app = typer.Typer(help="Mutual TLS for the RPV link and NBD over TCP: a site CA, site and "
                       "client certificates.",
                  no_args_is_help=True)
DIR = typer.Option("/etc/glvm/tls", "--dir", envvar="GLVM_TLS_DIR",
                   help="where the CA and certificates live")


@app.command("init")
def init(directory: str = DIR,
         days: int = typer.Option(3650, "--days", min=1, help="CA validity")) -> None:
    """Create the CA (ca.pem, ca.key) that signs every site's certificate."""
    try:
        cert, key = tls.init_ca(directory, days=days)
    except (OSError, ValueError) as e:
        fail(f"tls init: {e}")
    typer.echo(f"CA certificate {cert}\nCA key         {key} (keep it offline)")


@app.command("issue")
def issue(site: str = typer.Argument(..., help="site name, e.g. Poughkeepsie"),
          directory: str = DIR,
          days: int = typer.Option(825, "--days", min=1, help="certificate validity"),
          ip: list[str] = typer.Option([], "--ip", help="an address NBD clients use to reach "
                                                        "this site (repeatable)"),
          dns: list[str] = typer.Option([], "--dns", help="a host name NBD clients use to "
                                                          "reach this site (repeatable)")
          ) -> None:
    """Create SITE.pem and SITE.key, signed by the CA, for one site's rpvd."""
    try:
        cert, key = tls.issue(directory, site, days=days, ips=ip, dns=dns)
    except (OSError, ValueError) as e:
        fail(f"tls issue: {e}")
    typer.echo(f"certificate {cert}\nkey         {key}")


@app.command("client")
def client(name: str = typer.Argument(..., help="who the certificate is for, e.g. backup01"),
           out: str = typer.Option(..., "--out", help="the client's certificate directory "
                                                     "(created)"),
           directory: str = DIR,
           days: int = typer.Option(825, "--days", min=1, help="certificate validity")) -> None:
    """Create an NBD client's certificate directory (ca-cert.pem, client-cert.pem,
    client-key.pem): nbdinfo 'nbds://HOST:PORT/LV?tls-certificates=OUT', qemu
    '--object tls-creds-x509,dir=OUT,endpoint=client'."""
    try:
        tls.issue_client(directory, name, out, days=days)
    except (OSError, ValueError) as e:
        fail(f"tls client: {e}")
    typer.echo(f"client certificate directory {out}")
