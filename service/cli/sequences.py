"""`flask --app wsgi sequence status|pause|resume`: the drip sequences and a reader's place."""

from __future__ import annotations

from datetime import timedelta

import click
from flask.cli import AppGroup
from sqlalchemy import select

from .. import dashboard, sequences
from ..models import Subscriber
from .common import services as _services


@click.group("sequence", cls=AppGroup)
def sequence_group() -> None:
    """The drip sequences."""


def _sequence(name: str | None) -> sequences.DripSequence:
    services = _services()
    if name is None:
        return services.default_sequence
    if name not in services.sequences:
        raise click.ClickException(
            f"no sequence {name!r} (sequences: {', '.join(services.sequences)})"
        )
    return services.sequences[name]


SEQUENCE_OPTION = click.option(
    "--sequence",
    "name",
    default=None,
    help="Which sequence (default: the default one, templates/emails/sequence.toml).",
)


@sequence_group.command("status")
@click.option("--sequence", "name", default=None, help="Only this one (default: every one).")
def sequence_status(name: str | None) -> None:
    """How many subscribers are at each step, and what is due in the next 24 hours."""
    services = _services()
    chosen = [_sequence(name)] if name else list(services.sequences.values())
    for number, sequence in enumerate(chosen):
        if number:
            click.echo()
        _status(services, sequence)


def _status(services, sequence: sequences.DripSequence) -> None:
    with services.database.read() as session:
        report = dashboard.sequence_status(
            session, sequence, now=services.clock(), window=timedelta(hours=24)
        )
    click.echo(
        f"sequence {sequence.name!r}: {len(sequence.steps)} steps, sent at "
        f"{sequence.send_hour}:00 in each reader's time zone"
    )
    click.echo(f"{'step':<24}{'delay':>9}{'waiting':>9}{'due 24h':>9}{'sent':>9}")
    for row in report.steps:
        flags = (
            " (skipped: no " + ", ".join(sequence.missing_links(row.step)) + ")"
            if sequence.missing_links(row.step)
            else ""
        )
        click.echo(
            f"{row.step.id:<24}{row.step.delay!s:>9}{row.waiting:>9}{row.due_soon:>9}{row.sent:>9}{flags}"
        )
    if report.elsewhere:
        click.echo(f"{report.elsewhere} waiting to be planned (new, or their step left the file)")
    states = ", ".join(f"{state} {count}" for state, count in sorted(report.by_status.items()))
    click.echo(f"subscribers: {states or 'none yet'}")
    click.echo(f"due in the next 24 hours: {report.due_soon}")


def _subscriber_id(address: str) -> int:
    from ..signup_input import email_key

    with _services().database.read() as session:
        subscriber_id = session.scalar(
            select(Subscriber.id).where(Subscriber.email_key == email_key(address.strip()))
        )
    if subscriber_id is None:
        raise click.ClickException(f"no subscriber {address}")
    return subscriber_id


def _change_sequence(address: str, name: str | None, change, *, done: str, not_done: str) -> None:
    services = _services()
    sequence = _sequence(name)
    subscriber_id = _subscriber_id(address)
    with services.database.begin() as session:
        changed = change(session, subscriber_id, sequence=sequence.name, now=services.clock())
    click.echo(done if changed else not_done)


@sequence_group.command("pause")
@click.argument("address")
@SEQUENCE_OPTION
def sequence_pause(address: str, name: str | None) -> None:
    """Hold a subscriber's sequence (a step queued but not sent is taken back)."""
    _change_sequence(
        address,
        name,
        sequences.pause,
        done="paused",
        not_done="not paused: the sequence is not running for them",
    )


@sequence_group.command("resume")
@click.argument("address")
@SEQUENCE_OPTION
def sequence_resume(address: str, name: str | None) -> None:
    """Carry on with the next step, timed from now."""
    _change_sequence(
        address,
        name,
        sequences.resume,
        done="resumed",
        not_done="not resumed: the sequence is not paused for them",
    )
