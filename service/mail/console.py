"""Development delivery: messages are printed, readable, where the scheduler runs."""

from __future__ import annotations

import sys
from typing import TextIO

from .message import Message

MARKER = "====="


class ConsoleMailer:
    """Prints each message's headers and plain-text part between a start and an end line
    that name its recipient and subject. Lines are printed as they are, never wrapped or
    encoded, so every link stays whole and clickable."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def __repr__(self) -> str:
        return "<ConsoleMailer>"

    def send(self, message: Message) -> None:
        """Print the message."""
        stream = self.stream or sys.stdout
        about = f'email to {message.to}: "{message.subject}" {MARKER}'
        headers = [
            f"From: {message.sender}",
            f"To: {message.to}",
            f"Subject: {message.subject}",
            *(f"{name}: {value}" for name, value in message.headers.items()),
        ]
        print(
            "\n".join(
                [
                    f"{MARKER} {about}",
                    *headers,
                    "",
                    message.text.rstrip(),
                    f"{MARKER} end of {about}",
                ]
            ),
            file=stream,
            flush=True,
        )

    def close(self) -> None:
        """Nothing to release."""
