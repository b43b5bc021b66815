"""``glvmctl tls init`` / ``tls issue SITE``: a small site CA for mutual TLS on the RPV link.

These run locally (no daemon): copy ca.pem and each site's SITE.pem/SITE.key to that site and
name them in rpvd's config (tls_ca, tls_cert, tls_key).
"""

from __future__ import annotations

import typer

from glvmctl.output import fail
from rpv import tls

app = typer.Typer(help="Mutual TLS for the RPV link: create a site CA and site certificates.",
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
          days: int = typer.Option(825, "--days", min=1, help="certificate validity")) -> None:
    """Create SITE.pem and SITE.key, signed by the CA, for one site's rpvd."""
    try:
        cert, key = tls.issue(directory, site, days=days)
    except (OSError, ValueError) as e:
        fail(f"tls issue: {e}")
    typer.echo(f"certificate {cert}\nkey         {key}")
