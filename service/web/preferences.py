"""The reader's preference centre at /preferences/<token>, linked from every email's
footer: no sign-in, the signed token (purpose `preferences`, never expiring, like an
unsubscribe link) names the reader.

GET shows the page and changes nothing. Every POST carries the CSRF token of the page
the reader loaded (the session cookie set by that GET), so another site cannot post a
change for a reader whose link it has not got; each POST makes one change and redirects
back with a line saying what was done.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

from flask import Blueprint, Response, abort, flash, redirect, render_template, request, url_for
from flask_wtf.csrf import ValidationError, validate_csrf
from sqlalchemy.orm import Session

from .. import preferences, signup_input
from ..models import Subscriber
from ..sequences import zone_of
from ..tokens import Purpose
from . import now, services

bp = Blueprint("preferences", __name__, url_prefix="/preferences")

UTC_ZONE = ZoneInfo("UTC")


def reader(token: str) -> int:
    """The subscriber the token names; forged or misused tokens raise InvalidToken."""
    return services().tokens.read(Purpose.PREFERENCES, token, now=now(), max_age=None).subscriber_id


@bp.before_request
def _check_form():
    """A change needs the CSRF token of the page the reader loaded."""
    if request.method == "POST":
        # validate_csrf, not CSRFProtect.protect: on https that also wants a same-origin
        # Referer, and the public pages send none (their URLs carry tokens).
        try:
            validate_csrf(request.form.get("csrf_token"))
        except ValidationError:
            abort(400, "This page was open too long or its form is incomplete; please reload it.")


@bp.after_request
def _never_cache(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"  # the page holds the reader's data
    return response


def series_titles() -> dict[str, str]:
    """What readers call each sequence: the title of the magnet that starts it."""
    return {m.sequence: m.title for m in services().magnets.values() if m.sequence}


def local_date(moment: datetime, zone_name: str) -> str:
    """`moment` as a day in the reader's zone: '14 December 2026'."""
    local = moment.astimezone(zone_of(zone_name, UTC_ZONE))
    return f"{local.day} {local:%B %Y}"


def paused_until(subscriber: Subscriber) -> str:
    """The day the reader's pause ends, in their zone, or ''."""
    return (
        local_date(subscriber.paused_until, subscriber.time_zone) if subscriber.paused_until else ""
    )


def render_page(token: str, errors: dict[str, str] | None = None, status: int = 200):
    """The page, with the form's errors if a change was refused."""
    with services().database.read() as session:
        choices = preferences.preferences_of(session, reader(token), now=now())
        session.expunge_all()
    subscriber = choices.subscriber
    titles = series_titles()
    return render_template(
        "preferences.html",
        token=token,
        choices=choices,
        subscriber=subscriber,
        series=[(e, titles.get(e.sequence, e.sequence)) for e in choices.enrollments],
        paused_until=paused_until(subscriber) if choices.paused_until else None,
        pause_weeks=preferences.PAUSE_WEEKS,
        zones=signup_input.sorted_time_zones(),
        errors=errors or {},
        values=request.form if errors else {},
    ), status


def change(
    token: str,
    make_change: Callable[[Session, int], Subscriber],
    done: Callable[[Subscriber], str],
):
    """Make one change for the token's reader, then show the page again saying so."""
    subscriber_id = reader(token)
    try:
        with services().database.begin() as session:
            message = done(make_change(session, subscriber_id))
    except preferences.PreferenceError as exc:
        return render_page(token, exc.errors, 422)
    flash(message)
    return redirect(url_for(".page", token=token), 303)


@bp.get("/<token>")
def page(token: str):
    """The reader's choices; GET changes nothing."""
    return render_page(token)


@bp.post("/<token>/pause")
def pause(token: str):
    """Pause all email for 2 or 4 weeks."""
    weeks = request.form.get("weeks", "")
    weeks_number = int(weeks) if weeks.isascii() and weeks.isdecimal() and len(weeks) < 3 else 0
    return change(
        token,
        lambda s, i: preferences.pause_all(s, i, weeks_number, now=now()),
        lambda subscriber: f"Done: your email is paused until {paused_until(subscriber)}.",
    )


@bp.post("/<token>/resume")
def resume(token: str):
    """End the pause now."""
    return change(
        token,
        lambda s, i: preferences.resume_now(s, i, now=now()),
        lambda _: "Done: your email is no longer paused.",
    )


@bp.post("/<token>/leave")
def leave(token: str):
    """Leave one series of emails."""
    sequence = request.form.get("sequence", "")
    title = series_titles().get(sequence, sequence)
    return change(
        token,
        lambda s, i: preferences.leave_sequence(s, i, sequence, now=now()),
        lambda _: f"Done: you will get no more emails from the series {title}.",
    )


@bp.post("/<token>/newsletters")
def newsletters(token: str):
    """Newsletters on or off."""
    choice = request.form.get("wanted")
    if choice not in ("yes", "no"):
        return render_page(token, {"wanted": "Choose whether you want our newsletters."}, 422)
    wanted = choice == "yes"
    return change(
        token,
        lambda s, i: preferences.set_newsletters(s, i, wanted, now=now()),
        lambda _: (
            "Done: you will get our newsletters."
            if wanted
            else "Done: no more newsletters; any series you are in carries on."
        ),
    )


@bp.post("/<token>/details")
def details(token: str):
    """A new first name and time zone."""
    first_name = request.form.get("first_name", "")
    time_zone = request.form.get("time_zone", "")
    return change(
        token,
        lambda s, i: preferences.change_details(s, i, first_name, time_zone, now=now()),
        lambda _: "Done: your details are saved.",
    )


@bp.post("/<token>/unsubscribe")
def unsubscribe(token: str):
    """Unsubscribe from everything."""
    subscriber_id = reader(token)
    with services().database.begin() as session:
        preferences.unsubscribe_all(session, subscriber_id, now=now())
    return render_template("unsubscribed.html")
