"""Commands: `flask --app wsgi db upgrade`, `guide build`, `embed-snippet`."""

from __future__ import annotations

from pathlib import Path

import click
from flask import Flask, current_app, render_template
from flask.cli import AppGroup, with_appcontext

from . import guide, migrate
from .services import Services


def _services() -> Services:
    return current_app.extensions["newsletter"]


@click.group("db", cls=AppGroup)
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Create the database or migrate it to the current schema."""
    url = _services().settings.database_url
    migrate.upgrade(url, revision)
    click.echo(f"database at revision {migrate.current_revision(_services().database.engine)}")


@db_group.command("current")
def db_current() -> None:
    """Print the database's schema revision and the newest one."""
    current = migrate.current_revision(_services().database.engine)
    click.echo(f"database: {current or 'empty'}; newest: {migrate.head_revision()}")


@click.group("guide", cls=AppGroup)
def guide_group() -> None:
    """The lead magnet."""


@guide_group.command("build")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the PDF (default: where downloads are served from).",
)
@click.option(
    "--source",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=guide.GUIDE_SOURCE,
    show_default=True,
)
def guide_build(output: Path | None, source: Path) -> None:
    """Build the guide's PDF from its Markdown source."""
    settings = _services().settings
    destination = output or settings.guide_path
    try:
        guide.build_pdf(destination, site_name=settings.SITE_NAME, source=source)
    except guide.GuideSourceError as exc:
        raise click.ClickException(f"{source}: {exc}") from exc
    click.echo(f"wrote {destination} ({destination.stat().st_size} bytes)")


@click.command("embed-snippet")
@with_appcontext
def embed_snippet() -> None:
    """Print the HTML to paste into another site to show the signup form."""
    click.echo(
        render_template("embed_snippet.html", consent_text=render_template("consent.txt").strip())
    )


def init_app(app: Flask) -> None:
    app.cli.add_command(db_group)
    app.cli.add_command(guide_group)
    app.cli.add_command(embed_snippet)
