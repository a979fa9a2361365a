"""The one place that turns settings into the service's working parts.

The web app (`create_app`), the CLI and the scheduler process all start here, so they
see the same database, templates, keys and mail backend.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from . import magnets as lead_magnets
from .compose import Composer
from .config import ConfigError, Settings
from .db import Database
from .delivery import DeliveryPolicy, Mailer
from .dispatch import Dispatcher
from .emails import EmailRenderer, email_directories, sequence_files
from .feedback import Feedback, FeedbackPolicy
from .feedback.webhooks.ses import SigningCertificates
from .funnels import Funnels
from .links import Links
from .magnets import DEFAULT_MAGNET, LeadMagnet
from .mail import mailer_from_url
from .mail.message import Signer
from .message_ids import MessageIds
from .secret_key import instance_secret_key
from .sequences import DripSequence, SequenceError
from .sequences import load as load_sequence
from .tokens import Tokens
from .tracking import LinkTracker


def utc_now() -> datetime:
    """The wall clock, read only at the edges (requests, scheduler ticks)."""
    return datetime.now(UTC)


def worker_name() -> str:
    """A name for this process that is unique among running schedulers."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass
class Services:
    settings: Settings
    database: Database
    tokens: Tokens
    links: Links
    renderer: EmailRenderer
    # Lead magnets by id, in listing order; sequences by name.
    magnets: dict[str, LeadMagnet]
    sequences: dict[str, DripSequence]
    tracker: LinkTracker
    composer: Composer
    message_ids: MessageIds
    feedback: Feedback
    clock: Callable[[], datetime] = field(default=utc_now)
    # SNS's signing certificates, kept for the process (tests give it a fetcher of their own).
    sns_certificates: SigningCertificates = field(default_factory=SigningCertificates)

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        if not settings.SECRET_KEY:
            # Every process reads the same key from the instance folder (service.secret_key).
            key = instance_secret_key(Path(settings.INSTANCE_DIR))
            settings = replace(settings, SECRET_KEY=key)
        tokens = Tokens(settings.SECRET_KEY)
        renderer = EmailRenderer(
            email_directories(settings.CONTENT_DIR),
            site={
                "name": settings.SITE_NAME,
                "base_url": settings.BASE_URL.rstrip("/"),
                "postal_address": settings.OWNER_POSTAL_ADDRESS,
            },
        )
        sequences = _load_sequences(settings, renderer)
        try:
            magnets = lead_magnets.load_all(
                settings,
                default_sequence=_default_sequence_name(sequences),
                template_exists=renderer.has_template,
                sequence_exists=sequences.__contains__,
            )
        except lead_magnets.MagnetError as exc:
            raise ConfigError(f"the lead magnets: {exc}") from exc
        database = Database.connect(settings.database_url, wakeups=settings.SCHEDULER_WAKEUPS)
        links = Links(settings.BASE_URL, tokens)
        tracker = LinkTracker(database, base_url=settings.BASE_URL, secret_key=settings.SECRET_KEY)
        message_ids = MessageIds(settings.SECRET_KEY, settings.mail_domain)
        composer = Composer(
            database,
            renderer,
            links,
            sequences=sequences,
            sender=settings.MAIL_FROM,
            reply_to=settings.MAIL_REPLY_TO,
            ids=message_ids,
            site_name=settings.SITE_NAME,
            list_id=settings.list_id,
            return_path=settings.MAIL_RETURN_PATH,
            signer=_dkim_signer(settings),
            tracker=tracker if settings.TRACK_LINKS else None,
        )
        return cls(
            settings=settings,
            database=database,
            tokens=tokens,
            links=links,
            renderer=renderer,
            magnets=magnets,
            sequences=sequences,
            tracker=tracker,
            composer=composer,
            message_ids=message_ids,
            feedback=Feedback(
                message_ids,
                FeedbackPolicy(
                    soft_limit=settings.SOFT_BOUNCE_LIMIT,
                    soft_window=timedelta(days=settings.SOFT_BOUNCE_WINDOW_DAYS),
                    pause_bounce_rate=settings.BROADCAST_BOUNCE_PAUSE_RATE,
                    pause_complaint_rate=settings.BROADCAST_COMPLAINT_PAUSE_RATE,
                ),
            ),
        )

    def make_mailer(self) -> Mailer:
        """A fresh mailer (one SMTP connection) for one dispatch pass."""
        return mailer_from_url(self.settings.MAIL_URL, timeout=self.settings.SMTP_TIMEOUT_SECONDS)

    def make_dispatcher(self, worker: str) -> Dispatcher:
        s = self.settings
        return Dispatcher(
            self.database,
            self.composer.fresh(),
            default_zone=s.default_zone,
            worker=worker,
            feedback=self.feedback,
            policy=DeliveryPolicy(
                batch_size=s.SEND_BATCH_SIZE,
                lease=timedelta(seconds=s.SEND_LEASE_SECONDS),
                max_attempts=s.SEND_MAX_ATTEMPTS,
                retry_base=timedelta(seconds=s.SEND_RETRY_BASE_SECONDS),
                retry_cap=timedelta(seconds=s.SEND_RETRY_MAX_SECONDS),
                per_second=s.SEND_RATE_PER_SECOND,
                per_hour=s.SEND_RATE_PER_HOUR,
            ),
        )

    @property
    def default_magnet(self) -> LeadMagnet:
        """The lead magnet of the landing page and of signups that name none."""
        return self.magnets[DEFAULT_MAGNET]

    @property
    def funnels(self) -> Funnels:
        """The magnets and sequences a signup or a confirmation may lead to."""
        return Funnels(self.magnets, self.sequences)

    @property
    def default_sequence(self) -> DripSequence:
        """The default magnet's sequence: the one the owner's desk shows."""
        return self.sequences[self.default_magnet.sequence]

    @property
    def resend_cooldown(self) -> timedelta:
        return timedelta(minutes=self.settings.RESEND_COOLDOWN_MINUTES)


def _dkim_signer(settings: Settings) -> Signer | None:
    """The DKIM signer, its key read here, once: a missing or broken key stops the start.
    dkimpy and cryptography are loaded only when DKIM is on (the export's process, among
    others, stays small)."""
    if not settings.dkim_enabled:
        return None
    from .dkim import signer_from_settings

    return signer_from_settings(settings)


def _load_sequences(settings: Settings, renderer: EmailRenderer) -> dict[str, DripSequence]:
    """Every sequence, by name, each checked and every step rendered once; a broken one
    stops the start, naming its file."""
    found: dict[str, DripSequence] = {}
    origins: dict[str, Path] = {}
    for path in sequence_files(settings.CONTENT_DIR):
        try:
            sequence = load_sequence(path, template_exists=renderer.has_template)
        except SequenceError as exc:
            raise ConfigError(f"the drip sequence: {exc}") from exc
        seen = origins.get(sequence.name)
        if seen is not None and seen.parent == path.parent:
            raise ConfigError(
                f"the drip sequence: {path} and {seen} are both called {sequence.name!r}"
            )
        _check_step_templates(renderer, sequence)
        found[sequence.name] = sequence
        origins[sequence.name] = path
    try:
        _check_chains(found)
    except SequenceError as exc:
        raise ConfigError(f"the drip sequence: {exc}") from exc
    return found


def _default_sequence_name(sequences: dict[str, DripSequence]) -> str:
    """The name `sequence.toml` gives its sequence: the first loaded."""
    return next(iter(sequences))


def _check_chains(found: dict[str, DripSequence]) -> None:
    """Each `then` and `exclude` names a sequence that exists, and `then` never loops."""
    for sequence in found.values():
        for name in (*sequence.excludes, *([sequence.then] if sequence.then else [])):
            if name not in found:
                raise SequenceError(f"sequence {sequence.name}: no sequence called {name!r}")
        seen = {sequence.name}
        following = sequence.then
        while following is not None:
            if following in seen:
                raise SequenceError(f"sequence {sequence.name}: 'then' leads back to {following}")
            seen.add(following)
            following = found[following].then


def _check_step_templates(renderer: EmailRenderer, sequence: DripSequence) -> None:
    """Render every step once, with and without a first name, so a template error stops
    the service at startup instead of holding back mail later. (It also fills the cache of
    emails rendered once for all readers.)"""
    context = sequence.context()
    for step in sequence.steps:
        for has_first_name in (True, False):
            try:
                renderer.skeleton(
                    step.template,
                    {**context, "sequence": sequence.name, "step": step.id},
                    has_first_name=has_first_name,
                )
            except Exception as exc:
                raise ConfigError(
                    f"the drip sequence: step {step.id} ({step.template}) does not render: {exc}"
                ) from exc


class FailedRequestsOnly(logging.Filter):
    """Keeps the development server's (`flask run`'s) line for a request only if it
    failed (status 400 and up): a page, its style sheets, script and icon made five lines
    a visit in the terminal where `make run` prints the emails."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 3 and str(args[1]).isdecimal():
            return int(args[1]) >= 400  # werkzeug's access line: (request line, status, size)
        return True


def configure_logging(settings: Settings) -> None:
    """Log to stderr at LOG_LEVEL, once per process."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root.setLevel(settings.LOG_LEVEL.upper())
    # Alembic announces every plugin it loads at INFO; only its migration steps matter.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    requests = logging.getLogger("werkzeug")
    filtered = any(isinstance(f, FailedRequestsOnly) for f in requests.filters)
    if settings.APP_ENV == "development" and not filtered:
        requests.addFilter(FailedRequestsOnly())
