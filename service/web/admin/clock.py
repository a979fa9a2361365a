"""Every time on the admin pages in one zone, the owner's: the one chosen on the Account
page, else DEFAULT_TIME_ZONE. Stored times are UTC; they are turned into the owner's zone
only here, where they are shown, and the zone is named beside them."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from flask import g

from ...sequences import zone_of
from .. import services
from .blueprint import bp

TIME_FORMAT = "%Y-%m-%d %H:%M"


def owner_zone() -> ZoneInfo:
    """The zone of the signed-in owner's pages. A chosen zone this machine's time zone
    database does not know (moved to another, older one) falls back to the default, so
    that the Account page where it is changed still opens."""
    chosen = g.admin.time_zone if g.get("admin") is not None else None
    default = services().settings.default_zone
    return zone_of(chosen, default) if chosen else default


@bp.app_template_filter("local")
def local(when: datetime | None, format: str = TIME_FORMAT) -> str:
    """`when` (UTC) as the owner's wall-clock time; empty for no time."""
    return when.astimezone(owner_zone()).strftime(format) if when is not None else ""


@bp.app_template_filter("detail")
def detail(value: object) -> object:
    """A value of an event's detail as shown in a history: a time stored as ISO 8601 (a
    pause's end, say) in the owner's zone like every other time; anything else as it is."""
    if isinstance(value, str) and len(value) > 19 and value[10:11] == "T":
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            return value
        if when.tzinfo is not None:
            return f"{local(when)} {owner_zone().key}"
    return value


@bp.context_processor
def _zone_name() -> dict[str, str]:
    return {"zone_name": owner_zone().key}
