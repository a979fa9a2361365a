"""Every setting the service reads: its name, default and meaning, read in one place.

Settings come from, in order of precedence: overrides passed by the caller (tests),
the process environment, a `.env` file in the project root, and the defaults below.
Nothing here runs at import time; `load_settings()` is called by `create_app()`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from email.utils import parseaddr
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from dotenv import dotenv_values

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INSTANCE_DIR = PROJECT_ROOT / "instance"

# Once the built-in default key: it is in this project's history, so it signs nothing.
DEV_SECRET_KEY = "dev-only-insecure-secret-key"
DEV_POSTAL_ADDRESS = "100 Example Street, Springfield, ST 00000, USA (set OWNER_POSTAL_ADDRESS)"
# Mail backends that deliver nothing: they print or store emails, live links included.
DEV_MAIL_SCHEMES = ("console:", "file:")

ENVIRONMENTS = ("development", "testing", "production")


def _is_off(limit: str) -> bool:
    return limit.strip().lower() in ("", "off", "none")


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the setting."""


def setting(default: Any, meaning: str) -> Any:
    """A field of Settings: its default, and what it means (README's table says the same)."""
    return field(default=default, metadata={"help": meaning})


@dataclass(frozen=True)
class Settings:
    """The service's configuration. Field names are the environment variable names.

    A new setting is one declaration, `NAME: type = setting(default, meaning)`, and its
    row in README's table (a test holds the two together). The type says how a value from
    the environment is read: str, int, float or bool.
    """

    # Where the service runs, and the outside world's view of it.
    APP_ENV: str = setting(
        "development", "development, testing or production. Production refuses unsafe defaults."
    )
    SECRET_KEY: str = setting(
        "",
        "Signs tokens and sessions. Unset: a random key is made on first start "
        "and kept in INSTANCE_DIR/secret_key. Required (and secret) in production.",
    )
    INSTANCE_DIR: str = setting(
        str(DEFAULT_INSTANCE_DIR),
        "Folder for the SQLite database, the secret key made when SECRET_KEY is "
        "unset, the rate-limit counters beside SQLite, the built guide and dev mail.",
    )
    DATABASE_URL: str = setting(
        "", "SQLAlchemy URL. Default: SQLite file INSTANCE_DIR/newsletter.db."
    )
    MAIL_URL: str = setting(
        "console:",
        "smtp://user:pass@host:port (STARTTLS with a user; ?tls=ssl|starttls|none), "
        "file:///dir or console:.",
    )
    BASE_URL: str = setting(
        "http://127.0.0.1:5000", "Public address of the web app; every link in every email uses it."
    )

    # What readers see and get.
    SITE_NAME: str = setting(
        "Low Back Relief", "The newsletter's name, shown on pages and in emails."
    )
    MAIL_FROM: str = setting(
        "Low Back Relief <hello@localhost>", "From address of every email, as 'Name <address>'."
    )
    MAIL_REPLY_TO: str = setting(
        "", "Reply-To address, if replies should go elsewhere than MAIL_FROM."
    )
    OWNER_POSTAL_ADDRESS: str = setting(
        DEV_POSTAL_ADDRESS,
        "Postal address printed in every email (anti-spam law). Required in production.",
    )
    DEFAULT_TIME_ZONE: str = setting(
        "America/New_York", "Time zone for readers whose browser did not report one."
    )
    CONTENT_DIR: str = setting(
        "",
        "Folder with your own emails/ and pages/ templates; files there win over the shipped ones.",
    )
    GUIDE_PATH: str = setting(
        "", "The lead magnet file. Default: the shipped guide, built into INSTANCE_DIR."
    )
    GUIDE_DOWNLOAD_NAME: str = setting(
        "glute-strengthening-guide.pdf", "File name the reader's browser saves the guide as."
    )

    # Links, limits and sessions.
    CONFIRM_TOKEN_MAX_AGE_DAYS: int = setting(7, "How long a confirmation link works.")
    DOWNLOAD_TOKEN_MAX_AGE_DAYS: int = setting(365, "How long a download link works.")
    RESEND_COOLDOWN_MINUTES: int = setting(
        60, "A repeated signup within this time sends no second email."
    )
    SIGNUP_RATE_LIMIT: str = setting(
        "5 per minute;30 per hour", "Signups allowed per client IP (Flask-Limiter syntax)."
    )
    ADMIN_LOGIN_RATE_LIMIT: str = setting(
        "10 per minute;50 per hour",
        "Admin login attempts allowed per client IP, and per account name.",
    )
    ADMIN_SESSION_HOURS: int = setting(12, "An admin session ends after this long without a visit.")
    TRACK_LINKS: bool = setting(
        True, "Count clicks on links in sequence emails and newsletters (through /l/...)."
    )
    RATELIMIT_STORAGE_URI: str = setting(
        "",
        "Where rate-limit counters live. Empty: a table every process shares "
        "(INSTANCE_DIR/rate_limits.db beside SQLite, the database itself on PostgreSQL); "
        "redis://host:6379 for Redis; memory:// counts per process (one process only).",
    )
    TRUSTED_PROXIES: int = setting(
        0, "Number of reverse proxies in front of the app whose X-Forwarded-For is trusted."
    )

    # The scheduler and sending.
    SCHEDULER_TICK_SECONDS: float = setting(5.0, "How often the scheduler looks for due emails.")
    SCHEDULER_WAKEUPS: bool = setting(
        True,
        "Wake the scheduler the moment an email is queued (PostgreSQL LISTEN/NOTIFY; a Unix"
        " socket beside the SQLite file); off: new emails wait for its next tick.",
    )
    SEND_BATCH_SIZE: int = setting(100, "Outbox rows claimed at once by one scheduler.")
    SEND_LEASE_SECONDS: int = setting(
        300,
        "How long a claim lasts before another scheduler may take the rows over "
        "(at least 5 x SMTP_TIMEOUT_SECONDS).",
    )
    SEND_MAX_ATTEMPTS: int = setting(
        8, "Attempts before a temporarily failing email is marked failed."
    )
    SEND_RETRY_BASE_SECONDS: int = setting(60, "First retry delay; each further retry doubles it.")
    SEND_RETRY_MAX_SECONDS: int = setting(6 * 3600, "The longest delay between two retries.")
    SEND_RATE_PER_SECOND: float = setting(
        0.0, "At most this many emails a second per scheduler (0: no limit)."
    )
    SEND_RATE_PER_HOUR: int = setting(
        0, "At most this many emails an hour, for providers that cap it (0: no limit)."
    )
    SEQUENCE_BATCH_SIZE: int = setting(
        500, "Due sequence steps moved into the outbox per transaction."
    )
    MAX_SEQUENCE_EMAILS_PER_DAY: int = setting(
        1,
        "Sequence emails a reader gets on one local day at most, however many sequences"
        " they are in; another due that day waits for the next morning.",
    )
    SMTP_TIMEOUT_SECONDS: float = setting(30.0, "Socket timeout for every SMTP command.")
    SCHEDULER_LATE_SECONDS: int = setting(
        120, "/healthz reports the scheduler late after this long without a tick."
    )

    # Hearing back: bounces and complaints (service.feedback), and the marks providers
    # judge a sender by. A webhook whose secret is empty answers 404.
    SES_TOPIC_ARNS: str = setting(
        "", "SNS topic ARNs (comma-separated) whose SES notifications /webhooks/ses accepts."
    )
    SENDGRID_WEBHOOK_PUBLIC_KEY: str = setting(
        "", "The Event Webhook's verification key, base64, as SendGrid shows it."
    )
    MAILGUN_WEBHOOK_SIGNING_KEY: str = setting("", "Mailgun's HTTP webhook signing key.")
    POSTMARK_WEBHOOK_USER: str = setting("", "User name in the webhook URL given to Postmark.")
    POSTMARK_WEBHOOK_PASSWORD: str = setting("", "Password in the webhook URL given to Postmark.")
    BOUNCE_WEBHOOK_TOKEN: str = setting(
        "", "Bearer token of the generic /webhooks/bounce endpoint."
    )
    BOUNCE_MAILBOX_URL: str = setting(
        "", "imaps://, imap:// (STARTTLS) or pop3s:// mailbox the scheduler reads bounces from."
    )
    BOUNCE_MAILBOX_AFTER: str = setting(
        "move:Processed", "What becomes of a handled bounce message: move:FOLDER or delete."
    )
    BOUNCE_MAILBOX_INTERVAL_SECONDS: int = setting(
        300, "How often the scheduler reads the bounce mailbox."
    )
    MAIL_RETURN_PATH: str = setting(
        "", "VERP envelope sender, e.g. bounces+{token}@news.example.com; empty: MAIL_FROM."
    )
    SOFT_BOUNCE_LIMIT: int = setting(
        3, "Soft bounces in a row (within the window) that count as a hard bounce."
    )
    SOFT_BOUNCE_WINDOW_DAYS: int = setting(15, "The window soft bounces are counted in.")
    BROADCAST_BOUNCE_PAUSE_RATE: float = setting(
        0.05, "A newsletter pauses itself past this hard-bounce rate on its first sends."
    )
    BROADCAST_COMPLAINT_PAUSE_RATE: float = setting(
        0.005, "A newsletter pauses itself past this complaint rate on its first sends."
    )
    FEEDBACK_PAYLOAD_DAYS: int = setting(
        30, "How long the raw payload of a bounce or complaint is kept."
    )
    LIST_ID: str = setting(
        "", "The List-Id header's identifier; empty: newsletter.<MAIL_FROM's domain>."
    )
    DKIM_PRIVATE_KEY_PATH: str = setting(
        "", "PEM private key (RSA or Ed25519) to DKIM-sign every email with; empty: no DKIM."
    )
    DKIM_SELECTOR: str = setting("", "The DKIM selector (the s= tag; its DNS TXT record's name).")
    DKIM_DOMAIN: str = setting("", "The DKIM signing domain (d=); usually MAIL_FROM's domain.")

    # Logs.
    LOG_LEVEL: str = setting("INFO", "Python logging level.")

    # --- derived values -------------------------------------------------------------

    @property
    def database_url(self) -> str:
        """The database URL, defaulting to a SQLite file in the instance folder."""
        if self.DATABASE_URL:
            return self.DATABASE_URL
        return f"sqlite:///{Path(self.INSTANCE_DIR) / 'newsletter.db'}"

    @property
    def guide_path(self) -> Path:
        """Where the lead magnet is read from."""
        if self.GUIDE_PATH:
            return Path(self.GUIDE_PATH)
        return Path(self.INSTANCE_DIR) / "glute-strengthening-guide.pdf"

    @property
    def uses_shipped_guide(self) -> bool:
        """True when the guide is the one built from content/guide (and may be rebuilt)."""
        return not self.GUIDE_PATH

    @property
    def mail_domain(self) -> str:
        """MAIL_FROM's domain, in its ASCII form ('localhost' when it has none)."""
        domain = parseaddr(self.MAIL_FROM)[1].rpartition("@")[2] or "localhost"
        return domain if domain.isascii() else domain.encode("idna").decode("ascii")

    @property
    def list_id(self) -> str:
        """The List-Id header's identifier (RFC 2919): LIST_ID or newsletter.<domain>."""
        return self.LIST_ID or f"newsletter.{self.mail_domain}"

    @property
    def dkim_enabled(self) -> bool:
        return bool(self.DKIM_PRIVATE_KEY_PATH)

    @property
    def default_zone(self) -> ZoneInfo:
        return ZoneInfo(self.DEFAULT_TIME_ZONE)

    @property
    def signup_limits_disabled(self) -> bool:
        return _is_off(self.SIGNUP_RATE_LIMIT)

    @property
    def login_limits_disabled(self) -> bool:
        return _is_off(self.ADMIN_LOGIN_RATE_LIMIT)

    def check(self) -> None:
        """Refuse settings that are unsafe or invalid; raise ConfigError naming the setting."""
        # The checks live in a module of their own, which imports this one.
        from .config_checks import check_settings

        check_settings(self)


def _coerce(name: str, kind: type, raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    if kind is bool:
        flag = raw.strip().lower()
        if flag in ("1", "true", "yes", "on"):
            return True
        if flag in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{name} must be on or off, not {raw!r}")
    try:
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, not {raw!r}") from exc
    return raw


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    dotenv_path: Path | None = None,
) -> Settings:
    """Read the settings from overrides, the environment and `.env`, and check them."""
    environ = os.environ if environ is None else environ
    if dotenv_path is None:
        # DOTENV_PATH names another file; set to an empty string it turns .env off.
        chosen = environ.get("DOTENV_PATH")
        dotenv_path = PROJECT_ROOT / ".env" if chosen is None else Path(chosen) if chosen else None
    from_file = {}
    if dotenv_path is not None and dotenv_path.is_file():
        from_file = {k: v for k, v in dotenv_values(dotenv_path).items() if v is not None}
    overrides = dict(overrides or {})
    values: dict[str, Any] = {}
    types = {"int": int, "float": float, "str": str, "bool": bool}
    for f in fields(Settings):
        for source in (overrides, environ, from_file):
            if f.name in source:
                values[f.name] = _coerce(f.name, types[str(f.type)], source[f.name])
                break
    unknown = set(overrides) - {f.name for f in fields(Settings)}
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    settings = Settings(**values)
    settings.check()
    return settings


def settings_table() -> list[tuple[str, str, str]]:
    """(name, default, meaning) for every setting: the source of README's table."""
    return [(f.name, str(f.default), f.metadata.get("help", "")) for f in fields(Settings)]
