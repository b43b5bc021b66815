"""Device commands: mkdev, rmdev, chdev, lsdev, lsattr, lspv."""

from __future__ import annotations

import typer

from glvmctl.context import rpc
from glvmctl.output import columns, emit_json, fail

JSON = typer.Option(False, "--json", help="print one JSON document for scripts")


def parse_attrs(pairs: list[str] | None) -> dict[str, str]:
    """Turn ``-a name=value`` options into a dict; refuse malformed ones."""
    out: dict[str, str] = {}
    for p in pairs or []:
        name, sep, value = p.partition("=")
        if not sep or not name.strip():
            fail(f"attribute '{p}' must be name=value")
        out[name.strip()] = value.strip()
    return out


def register(app: typer.Typer) -> None:
    @app.command()
    def mkdev(
        dev_class: str = typer.Option(None, "-c", help="device class: disk or rpvserver"),
        dev_type: str = typer.Option(None, "-t", help="device type: file, block, rpvclient, "
                                                      "rpvstype"),
        attr: list[str] = typer.Option(None, "-a", help="attribute=value (repeatable)"),
        name: str = typer.Option(None, "-l", help="device name; with no -c/-t, configure "
                                                  "this Defined device (Defined -> Available)"),
        define_only: bool = typer.Option(False, "-d", help="define the device only; leave it "
                                                           "Defined"),
    ) -> None:
        """Define and configure a device, or make a Defined device Available (mkdev -l)."""
        if (dev_class is None) != (dev_type is None):
            fail("give both -c CLASS and -t TYPE, or only -l NAME")
        r = rpc("mkdev", name=name, dev_class=dev_class, dev_type=dev_type,
                attrs=parse_attrs(attr), define_only=define_only)
        typer.echo(f"{r['name']} {r['state']}")

    @app.command()
    def rmdev(
        name: str = typer.Option(..., "-l", help="device name"),
        delete: bool = typer.Option(False, "-d", help="delete the definition as well"),
    ) -> None:
        """Move a device to Defined (rmdev -l), or delete it (rmdev -d -l)."""
        r = rpc("rmdev", name=name, delete=delete)
        typer.echo(f"{r['name']} {r['state']}")

    @app.command()
    def chdev(
        name: str = typer.Option(..., "-l", help="device name"),
        attr: list[str] = typer.Option(..., "-a", help="attribute=value (repeatable); "
                                                      "resume=yes resumes a failed RPV client"),
    ) -> None:
        """Change device attributes (validated; nothing changes if any value is bad)."""
        r = rpc("chdev", name=name, changes=parse_attrs(attr))
        typer.echo(f"{r['name']} changed")

    @app.command()
    def lsdev(
        customized: bool = typer.Option(False, "-C", help="list customized devices "
                                                          "(the default)"),
        dev_class: str = typer.Option(None, "-c", help="only this class"),
        dev_type: str = typer.Option(None, "-t", help="only this type"),
        as_json: bool = JSON,
    ) -> None:
        """List devices with their state and description."""
        rows = rpc("lsdev", dev_class=dev_class, dev_type=dev_type)
        if as_json:
            emit_json(rows)
            return
        columns([[d["name"], d["state"], d["description"]] for d in rows])

    @app.command()
    def lsattr(
        effective: bool = typer.Option(False, "-E", help="show effective values "
                                                         "(the default)"),
        name: str = typer.Option(..., "-l", help="device name"),
        as_json: bool = JSON,
    ) -> None:
        """Show a device's attributes: name, value, description, user-settable."""
        rows = rpc("lsattr", name=name)
        if as_json:
            emit_json(rows)
            return
        columns([[a["attribute"], a["value"], a["description"], str(a["user_settable"])]
                 for a in rows])

    @app.command()
    def lspv(name: str = typer.Argument(None, help="one physical volume"),
             as_json: bool = JSON) -> None:
        """List physical volumes: name, PVID, volume group, state."""
        rows = rpc("lspv", name=name)
        if as_json:
            emit_json(rows)
            return
        columns([[p["name"], p["pvid"] or "none", p["vg"] or "None", p["state"]] for p in rows])
