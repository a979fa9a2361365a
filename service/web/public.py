"""Pages a reader sees: the landing page and form, confirm, download, unsubscribe, health."""

from __future__ import annotations

import logging
import mimetypes
from datetime import timedelta

from flask import Blueprint, abort, redirect, render_template, request, send_file, url_for
from sqlalchemy.exc import SQLAlchemyError

from .. import funnels, guide, health, journal, signup_input, subscriptions, tracking
from ..magnets import DEFAULT_MAGNET, LeadMagnet
from ..tokens import ExpiredToken, Purpose, TokenData
from . import MAX_ID, ExpiredLink, now, services

logger = logging.getLogger(__name__)

bp = Blueprint("public", __name__)

HONEYPOT_FIELD = "website"


def read_token(purpose: Purpose, token: str) -> TokenData:
    """The token's data; expired links raise ExpiredLink, forged ones InvalidToken."""
    settings = services().settings
    max_age = {
        Purpose.CONFIRM: timedelta(days=settings.CONFIRM_TOKEN_MAX_AGE_DAYS),
        Purpose.DOWNLOAD: timedelta(days=settings.DOWNLOAD_TOKEN_MAX_AGE_DAYS),
        Purpose.UNSUBSCRIBE: None,  # an unsubscribe link must work for ever
        Purpose.PREFERENCES: None,  # and so must the preferences link beside it
    }[purpose]
    try:
        return services().tokens.read(purpose, token, now=now(), max_age=max_age)
    except ExpiredToken:
        raise ExpiredLink(purpose, token) from None


def origin() -> journal.Origin:
    return journal.Origin(ip=request.remote_addr, user_agent=request.user_agent.string or None)


def consent_text(magnet: LeadMagnet | None = None) -> str:
    """The consent wording shown on a magnet's form (or the confirm page), exactly as
    recorded: the magnet's own, or the shipped sentence."""
    if magnet is not None and magnet.consent:
        return magnet.consent
    return render_template("consent.txt").strip()


def landing_page(magnet: LeadMagnet, *, errors=None, values=None):
    """A magnet's landing page with its signup form."""
    return render_template(
        "landing.html",
        magnet=magnet,
        errors=errors or {},
        values=values or {},
        consent_text=consent_text(magnet),
    )


def magnet_named(magnet_id: str | None) -> LeadMagnet | None:
    """The magnet a signup asks for: the default when it names none, None when it names
    one that does not exist."""
    if not magnet_id:
        return services().default_magnet
    return services().magnets.get(magnet_id) if isinstance(magnet_id, str) else None


UNKNOWN_MAGNET = "There is no free resource with that name here."


@bp.get("/")
def landing():
    """The default magnet's landing page with the signup form."""
    return landing_page(services().default_magnet)


@bp.get("/free/<magnet_id>")
def magnet_landing(magnet_id: str):
    """A magnet's own landing page."""
    magnet = services().magnets.get(magnet_id)
    if magnet is None:
        abort(404)
    return landing_page(magnet)


@bp.post("/subscribe")
def subscribe():
    """Sign up from the hosted or an embedded form; every outcome looks the same."""
    if request.form.get(HONEYPOT_FIELD):
        logger.info("honeypot filled from %s; signup ignored", request.remote_addr)
        return redirect(url_for(".check_inbox"), 303)
    settings = services().settings
    magnet = magnet_named(request.form.get("magnet"))
    try:
        signup = signup_input.parse_signup(
            request.form, default_time_zone=settings.DEFAULT_TIME_ZONE, default_source="form"
        )
        if magnet is None:
            raise signup_input.InvalidSignup({"magnet": UNKNOWN_MAGNET})
    except signup_input.InvalidSignup as exc:
        return landing_page(
            magnet or services().default_magnet, errors=exc.errors, values=request.form
        ), 422
    record_signup(signup, magnet)
    return redirect(url_for(".check_inbox"), 303)


def record_signup(signup: signup_input.Signup, magnet: LeadMagnet) -> None:
    """Sign up in one unit of work; the form and the JSON API answer the same whatever
    happened, so the outcome is not returned."""
    with services().database.begin() as session:
        subscriptions.subscribe(
            session,
            signup,
            origin(),
            consent_text=consent_text(magnet),
            cooldown=services().resend_cooldown,
            now=now(),
            magnet=magnet,
            funnels=services().funnels,
        )


@bp.get("/check-your-inbox")
def check_inbox():
    """Tell the reader to look for the confirmation email."""
    return render_template("check_inbox.html")


@bp.get("/confirm/<token>")
def confirm_page(token: str):
    """One button to confirm; GET changes nothing, since link scanners fetch GETs."""
    read_token(Purpose.CONFIRM, token)
    return render_template("confirm.html", token=token, consent_text=consent_text())


@bp.post("/confirm/<token>")
def confirm(token: str):
    """Confirm the subscription and show the downloads straight away."""
    data = read_token(Purpose.CONFIRM, token)
    with services().database.begin() as session:
        subscriber, _ = subscriptions.confirm(
            session,
            data.subscriber_id,
            origin(),
            token_issued_at=data.issued_at,
            consent_text=consent_text(),
            funnels=services().funnels,
            now=now(),
        )
    download = services().tokens.make(Purpose.DOWNLOAD, subscriber.id, now=now())
    return redirect(url_for(".confirmed", token=download), 303)


@bp.get("/confirmed/<token>")
def confirmed(token: str):
    """The 'you're in' page with a download button for each magnet the reader asked for."""
    data = read_token(Purpose.DOWNLOAD, token)
    with services().database.read() as session:
        subscriber = subscriptions.get_subscriber(session, data.subscriber_id)
        asked = funnels.requested(session, subscriber.id)
    magnets = [m for m in services().magnets.values() if m.id in asked] or [
        services().default_magnet
    ]
    downloads = [
        (magnet, services().tokens.make(Purpose.DOWNLOAD, subscriber.id, now=now(), scope=scope))
        for magnet in magnets
        for scope in ["" if magnet.id == DEFAULT_MAGNET else magnet.id]
    ]
    return render_template("confirmed.html", downloads=downloads, first_name=subscriber.first_name)


@bp.post("/resend/<any(confirm, download):purpose>/<token>")
def resend(purpose: str, token: str):
    """Email a fresh link in place of an expired one (at most once per cooldown)."""
    kind = Purpose(purpose)
    data = services().tokens.read(kind, token, now=now(), max_age=None)
    with services().database.begin() as session:
        if kind is Purpose.DOWNLOAD:
            # The link's own magnet (one whose folder is gone: the default's).
            subscriptions.request_guide_link(
                session,
                data.subscriber_id,
                cooldown=services().resend_cooldown,
                now=now(),
                magnet=magnet_named(data.scope),
            )
        else:
            subscriptions.request_confirmation(
                session, data.subscriber_id, cooldown=services().resend_cooldown, now=now()
            )
    return redirect(url_for(".check_inbox"), 303)


@bp.get("/download/<token>")
def download(token: str):
    """Serve the magnet the link is for (or send the reader to its page), counting it."""
    data = read_token(Purpose.DOWNLOAD, token)
    magnet = services().magnets.get(data.scope or DEFAULT_MAGNET)
    if magnet is None:
        logger.warning("a download link names magnet %r, which no longer exists", data.scope)
        abort(404)
    path = magnet.resource
    if magnet.url is None and path is not None:
        if magnet.built and magnet.source is not None:
            guide.ensure_built(
                path,
                site_name=services().settings.SITE_NAME,
                source=magnet.source,
                title=magnet.title,
            )
        if not path.is_file():
            logger.error("magnet %s is missing: %s is not a file", magnet.id, path)
            return render_template("guide_unavailable.html"), 503
    with services().database.begin() as session:
        subscriptions.record_download(session, data.subscriber_id, magnet=magnet.id, now=now())
    if magnet.url is not None:
        return redirect(magnet.url, 303)
    return send_file(
        path,
        mimetype=mimetypes.guess_type(magnet.download_name)[0] or "application/octet-stream",
        as_attachment=True,
        download_name=magnet.download_name,
        max_age=0,
    )


@bp.get("/unsubscribe/<token>")
def unsubscribe_page(token: str):
    """Ask before unsubscribing: GET changes nothing."""
    read_token(Purpose.UNSUBSCRIBE, token)
    return render_template("unsubscribe.html", token=token)


@bp.post("/unsubscribe/<token>")
def unsubscribe(token: str):
    """Unsubscribe: from our page, or RFC 8058 one-click from the mailbox provider.

    No cookie or CSRF token is needed: the signed token is the proof, and a mail provider
    posting List-Unsubscribe=One-Click has neither.
    """
    data = read_token(Purpose.UNSUBSCRIBE, token)
    one_click = request.form.get("List-Unsubscribe") == "One-Click"
    with services().database.begin() as session:
        subscriptions.unsubscribe(
            session, data.subscriber_id, via="one-click" if one_click else "page", now=now()
        )
    if one_click:
        return "Unsubscribed.\n", 200, {"Content-Type": "text/plain; charset=utf-8"}
    return render_template("unsubscribed.html")


@bp.get("/l/<int:link_id>/<token>")
def follow_link(link_id: int, token: str):
    """Count a click on a link in an email, then go where the link points. Only targets
    stored by us are reachable; a token that does not check out still gets the reader
    there, uncounted."""
    with services().database.begin() as session:
        url = tracking.target(session, link_id)
        if url is None:
            abort(404)
        outbox_id, _, signature = token.partition(".")
        counted = (
            outbox_id.isascii()
            and outbox_id.isdecimal()
            and len(outbox_id) <= len(str(MAX_ID))
            and int(outbox_id) <= MAX_ID
            and services().tracker.valid(int(outbox_id), signature)
        )
        tracking.record_click(session, link_id, int(outbox_id) if counted else None, now=now())
    response = redirect(url, 302)
    response.headers["Cache-Control"] = "no-store"  # every click reaches us
    return response


@bp.get("/healthz")
def healthz():
    """Whether the database answers, and when the scheduler last ticked."""
    settings = services().settings
    try:
        with services().database.read() as session:
            last = health.last_tick(session)
    except SQLAlchemyError as exc:
        logger.error("health check: database unavailable: %s", exc)
        return {"status": "unavailable", "database": "unavailable"}, 503
    age = None if last is None else max(0.0, (now() - last).total_seconds())
    return {
        "status": "ok",
        "database": "ok",
        "scheduler": {
            "last_tick_at": last.isoformat() if last else None,
            "seconds_since_tick": None if age is None else round(age, 1),
            "late": age is None or age > settings.SCHEDULER_LATE_SECONDS,
        },
    }
