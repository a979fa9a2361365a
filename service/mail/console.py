"""Development delivery: messages are printed, readable, where the scheduler runs."""

from __future__ import annotations

import sys
from typing import TextIO

from .message import Message

RULE = "-" * 72


class ConsoleMailer:
    """Prints each message's headers and plain-text part (links stay whole and clickable)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def __repr__(self) -> str:
        return "<ConsoleMailer>"

    def send(self, message: Message) -> None:
        """Print the message."""
        stream = self.stream or sys.stdout
        headers = [
            f"From: {message.sender}",
            f"To: {message.to}",
            f"Subject: {message.subject}",
            *(f"{name}: {value}" for name, value in message.headers.items()),
        ]
        print("\n".join([RULE, *headers, "", message.text.rstrip(), RULE]), file=stream, flush=True)

    def close(self) -> None:
        """Nothing to release."""
