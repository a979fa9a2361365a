"""Development delivery: each message becomes an .eml file any mail program can open."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .message import Message


class FileMailer:
    """Writes every message to `<directory>/<date>-<message id>.eml`."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"<FileMailer {self.directory}>"

    def send(self, message: Message) -> None:
        """Write the message atomically, so a reader never sees half a file."""
        self.directory.mkdir(parents=True, exist_ok=True)
        stem = re.sub(r"[^A-Za-z0-9.-]+", "_", message.message_id.strip("<>"))
        name = f"{message.date:%Y%m%dT%H%M%S}-{stem}.eml"
        partial = self.directory / f".{name}.tmp"
        partial.write_bytes(message.as_bytes())
        os.replace(partial, self.directory / name)

    def close(self) -> None:
        """Nothing to release."""
