"""The public links in emails: one place builds them, the web routes answer them."""

from __future__ import annotations

from datetime import datetime

from .tokens import Purpose, Tokens

CONFIRM_PATH = "/confirm/{token}"
DOWNLOAD_PATH = "/download/{token}"
UNSUBSCRIBE_PATH = "/unsubscribe/{token}"
PREFERENCES_PATH = "/preferences/{token}"


class Links:
    """Absolute, signed links for one subscriber at a time."""

    def __init__(self, base_url: str, tokens: Tokens) -> None:
        self.base_url = base_url.rstrip("/")
        self.tokens = tokens

    def _link(
        self, path: str, purpose: Purpose, subscriber_id: int, now: datetime, scope: str = ""
    ) -> str:
        token = self.tokens.make(purpose, subscriber_id, now=now, scope=scope)
        return self.base_url + path.format(token=token)

    def confirm(self, subscriber_id: int, *, now: datetime) -> str:
        return self._link(CONFIRM_PATH, Purpose.CONFIRM, subscriber_id, now)

    def download(self, subscriber_id: int, *, now: datetime, magnet: str = "") -> str:
        """The download link of a magnet (`magnet` "" or None: the default magnet's)."""
        return self._link(DOWNLOAD_PATH, Purpose.DOWNLOAD, subscriber_id, now, magnet or "")

    def unsubscribe(self, subscriber_id: int, *, now: datetime) -> str:
        return self._link(UNSUBSCRIBE_PATH, Purpose.UNSUBSCRIBE, subscriber_id, now)

    def preferences(self, subscriber_id: int, *, now: datetime) -> str:
        return self._link(PREFERENCES_PATH, Purpose.PREFERENCES, subscriber_id, now)
