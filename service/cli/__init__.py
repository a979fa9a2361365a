"""Commands: `flask --app wsgi db ...`, `guide build`, `embed-snippet`, `emails ...`,
`sequence ...`, `admin ...`, `subscribers ...` (service/cli/subscribers.py),
`bounces ...` (service/cli/bounces.py), `dkim generate` (service/cli/dkim.py) and
`magnets ...` (service/cli/magnets.py)."""

from __future__ import annotations

import os
from pathlib import Path

import click
from flask import Flask, current_app, render_template
from flask.cli import AppGroup, with_appcontext

from .. import admins, guide, kinds
from ..config import DEV_MAIL_SCHEMES
from ..magnets import DEFAULT_MAGNET
from ..mail import DeliveryError
from .bounces import bounces_group
from .common import services as _services
from .dkim import dkim_group
from .magnets import magnets_group
from .sequences import sequence_group
from .subscribers import subscribers_group


@click.group("db", cls=AppGroup)
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Create the database or migrate it to the current schema."""
    from .. import migrate  # Alembic is loaded only by the commands that need it

    url = _services().settings.database_url
    migrate.upgrade(url, revision)
    click.echo(f"database at revision {migrate.current_revision(_services().database.engine)}")


@db_group.command("current")
def db_current() -> None:
    """Print the database's schema revision and the newest one."""
    from .. import migrate

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
    """Build the guide's PDF from its Markdown source (and every other magnet's)."""
    settings = _services().settings
    destination = output or settings.guide_path
    try:
        guide.build_pdf(destination, site_name=settings.SITE_NAME, source=source)
    except guide.GuideSourceError as exc:
        raise click.ClickException(f"{source}: {exc}") from exc
    click.echo(f"wrote {destination} ({destination.stat().st_size} bytes)")
    if output is not None:
        return
    # And every other magnet built from Markdown (content/magnets/<id>/).
    for magnet in _services().magnets.values():
        if magnet.id == DEFAULT_MAGNET or not magnet.built or magnet.source is None:
            continue
        try:
            built = guide.build_pdf(
                magnet.resource,
                site_name=settings.SITE_NAME,
                source=magnet.source,
                title=magnet.title,
            )
        except guide.GuideSourceError as exc:
            raise click.ClickException(f"{magnet.source}: {exc}") from exc
        click.echo(f"wrote {built} ({built.stat().st_size} bytes)")


@click.command("embed-snippet")
@click.option(
    "--magnet",
    "magnet_id",
    default=DEFAULT_MAGNET,
    show_default=True,
    help="The free resource the form offers (see `magnets list`).",
)
@with_appcontext
def embed_snippet(magnet_id: str) -> None:
    """Print the HTML to paste into another site to show a magnet's signup form."""
    magnet = _services().magnets.get(magnet_id)
    if magnet is None:
        raise click.ClickException(
            f"no magnet {magnet_id!r} (magnets: {', '.join(_services().magnets)})"
        )
    consent = magnet.consent or render_template("consent.txt").strip()
    click.echo(render_template("embed_snippet.html", magnet=magnet, consent_text=consent))


@click.group("emails", cls=AppGroup)
def emails_group() -> None:
    """Look at emails as readers will get them."""


def _sample_email(name: str, address: str, first_name: str):
    """An email as dispatch would compose it, for a sample reader (not stored)."""
    services = _services()
    # A step of the default sequence, else of any other (step ids may repeat across them).
    owner, step = next(
        (
            (sequence, sequence.step(name))
            for sequence in (services.default_sequence, *services.sequences.values())
            if sequence.step(name) is not None
        ),
        (services.default_sequence, None),
    )
    template = step.template if step else name
    # Emails whose template needs nothing beyond the reader: the fixed ones, and each lead
    # magnet's incentive email.
    plain = {
        rules.template
        for rules in kinds.RULES.values()
        if rules.template and rules.data is kinds.ExtraData.NONE
    } | {magnet.incentive_template for magnet in services.magnets.values()}
    magnet = next((m.id for m in services.magnets.values() if m.incentive_template == template), "")
    if step is None and (template not in plain or not services.renderer.has_template(template)):
        steps = ", ".join(s.id for sequence in services.sequences.values() for s in sequence.steps)
        raise click.ClickException(
            f"no sequence step or email called {name!r} (steps: {steps}; emails: "
            f"{', '.join(sorted(plain))})"
        )
    if step is not None:
        kind = kinds.SEQUENCE_STEP
        context = {"sequence": owner.name, "step": step.id}
    else:
        kind, context = kinds.with_template(template) or kinds.WELCOME, {"magnet": magnet}
    return services.composer.sample(
        kind,
        template,
        to=address,
        first_name=first_name,
        now=services.clock(),
        context=context,
        sequence_step=step.id if step else None,
    )


@emails_group.command("preview")
@click.argument("name")
@click.option("--first-name", default="Alex", show_default=True, help="'' for a reader without one")
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for NAME.html and NAME.txt (default: INSTANCE_DIR/preview).",
)
def emails_preview(name: str, first_name: str, output: Path | None) -> None:
    """Write the HTML and text of a sequence step (or of confirm, welcome ...) for a sample
    reader."""
    message = _sample_email(name, "reader@example.com", first_name)
    folder = output or Path(_services().settings.INSTANCE_DIR) / "preview"
    folder.mkdir(parents=True, exist_ok=True)
    stem = name.replace("/", "_")
    (folder / f"{stem}.html").write_text(message.html, encoding="utf-8")
    (folder / f"{stem}.txt").write_text(
        f"Subject: {message.subject}\n\n{message.text}", encoding="utf-8"
    )
    click.echo(f"Subject: {message.subject}")
    click.echo(f"wrote {folder / f'{stem}.html'} and {folder / f'{stem}.txt'}")


@emails_group.command("send-test")
@click.argument("name")
@click.argument("address")
@click.option("--first-name", default="Alex", show_default=True)
def emails_send_test(name: str, address: str, first_name: str) -> None:
    """Send one email (a sequence step, or confirm, welcome ...) to ADDRESS now.

    Its links are for a sample reader and lead to 'this link does not work' pages.
    """
    from ..signup_input import normalize_email

    try:
        address = normalize_email(address)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="ADDRESS") from exc
    message = _sample_email(name, address, first_name)
    mailer = _services().make_mailer()
    try:
        mailer.send(message)
    except DeliveryError as exc:
        raise click.ClickException(f"not sent: {exc}") from exc
    finally:
        mailer.close()
    click.echo(f"sent {message.subject!r} to {address}")


@click.group("admin", cls=AppGroup)
def admin_group() -> None:
    """Accounts for the owner's pages at /admin."""


def _new_password() -> str:
    return os.environ.get("ADMIN_PASSWORD") or click.prompt(
        "Password (at least 12 characters)", hide_input=True, confirmation_prompt=True
    )


@admin_group.command("create")
@click.argument("email")
def admin_create(email: str) -> None:
    """Create an admin account. The password is asked for, or read from ADMIN_PASSWORD."""
    password = _new_password()
    services = _services()
    try:
        with services.database.begin() as session:
            admin = admins.create(session, email, password, now=services.clock())
            address = admin.email
    except admins.AdminError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"admin account {address} created; sign in at {services.settings.BASE_URL}/admin")


@admin_group.command("set-password")
@click.argument("email")
def admin_set_password(email: str) -> None:
    """Give an account a new password and sign it out everywhere. The password is asked
    for, or read from ADMIN_PASSWORD."""
    services = _services()
    with services.database.read() as session:
        if not admins.exists(session, email):  # said before the password is asked for
            raise click.ClickException(f"There is no admin account for {email}.")
    password = _new_password()
    try:
        with services.database.begin() as session:
            ended = admins.reset_password(session, email, password, now=services.clock())
    except admins.AdminError as exc:
        raise click.ClickException(str(exc)) from None
    # The wrong guesses that may have locked the account out are forgotten with them.
    current_app.extensions["admin_password_attempts"].forget(
        "login-account", admins.account_key(email)
    )
    click.echo(
        f"password of {email} changed; {ended} session(s) signed out; sign in at "
        f"{services.settings.BASE_URL}/admin"
    )


@admin_group.command("hint")
@click.option("--banner", is_flag=True, help="Say where emails go and where /admin is, too.")
def admin_hint(banner: bool) -> None:
    """While there is no account: a link to create the first one (valid for an hour, and
    only until an account exists), and the command that does it too."""
    services = _services()
    base, mail_url = services.settings.BASE_URL, services.settings.MAIL_URL
    if banner:
        if mail_url.startswith("console:"):
            click.echo("  Emails:   printed in this terminal, each between a line")
            click.echo('            "===== email to ..." and a line "===== end of email to ..."')
        elif mail_url.startswith("file:"):
            click.echo("  Emails:   written as .eml files where MAIL_URL says")
        else:
            click.echo("  Emails:   sent through the server MAIL_URL names")
        if mail_url.startswith(DEV_MAIL_SCHEMES):
            click.echo(f"  Outbox:   {base}/admin/outbox (every email, as readers get it)")
    with services.database.read() as session:
        has_account = admins.count(session) > 0
    if has_account:
        if banner:
            click.echo(f"  Admin:    {base}/admin")
        return
    token = admins.setup_token(services.tokens, now=services.clock())
    click.echo("  Admin:    no account yet; create yours within the hour at")
    click.echo(f"            {base}/admin/setup/{token}")
    click.echo("            or with .venv/bin/flask --app wsgi admin create you@example.com")


def init_app(app: Flask) -> None:
    app.cli.add_command(db_group)
    app.cli.add_command(guide_group)
    app.cli.add_command(embed_snippet)
    app.cli.add_command(emails_group)
    app.cli.add_command(sequence_group)
    app.cli.add_command(admin_group)
    app.cli.add_command(subscribers_group)
    app.cli.add_command(bounces_group)
    app.cli.add_command(dkim_group)
    app.cli.add_command(magnets_group)
