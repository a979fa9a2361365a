"""Newsletters: drafts, previews, test copies, sending, pausing and cancelling."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Response, abort, flash, g, redirect, render_template, request, url_for
from sqlalchemy import select

from ... import archive, audience, broadcasts, dashboard, kinds, newsletter_audience, tags
from ...feedback import rates
from ...models import Broadcast
from .. import now, services
from .blueprint import EMAIL_FRAME_POLICY, bp, logger
from .clock import local, owner_zone


def _sample_email(broadcast_id: int, to: str):
    """The newsletter as a reader called Alex would get it (composed like the real ones)."""
    return services().composer.sample(
        kinds.NEWSLETTER_TEST,
        kinds.rules_of(kinds.NEWSLETTER_TEST).template,
        to=to,
        first_name="Alex",
        now=now(),
        context={"broadcast_id": broadcast_id, "test": True},
    )


def _broadcast_or_404(db, broadcast_id: int) -> Broadcast:
    broadcast = db.get(Broadcast, broadcast_id)
    if broadcast is None:
        abort(404)
    return broadcast


@bp.get("/newsletters")
def newsletters():
    """Every newsletter, newest first, with how far each has gone."""
    with services().database.read() as db:
        rows = db.scalars(select(Broadcast).order_by(Broadcast.id.desc()).limit(200)).all()
        progress = broadcasts.progress_of(db, [row.id for row in rows])
        db.expunge_all()
    return render_template("admin/newsletters.html", rows=rows, progress=progress)


@bp.route("/newsletters/new", methods=["GET", "POST"], defaults={"broadcast_id": None})
@bp.route("/newsletters/<int:broadcast_id>", methods=["GET", "POST"])
def newsletter(broadcast_id: int | None):
    """Write or change a draft; see it as readers will; send a test, send or schedule."""
    error = None
    form = request.form
    if request.method == "POST":
        try:
            with services().database.begin() as db:
                saved = broadcasts.save_draft(
                    db,
                    broadcast_id,
                    subject=form.get("subject", ""),
                    body=form.get("body", ""),
                    audience_source=form.get("audience_source", ""),
                    audience_sequence=form.get("audience_sequence", ""),
                    include_tags=form.getlist("include_tags"),
                    exclude_tags=form.getlist("exclude_tags"),
                    tags_match=form.get("tags_match", "any"),
                    now=now(),
                )
                saved_id = saved.id
        except broadcasts.BroadcastError as exc:
            error = str(exc)
            if request.headers.get("X-Requested-With") == "fetch":
                return {"error": error}, 422
        else:
            if request.headers.get("X-Requested-With") == "fetch":
                return {"saved": saved_id}
            return redirect(url_for("admin.newsletter", broadcast_id=saved_id), 303)
    with services().database.read() as db:
        broadcast = _broadcast_or_404(db, broadcast_id) if broadcast_id else None
        recipients = None
        if broadcast is not None:
            recipients = newsletter_audience.size(
                db, broadcast, sequence=services().default_sequence.name, now=now()
            )
            progress = broadcasts.progress(db, broadcast.id)
            links = dashboard.link_clicks(db, broadcast_id=broadcast.id)
            feedback = rates.per_newsletter(db, [broadcast.id])[broadcast.id]
        else:
            progress = feedback = None
            links = []
        sources = audience.sources(db)
        tags_in_use = tags.in_use(db)
        if broadcast is not None:
            # A tag the draft holds is offered even when no reader carries it any more, so
            # that saving the draft keeps it (see newsletter_audience.checked_tags).
            carried = {tag for tag, _ in tags_in_use}
            held = [*broadcast.include_tags, *broadcast.exclude_tags]
            tags_in_use += [(tag, 0) for tag in dict.fromkeys(held) if tag not in carried]
        db.expunge_all()
    sample = _sample_email(broadcast.id, g.admin.email) if broadcast else None
    return render_template(
        "admin/newsletter.html",
        broadcast=broadcast,
        values=form if error else None,
        error=error,
        recipients=recipients,
        progress=progress,
        links=links,
        feedback=feedback,
        sources=sources,
        sequence_choices=newsletter_audience.SEQUENCE_CHOICES,
        tags_in_use=tags_in_use,
        tags_match_choices=newsletter_audience.TAGS_MATCH,
        sample=sample,
    ), 422 if error else 200


@bp.get("/newsletters/<int:broadcast_id>/preview.html")
def newsletter_preview(broadcast_id: int):
    """The newsletter's HTML as readers get it, for the preview frame."""
    with services().database.read() as db:
        _broadcast_or_404(db, broadcast_id)
    response = Response(_sample_email(broadcast_id, g.admin.email).html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = EMAIL_FRAME_POLICY
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


@bp.get("/newsletters/<int:broadcast_id>/preview.txt")
def newsletter_preview_text(broadcast_id: int):
    """The plain-text part, for the preview."""
    with services().database.read() as db:
        _broadcast_or_404(db, broadcast_id)
    return Response(_sample_email(broadcast_id, g.admin.email).text, mimetype="text/plain")


@bp.post("/newsletters/<int:broadcast_id>/test")
def newsletter_test(broadcast_id: int):
    """Queue a copy to the signed-in owner; the scheduler sends it within a tick."""
    with services().database.begin() as db:
        broadcast = _broadcast_or_404(db, broadcast_id)
        broadcasts.queue_test(db, broadcast, to=g.admin.email, now=now())
    flash(f"A test copy is on its way to {g.admin.email}.")
    return redirect(url_for("admin.newsletter", broadcast_id=broadcast_id), 303)


def _send_time() -> datetime:
    """When to send: now, or the form's date and time in the owner's time zone."""
    if request.form.get("when") != "later":
        return now()
    raw = request.form.get("send_at", "")
    try:
        wall = datetime.fromisoformat(raw)
        if wall.tzinfo is None:
            wall = wall.replace(tzinfo=owner_zone())
        at = wall.astimezone(UTC)
    except (ValueError, OverflowError):  # not a date; or 9999-12-31, past what UTC can hold
        abort(400, description="Pick a date and time to send it at.")
    if at - now() > broadcasts.LATEST_SEND:
        abort(400, description="Pick a time within a year from now.")
    return at


@bp.post("/newsletters/<int:broadcast_id>/send")
def newsletter_send(broadcast_id: int):
    """Send now or at a set time; a second click finds it already on its way."""
    at = _send_time()
    with services().database.begin() as db:
        _broadcast_or_404(db, broadcast_id)
        scheduled = broadcasts.schedule(db, broadcast_id, at=at, now=now())
    if not scheduled:
        flash("This newsletter was already sent or scheduled; nothing changed.")
    elif at <= now():
        flash("Sending: the scheduler queues it for every recipient at its next tick.")
    else:
        flash(f"Scheduled for {local(at)} {owner_zone().key}.")
    return redirect(url_for("admin.newsletter", broadcast_id=broadcast_id), 303)


@bp.post("/newsletters/<int:broadcast_id>/<any(pause, resume, cancel):action>")
def newsletter_action(broadcast_id: int, action: str):
    """Pause, resume or cancel a newsletter being sent."""
    change = {"pause": broadcasts.pause, "resume": broadcasts.resume, "cancel": broadcasts.cancel}
    with services().database.begin() as db:
        _broadcast_or_404(db, broadcast_id)
        done = change[action](db, broadcast_id, now=now())
    past = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}[action]
    flash(f"Newsletter {past}." if done else f"Nothing to {action} in its present state.")
    return redirect(url_for("admin.newsletter", broadcast_id=broadcast_id), 303)


@bp.post("/newsletters/<int:broadcast_id>/archive")
def newsletter_archive(broadcast_id: int):
    """Show the newsletter in the public archive (once sent), or hide it."""
    public = request.form.get("public") == "on"
    with services().database.begin() as db:
        _broadcast_or_404(db, broadcast_id)
        broadcast = archive.publish(db, broadcast_id, public, now=now())
        slug, listed = broadcast.slug, broadcast.status in archive.LISTED_STATUSES
    logger.info(
        "newsletter %d %s the public archive by %s",
        broadcast_id,
        "shown in" if public else "hidden from",
        g.admin.email,
    )
    if not public:
        flash("Hidden from the public archive.")
    elif listed:
        base = services().settings.BASE_URL.rstrip("/")
        flash(f"In the public archive at {base}/archive/{slug}.")
    else:
        flash("It will be in the public archive once it has been sent.")
    return redirect(url_for("admin.newsletter", broadcast_id=broadcast_id), 303)
