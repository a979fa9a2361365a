"""Newsletters: drafts, previews, test copies, sending, pausing and cancelling."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Response, abort, flash, g, redirect, render_template, request, url_for
from sqlalchemy import select

from ... import (
    archive,
    audience,
    broadcast_expansion,
    broadcasts,
    dashboard,
    kinds,
    newsletter_audience,
    tags,
)
from ...feedback import rates
from ...models import Broadcast, BroadcastStatus
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


def _greeting_chosen() -> bool:
    """The form's greeting checkbox. The form sends an empty `greeting` before the box, so a
    form without the field at all (a script's, an older tab's) keeps the greeting."""
    sent = request.form.getlist("greeting")
    return "on" in sent if sent else True


def _state(broadcast: Broadcast) -> str:
    """Where the newsletter stands, in a sentence (the progress section and its JSON)."""
    status = broadcast.status
    zone = owner_zone().key
    if status is BroadcastStatus.DRAFT:
        return "A draft: nothing has gone out."
    if status is BroadcastStatus.SCHEDULED and broadcast.scheduled_at > now():
        return f"Scheduled for {local(broadcast.scheduled_at)} {zone}."
    if status is BroadcastStatus.SCHEDULED:
        return "Sending now: the scheduler counts the readers and starts at its next tick."
    if status is BroadcastStatus.SENDING:
        return "Sending now."
    if status is BroadcastStatus.PAUSED:
        return "Paused: nothing more goes out until you resume it."
    if status is BroadcastStatus.SENT:
        return f"Sent; finished {local(broadcast.finished_at)} {zone}."
    return f"Cancelled {local(broadcast.finished_at)} {zone}."


def _progress_of(db, broadcast: Broadcast) -> dict:
    """The figures the progress section shows, as its JSON carries them."""
    counts = broadcasts.progress(db, broadcast.id)
    # Known once the scheduler has queued a row per reader (every chunk of them).
    counted = not broadcast_expansion.expanding(broadcast)
    if counted:
        shown = str(broadcast.recipients)
    else:
        shown = "counting…" if broadcast.scheduled_at <= now() else "counted when it starts"
    return {
        "status": broadcast.status.value,
        "state": _state(broadcast),
        "recipients": broadcast.recipients if counted else None,
        "recipients_shown": shown,
        "sent": counts["sent"],
        "failed": counts["failed"],
        "remaining": counts["queued"] + counts["sending"],
        "cancelled": counts["cancelled"],
        "done": broadcast.status in (BroadcastStatus.SENT, BroadcastStatus.CANCELLED),
    }


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
    error, errors = None, {}
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
                    greeting=_greeting_chosen(),
                    now=now(),
                )
                saved_id = saved.id
        except broadcasts.BroadcastError as exc:
            error = str(exc)
            if request.headers.get("X-Requested-With") == "fetch":
                return {"error": error}, 422
            if exc.field:  # shown beside its field, not above the form
                errors, error = {exc.field: error}, None
        else:
            if request.headers.get("X-Requested-With") == "fetch":
                return {"saved": saved_id}
            return redirect(url_for("admin.newsletter", broadcast_id=saved_id), 303)
    with services().database.read() as db:
        broadcast = _broadcast_or_404(db, broadcast_id) if broadcast_id else None
        recipients = progress = feedback = None
        links = []
        # A draft shows whom it would go to; a newsletter that left the drafts, how its
        # sending went (counting a million readers on every load would be wasted).
        if broadcast is not None and broadcast.status is BroadcastStatus.DRAFT:
            recipients = newsletter_audience.size(
                db, broadcast, sequence=services().default_sequence.name, now=now()
            )
        elif broadcast is not None:
            progress = _progress_of(db, broadcast)
            links = dashboard.link_clicks(db, broadcast_id=broadcast.id)
            feedback = rates.per_newsletter(db, [broadcast.id])[broadcast.id]
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
        values=form if error or errors else None,
        error=error,
        errors=errors,
        recipients=recipients,
        progress=progress,
        links=links,
        feedback=feedback,
        sources=sources,
        sequence_choices=newsletter_audience.SEQUENCE_CHOICES,
        tags_in_use=tags_in_use,
        tags_match_choices=newsletter_audience.TAGS_MATCH,
        sample=sample,
    ), 422 if error or errors else 200


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


@bp.route("/newsletters/<int:broadcast_id>/confirm-send", methods=["GET", "POST"])
def newsletter_send_confirm(broadcast_id: int):
    """Ask before sending: to how many readers, which ones, and when. Sends nothing."""
    at = _send_time()
    with services().database.read() as db:
        broadcast = _broadcast_or_404(db, broadcast_id)
        if broadcast.status is not BroadcastStatus.DRAFT:
            flash("This newsletter was already sent or scheduled; nothing changed.")
            return redirect(url_for("admin.newsletter", broadcast_id=broadcast_id), 303)
        count = newsletter_audience.size(
            db, broadcast, sequence=services().default_sequence.name, now=max(at, now())
        )
        narrowing = newsletter_audience.in_words(broadcast)
        db.expunge_all()
    readers = f"{count} confirmed reader{'' if count == 1 else 's'}"
    later = at > now()
    when = f"on {local(at)} {owner_zone().key}" if later else "now"
    return render_template(
        "admin/newsletter_send.html",
        broadcast=broadcast,
        question=f"Send to {readers} {when}?",
        narrowing=narrowing,
        button=f"Send to {readers} {'then' if later else 'now'}",
        fields={"when": "later", "send_at": request.form.get("send_at", "")}
        if later
        else {"when": "now"},
    )


@bp.post("/newsletters/<int:broadcast_id>/send")
def newsletter_send(broadcast_id: int):
    """Send now or at a set time (the confirmation page's button); a second click finds it
    already on its way."""
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


@bp.get("/newsletters/<int:broadcast_id>/progress.json")
def newsletter_progress(broadcast_id: int):
    """How far the newsletter has gone, for the progress section's refresh (admin.js)."""
    with services().database.read() as db:
        return _progress_of(db, _broadcast_or_404(db, broadcast_id))


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


@bp.get("/newsletters/<int:broadcast_id>/cancel/confirm")
def newsletter_cancel_confirm(broadcast_id: int):
    """Ask before cancelling: how many readers will not get it."""
    back = url_for("admin.newsletter", broadcast_id=broadcast_id)
    with services().database.read() as db:
        broadcast = _broadcast_or_404(db, broadcast_id)
        if broadcast.status is BroadcastStatus.SCHEDULED:
            waiting = newsletter_audience.size(
                db, broadcast, sequence=services().default_sequence.name, now=now()
            )
            had_it = 0
        elif broadcast.status in (BroadcastStatus.SENDING, BroadcastStatus.PAUSED):
            counts = broadcasts.progress(db, broadcast_id)
            waiting, had_it = counts["queued"], counts["sent"]
        else:
            flash("Nothing to cancel in its present state.")
            return redirect(back, 303)
        subject = broadcast.subject
    consequences = [
        f"{waiting} confirmed reader{' is' if waiting == 1 else 's are'} still to get "
        f"“{subject}”; {'it' if waiting == 1 else 'they'} will not get it.",
        "It cannot be resumed or sent again afterwards.",
    ]
    if had_it:
        consequences.insert(1, f"The {had_it} who have it already keep it.")
    return render_template(
        "admin/confirm_action.html",
        title=f"Cancel the rest of “{subject}”?",
        consequences=consequences,
        action=url_for("admin.newsletter_action", broadcast_id=broadcast_id, action="cancel"),
        button=f"Cancel it for {waiting} reader{'' if waiting == 1 else 's'}",
        back=back,
        back_label="Back to the newsletter",
    )


@bp.get("/newsletters/<int:broadcast_id>/delete/confirm")
def newsletter_delete_confirm(broadcast_id: int):
    """Ask before deleting a draft."""
    back = url_for("admin.newsletter", broadcast_id=broadcast_id)
    with services().database.read() as db:
        broadcast = _broadcast_or_404(db, broadcast_id)
        if broadcast.status is not BroadcastStatus.DRAFT:
            flash("Only a draft can be deleted; this newsletter has left the drafts.")
            return redirect(back, 303)
        subject = broadcast.subject
    return render_template(
        "admin/confirm_action.html",
        title=f"Delete the draft “{subject}”?",
        consequences=[
            "Its subject, its text and its choice of readers are deleted for good.",
            "No reader has been sent it. Test copies already in your mailbox stay there;"
            " one still waiting to go is not sent.",
        ],
        action=url_for("admin.newsletter_delete", broadcast_id=broadcast_id),
        button="Delete the draft",
        back=back,
        back_label="Back to the draft",
    )


@bp.post("/newsletters/<int:broadcast_id>/delete")
def newsletter_delete(broadcast_id: int):
    """Delete a draft; a newsletter that was sent or is on its way is refused (409)."""
    with services().database.begin() as db:
        subject = _broadcast_or_404(db, broadcast_id).subject
        deleted = broadcasts.delete_draft(db, broadcast_id)
    if not deleted:
        abort(409, description="Only a draft can be deleted; this newsletter has left the drafts.")
    logger.info("newsletter draft %d deleted by %s", broadcast_id, g.admin.email)
    flash(f"Draft “{subject}” deleted.")
    return redirect(url_for("admin.newsletters"), 303)


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
