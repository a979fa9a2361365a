"""The admin blueprint and its guard: sign-in before any view, the CSRF token of any
form, and headers that keep personal data out of caches."""

from __future__ import annotations

import logging
from datetime import timedelta

from flask import Blueprint, Response, abort, g, redirect, request, session, url_for
from flask_wtf.csrf import CSRFProtect

from ... import admins, importer
from .. import CONTENT_SECURITY_POLICY, now, services

logger = logging.getLogger("service.web.admin")

bp = Blueprint("admin", __name__, url_prefix="/admin")
csrf = CSRFProtect()

# The public policy, plus previews in frames and the editor's autosave (fetch) to here.
ADMIN_CONTENT_SECURITY_POLICY = CONTENT_SECURITY_POLICY + "; frame-src 'self'; connect-src 'self'"
# Reachable without an admin session.
OPEN_ENDPOINTS = frozenset({"admin.login", "admin.setup"})
EMAIL_FRAME_POLICY = "; ".join(
    [
        "default-src 'none'",
        "style-src 'unsafe-inline'",  # emails carry their styles inline
        "img-src https: data:",
        "form-action 'none'",
        "base-uri 'none'",
        "frame-ancestors 'self'",
        "sandbox",  # no script and its own origin, even if opened outside the frame
    ]
)


def idle_limit() -> timedelta:
    return timedelta(hours=services().settings.ADMIN_SESSION_HOURS)


@bp.before_request
def _require_admin():
    """Sign-in first, then the CSRF token of any form sent."""
    token = session.get("admin_session")
    with services().database.read() as db:
        found = admins.for_session(db, token, idle=idle_limit(), now=now())
        if found is not None:
            db.expunge(found.admin)
    if found is not None and found.stale:
        with services().database.begin() as db:
            admins.touch_session(db, token, now=now())
    g.admin = admin = found.admin if found is not None else None
    if admin is None and request.endpoint not in OPEN_ENDPOINTS:
        session.pop("admin_session", None)
        if request.method == "GET":
            return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))
        abort(401)
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        if request.endpoint == "admin.import_upload":
            # The one place a large body is welcome; read before the CSRF check reads it.
            request.max_content_length = importer.MAX_IMPORT_BYTES + 64 * 1024
        csrf.protect()
    return None


@bp.after_request
def _never_cache(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    # Flask-WTF checks that a form posted over https comes from this site by its Referer;
    # the public pages send none at all (their links carry tokens), these send it home only.
    response.headers["Referrer-Policy"] = "same-origin"
    # Email previews carry their own, stricter policy and a sandbox.
    response.headers.setdefault("Content-Security-Policy", ADMIN_CONTENT_SECURITY_POLICY)
    return response
