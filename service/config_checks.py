"""Checking the settings at startup: what is unsafe or invalid stops the service with a
message that names the setting and says what to set (Settings.check calls this).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .config import (
    DEV_MAIL_SCHEMES,
    DEV_POSTAL_ADDRESS,
    DEV_SECRET_KEY,
    ENVIRONMENTS,
    ConfigError,
    Settings,
)
from .mail import mailer_from_url

MIN_SECRET_KEY_LENGTH = 16
# zxcvbn's estimate of the guesses a key needs, as a power of ten: 10^12 is about 40 bits,
# out of reach of anyone without the key (64 random hex characters estimate at 10^64).
MIN_SECRET_KEY_GUESSES_LOG10 = 12
MIN_POSTAL_ADDRESS_LENGTH = 10
MAKE_A_KEY = 'make one with: python -c "import secrets; print(secrets.token_hex(32))"'
# RFC 5322's dot-atom-text: the form of a List-Id (RFC 2919) and of a local part.
DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
HOST_NAME = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]"
    r"(?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)
DKIM_SETTINGS = ("DKIM_PRIVATE_KEY_PATH", "DKIM_SELECTOR", "DKIM_DOMAIN")


def key_problem(key: str) -> str | None:
    """Why `key` may not sign sessions and links, or None."""
    if key == DEV_SECRET_KEY:
        return "it is the old built-in key, which anyone can read in the source"
    if len(key) < MIN_SECRET_KEY_LENGTH:
        return f"it is shorter than {MIN_SECRET_KEY_LENGTH} characters"
    from zxcvbn import zxcvbn  # loaded only when a key is checked

    # zxcvbn refuses more than 72 characters; a longer key is at least as strong.
    if zxcvbn(key[:72])["guesses_log10"] < MIN_SECRET_KEY_GUESSES_LOG10:
        return "it is easy to guess (repeated characters, a sequence or common words)"
    return None


def check_settings(settings: Settings) -> None:
    """Refuse settings that are unsafe or invalid; raise ConfigError naming the setting."""
    if settings.APP_ENV not in ENVIRONMENTS:
        raise ConfigError(
            f"APP_ENV must be one of {', '.join(ENVIRONMENTS)}, not {settings.APP_ENV!r}"
        )
    for name in ("SITE_NAME", "MAIL_FROM", "MAIL_REPLY_TO"):
        # They go into headers of every email, where a line break could forge others.
        if any(character in getattr(settings, name) for character in "\r\n\0"):
            raise ConfigError(f"{name} must be one line, with no control characters")
    if settings.SECRET_KEY:
        problem = key_problem(settings.SECRET_KEY)
        if problem:
            raise ConfigError(f"SECRET_KEY cannot be used: {problem}; {MAKE_A_KEY}")
    base = urlsplit(settings.BASE_URL)
    if base.scheme not in ("http", "https") or not base.hostname:
        raise ConfigError(
            "BASE_URL must be the web app's public address with its host name, "
            f"like https://news.example.com (not {settings.BASE_URL!r})"
        )
    if settings.APP_ENV == "production":
        _check_production(settings)
    try:
        ZoneInfo(settings.DEFAULT_TIME_ZONE)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(
            f"DEFAULT_TIME_ZONE {settings.DEFAULT_TIME_ZONE!r} is not a known time zone"
        ) from exc
    _check_mail_url(settings)
    _check_marks(settings)
    for name in (
        "SEND_BATCH_SIZE",
        "SEND_LEASE_SECONDS",
        "SEND_MAX_ATTEMPTS",
        "SEQUENCE_BATCH_SIZE",
        "MAX_SEQUENCE_EMAILS_PER_DAY",
    ):
        if getattr(settings, name) < 1:
            raise ConfigError(f"{name} must be at least 1")
    if settings.SCHEDULER_TICK_SECONDS <= 0:
        raise ConfigError("SCHEDULER_TICK_SECONDS must be positive")
    if settings.SEND_RATE_PER_SECOND < 0 or settings.SEND_RATE_PER_HOUR < 0:
        raise ConfigError("SEND_RATE_PER_SECOND and SEND_RATE_PER_HOUR must not be negative")
    # One send is several SMTP commands, each allowed SMTP_TIMEOUT_SECONDS; a lease that
    # ran out in mid-send would let a second scheduler send the same email.
    if settings.SEND_LEASE_SECONDS < 5 * settings.SMTP_TIMEOUT_SECONDS:
        raise ConfigError(
            "SEND_LEASE_SECONDS must be at least 5 x SMTP_TIMEOUT_SECONDS "
            f"({settings.SEND_LEASE_SECONDS} < 5 x {settings.SMTP_TIMEOUT_SECONDS:g})"
        )


def _check_production(settings: Settings) -> None:
    """What development forgives and production must not: each refusal says what to set."""
    if not settings.SECRET_KEY:
        raise ConfigError(
            "SECRET_KEY must be set in production, and kept: every link in every email "
            f"sent is signed with it; {MAKE_A_KEY}"
        )
    address = " ".join(settings.OWNER_POSTAL_ADDRESS.split())
    if address in ("", DEV_POSTAL_ADDRESS) or len(address) < MIN_POSTAL_ADDRESS_LENGTH:
        raise ConfigError(
            "OWNER_POSTAL_ADDRESS must be your full postal address in production (street, "
            "town, postcode, country): anti-spam law wants it in every email"
        )
    if not settings.BASE_URL.startswith("https://"):
        raise ConfigError("BASE_URL must be an https:// address in production")
    if settings.MAIL_URL.strip().lower().startswith(DEV_MAIL_SCHEMES):
        raise ConfigError(
            "MAIL_URL must name your SMTP server in production, like "
            "smtp://USER:PASSWORD@smtp.example.com:587 (console: and file: deliver "
            "nothing, and would write live confirmation links into logs or files)"
        )


def _check_marks(settings: Settings) -> None:
    """The List-Id, the VERP return path and DKIM: mistakes here would otherwise show
    only as mail that providers file as spam, or bounces that never come back."""
    # RFC 2919: a label, a dot, a namespace (a domain the owner controls).
    if not DOT_ATOM.fullmatch(settings.list_id) or "." not in settings.list_id:
        raise ConfigError(
            f"LIST_ID must look like newsletter.example.com (RFC 2919), not {settings.list_id!r}"
        )
    if settings.MAIL_RETURN_PATH:
        local, at, domain = settings.MAIL_RETURN_PATH.rpartition("@")
        if "{token}" not in local or not at or not HOST_NAME.fullmatch(domain):
            raise ConfigError(
                "MAIL_RETURN_PATH must be an address whose local part holds {token}, "
                f"like bounces+{{token}}@news.example.com (not {settings.MAIL_RETURN_PATH!r})"
            )
        if not DOT_ATOM.fullmatch(local.replace("{token}", "t")):
            raise ConfigError(
                "MAIL_RETURN_PATH's local part may hold only letters, digits and "
                f"!#$%&'*+-/=?^_`{{|}}~. (not {local!r})"
            )
    given = [name for name in DKIM_SETTINGS if getattr(settings, name)]
    if given and len(given) < len(DKIM_SETTINGS):
        missing = [name for name in DKIM_SETTINGS if name not in given]
        raise ConfigError(
            f"DKIM signing needs {', '.join(DKIM_SETTINGS)} set together; "
            f"{', '.join(given)} set but {', '.join(missing)} missing"
        )
    if given:
        if not HOST_NAME.fullmatch(settings.DKIM_SELECTOR):
            raise ConfigError(
                f"DKIM_SELECTOR must be DNS labels like s1 (not {settings.DKIM_SELECTOR!r})"
            )
        if not HOST_NAME.fullmatch(settings.DKIM_DOMAIN) or "." not in settings.DKIM_DOMAIN:
            raise ConfigError(
                f"DKIM_DOMAIN must be a domain like news.example.com (not {settings.DKIM_DOMAIN!r})"
            )


def _check_mail_url(settings: Settings) -> None:
    try:
        mailer = mailer_from_url(settings.MAIL_URL)
    except ValueError as exc:
        raise ConfigError(f"MAIL_URL: {exc}") from exc
    if (
        settings.APP_ENV == "production"
        and getattr(mailer, "username", None)
        and getattr(mailer, "tls", None) == "none"
        and mailer.host not in ("localhost", "127.0.0.1", "::1")
    ):
        raise ConfigError(
            "MAIL_URL would send the SMTP password unencrypted: use ?tls=starttls or ?tls=ssl"
        )
