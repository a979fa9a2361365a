"""`flask --app wsgi magnets list` and `magnets check`: the lead magnets the content holds.

Every magnet is read and checked when any process starts (a broken one stops it, naming
the magnet); `check` goes further and typesets each Markdown resource and renders each
incentive email, so a problem shows before a reader meets it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import click
from flask.cli import AppGroup

from .. import guide
from ..magnets import DEFAULT_MAGNET
from .common import services as _services


@click.group("magnets", cls=AppGroup)
def magnets_group() -> None:
    """The lead magnets (content/magnets/<id>/)."""


def _resource(magnet) -> str:
    if magnet.url is not None:
        return f"page {magnet.url}"
    if magnet.built:
        return f"PDF built from {magnet.source}"
    return f"file {magnet.resource}"


@magnets_group.command("list")
def magnets_list() -> None:
    """Each magnet: its page, resource, email, sequence and tags."""
    services = _services()
    base = services.settings.BASE_URL.rstrip("/")
    for magnet in services.magnets.values():
        default = " (default, also at /)" if magnet.id == DEFAULT_MAGNET else ""
        click.echo(f"{magnet.id}: {magnet.title}{default}")
        click.echo(f"  page:      {base}/free/{magnet.id}")
        click.echo(f"  resource:  {_resource(magnet)}")
        click.echo(f"  email:     {magnet.incentive_template}")
        click.echo(f"  sequence:  {magnet.sequence or '(none)'}")
        click.echo(f"  tags:      {', '.join(magnet.all_tags)}")


@magnets_group.command("check")
def magnets_check() -> None:
    """Typeset every Markdown resource and render every incentive email; exit 1 on a problem."""
    services = _services()
    problems = []
    with tempfile.TemporaryDirectory() as scratch:
        for magnet in services.magnets.values():
            if magnet.built and magnet.source is not None:
                try:
                    guide.build_pdf(
                        Path(scratch) / f"{magnet.id}.pdf",
                        site_name=services.settings.SITE_NAME,
                        source=magnet.source,
                        title=magnet.title,
                    )
                except (guide.GuideSourceError, OSError) as exc:
                    problems.append(f"{magnet.id}: {magnet.source}: {exc}")
            elif magnet.resource is not None and not magnet.resource.is_file():
                problems.append(f"{magnet.id}: {magnet.resource} is not a file")
            try:
                services.renderer.render(
                    magnet.incentive_template,
                    {
                        "first_name": "Alex",
                        "confirm_url": "https://example.com/c",
                        "download_url": "https://example.com/d",
                        "unsubscribe_url": "https://example.com/u",
                        "preferences_url": "https://example.com/p",
                        "magnet": magnet.id,
                    },
                )
            except Exception as exc:  # a template error of any kind is the owner's to see
                problems.append(f"{magnet.id}: email {magnet.incentive_template}: {exc}")
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        raise SystemExit(1)
    click.echo(f"{len(services.magnets)} magnets, all fine")
