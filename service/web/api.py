"""The JSON API: signups from scripts and other sites' forms."""

from __future__ import annotations

from flask import Blueprint, request

from .. import signup_input
from . import services
from .public import HONEYPOT_FIELD, UNKNOWN_MAGNET, magnet_named, record_signup

bp = Blueprint("api", __name__, url_prefix="/api/v1")

ACCEPTED = {
    "status": "accepted",
    "message": "If this address can receive email, a confirmation email is on its way.",
}


@bp.post("/subscribers")
def create_subscriber():
    """Sign up {"email", "first_name", "time_zone", "source", "magnet"}; 202 whatever the
    address's state (an unknown magnet is a 422, the same for every address)."""
    if not request.is_json:
        return {"error": "Send the signup as JSON (Content-Type: application/json)."}, 415
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        return {"error": "The request body must be a JSON object."}, 400
    if data.get(HONEYPOT_FIELD):
        return ACCEPTED, 202
    settings = services().settings
    try:
        signup = signup_input.parse_signup(
            data, default_time_zone=settings.DEFAULT_TIME_ZONE, default_source="api"
        )
        magnet = magnet_named(data.get("magnet"))
        if magnet is None:
            raise signup_input.InvalidSignup({"magnet": UNKNOWN_MAGNET})
    except signup_input.InvalidSignup as exc:
        return {"error": "Some fields are not valid.", "errors": exc.errors}, 422
    record_signup(signup, magnet)
    return ACCEPTED, 202
