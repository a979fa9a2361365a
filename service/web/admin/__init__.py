"""The owner's desk at /admin: sign-in, the dashboard, subscribers and their data,
imports and newsletters; one blueprint, a module for each part.

Every view is behind sign-in (`blueprint._require_admin`, checked before any view runs)
and every form carries a CSRF token (Flask-WTF, checked before any POST). Pages hold
personal data, so nothing here may be cached.
"""

from __future__ import annotations

from datetime import timedelta

from ...config import DEV_MAIL_SCHEMES
from .. import services_of
from ..attempts import AttemptBudget
from ..devices import DeviceCookies

# Importing the views registers them on the blueprint.
from . import auth, clock, newsletters, outbox, overview, subscribers, uploads
from .blueprint import OPEN_ENDPOINTS, bp, csrf

__all__ = [
    "OPEN_ENDPOINTS",
    "auth",
    "bp",
    "clock",
    "init_app",
    "newsletters",
    "outbox",
    "overview",
    "subscribers",
    "uploads",
]


def init_app(app, limiter) -> None:
    """CSRF protection for the admin forms, and the sign-in rate limit."""
    app.config.setdefault("WTF_CSRF_CHECK_DEFAULT", False)  # checked in _require_admin
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)  # valid for the session's life
    csrf.init_app(app)
    settings = services_of(app).settings
    app.config["DEV_OUTBOX"] = settings.MAIL_URL.startswith(DEV_MAIL_SCHEMES)
    app.permanent_session_lifetime = timedelta(hours=settings.ADMIN_SESSION_HOURS)
    app.extensions["admin_devices"] = DeviceCookies(settings.SECRET_KEY)
    app.extensions["admin_password_attempts"] = AttemptBudget(
        limiter, None if settings.login_limits_disabled else settings.ADMIN_LOGIN_RATE_LIMIT
    )
