"""`flask --app wsgi dkim generate`: a DKIM key, and the DNS record and settings for it."""

from __future__ import annotations

from pathlib import Path

import click
from flask.cli import AppGroup

from ..config_checks import HOST_NAME
from .common import services as _services


@click.group("dkim", cls=AppGroup)
def dkim_group() -> None:
    """DKIM signing keys."""


def _host_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not HOST_NAME.fullmatch(value):
        raise click.BadParameter(f"{value!r} is not a DNS name")
    return value.lower()


@dkim_group.command("generate")
@click.option("--selector", required=True, callback=_host_name, help="The s= tag, like s1.")
@click.option(
    "--domain", required=True, callback=_host_name, help="The d= tag, like news.example.com."
)
@click.option(
    "--type", "kind", type=click.Choice(["rsa", "ed25519"]), default="rsa", show_default=True
)
@click.option("--bits", type=int, default=2048, show_default=True, help="RSA key size.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the key (default: INSTANCE_DIR/dkim-SELECTOR-DOMAIN.pem).",
)
def dkim_generate(selector: str, domain: str, kind: str, bits: int, output: Path | None) -> None:
    """Write a new private key (readable by you only; never over an existing file) and
    print the DNS TXT record that publishes it, and the settings that sign with it."""
    from .. import dkim  # dkimpy and cryptography, loaded for this command only

    path = output or Path(_services().settings.INSTANCE_DIR) / f"dkim-{selector}-{domain}.pem"
    if path.exists():
        raise click.ClickException(
            f"{path} exists; it may be the key your DNS publishes. Choose another --output "
            "(and a new --selector, to change keys without a gap)."
        )
    try:
        key = dkim.generate_key(kind, bits)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--bits") from exc
    try:
        dkim.write_key(key, path)
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror or exc}") from exc
    name, strings = dkim.dns_record(key, selector, domain)
    click.echo(f"Wrote the private key to {path} (readable by its owner only).\n")
    click.echo("Publish this DNS TXT record:")
    click.echo(f"  name:  {name}")
    click.echo("  value: " + " ".join(f'"{part}"' for part in strings))
    click.echo("\nThen set, and restart the web app and the scheduler:")
    click.echo(f"  DKIM_PRIVATE_KEY_PATH={path.resolve()}")
    click.echo(f"  DKIM_SELECTOR={selector}")
    click.echo(f"  DKIM_DOMAIN={domain}")
