"""A real SMTP server on loopback (aiosmtpd) that can be told to misbehave.

Faults are set per test: a reply to MAIL, RCPT or DATA (421, 451, 550 ...), a connection
dropped mid-transaction, a failed login, or a listener that accepts and never answers.
"""

from __future__ import annotations

import email
import email.policy
import socket
import ssl
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str]

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)  # type: ignore[return-value]

    def part(self, subtype: str) -> str:
        body = self.message.get_body(preferencelist=(subtype,))
        assert body is not None, f"no text/{subtype} part"
        return body.get_content()


@dataclass
class Faults:
    """Replies to give instead of 250; None means behave."""

    mail: str | None = None
    rcpt: dict[str, str] = field(default_factory=dict)  # address -> reply
    data: str | None = None
    drop_at_data: bool = False  # close the connection instead of answering DATA
    # Apply the MAIL / DATA fault only to this many transactions (None: always).
    times: int | None = None


class FaultyHandler:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.faults = Faults()
        self.peers: set[tuple[str, int]] = set()  # one per TCP connection that said EHLO
        self.lock = threading.Lock()
        self.accepted = threading.Condition(self.lock)
        self.gate: threading.Event | None = None  # when set to an Event, DATA waits for it
        self.gate_after = 0  # ... once this many messages have been accepted
        self.pipelining = False  # advertise RFC 2920 PIPELINING
        self.in_data = threading.Event()

    def _use_fault(self) -> bool:
        if self.faults.times is None:
            return True
        if self.faults.times <= 0:
            return False
        self.faults.times -= 1
        return True

    @property
    def connections(self) -> int:
        return len(self.peers)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        with self.lock:
            self.peers.add(session.peer)
        if self.pipelining:
            # aiosmtpd reads one command line at a time, so pipelined commands just work.
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self.faults.mail and self._use_fault():
            return self.faults.mail
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.faults.rcpt.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.faults.drop_at_data and self._use_fault():
            server.transport.close()
            return "421 closing"
        if self.faults.data and self._use_fault():
            return self.faults.data
        if self.gate is not None and len(self.received) >= self.gate_after:
            self.in_data.set()
            # Runs in the server's event loop thread; holding it is what a slow server does.
            self.gate.wait(timeout=30)
        with self.accepted:
            self.received.append(
                Received(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    bytes(envelope.original_content or envelope.content),
                    list(envelope.mail_options),
                )
            )
            self.accepted.notify_all()
        return "250 Message accepted for delivery"

    def wait_for(self, count: int, timeout: float = 10) -> list[Received]:
        """Wait until `count` messages have arrived (a condition, not a sleep)."""
        with self.accepted:
            self.accepted.wait_for(lambda: len(self.received) >= count, timeout=timeout)
            return list(self.received)


class SMTPServer:
    """An aiosmtpd server on 127.0.0.1 with a free port."""

    def __init__(
        self,
        *,
        tls_context: ssl.SSLContext | None = None,
        credentials: tuple[str, str] | None = None,
        pipelining: bool = False,
        smtputf8: bool = True,
    ) -> None:
        self.handler = FaultyHandler()
        self.handler.pipelining = pipelining
        # smtputf8=False: a server that takes ASCII addresses only, as many relays do.
        kwargs: dict = {"enable_SMTPUTF8": smtputf8, "decode_data": False}
        if tls_context is not None:
            kwargs.update(tls_context=tls_context, require_starttls=True)
        if credentials is not None:

            def authenticate(server, session, envelope, mechanism, auth_data):
                ok = (
                    isinstance(auth_data, LoginPassword)
                    and (
                        auth_data.login.decode(),
                        auth_data.password.decode(),
                    )
                    == credentials
                )
                return AuthResult(success=ok, handled=False)

            kwargs.update(
                authenticator=authenticate,
                auth_required=True,
                # Plain-text AUTH is fine between two ends of one test on loopback.
                auth_require_tls=tls_context is not None,
            )
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=free_port(), **kwargs)

    def __enter__(self) -> SMTPServer:
        self.controller.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.handler.gate is not None:
            self.handler.gate.set()
        self.controller.stop()

    @property
    def port(self) -> int:
        return self.controller.port

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}?timeout=5"

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    @property
    def faults(self) -> Faults:
        return self.handler.faults


class RawServer:
    """A TCP listener on loopback; subclasses say what each connection gets (`answer`).

    Without `answer`, connections are accepted by the kernel and never spoken to."""

    def __enter__(self):
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(8)
        self.port = self.socket.getsockname()[1]
        if type(self).answer is not RawServer.answer:
            threading.Thread(target=self._serve, daemon=True).start()
        return self

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            with connection:
                self.answer(connection)

    def answer(self, connection: socket.socket) -> None:
        """What one connection gets (the connection is closed afterwards)."""

    def __exit__(self, *exc_info) -> None:
        self.socket.close()


class SilentServer(RawServer):
    """Accepts TCP connections and never says a word (no SMTP greeting)."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class GreetingServer(RawServer):
    """Answers every connection with one fixed greeting line (e.g. 421) and hangs up."""

    def __init__(self, greeting: str) -> None:
        self.greeting = greeting

    def answer(self, connection: socket.socket) -> None:
        connection.sendall(self.greeting.encode() + b"\r\n")


class HangUpServer(RawServer):
    """Greets and answers EHLO like a pipelining server, then answers the first command
    after it with `reply` and hangs up (as Postfix does after a 421)."""

    def __init__(self, reply: str = "421 4.3.2 Service shutting down") -> None:
        self.reply = reply

    def answer(self, connection: socket.socket) -> None:
        with connection.makefile("rb") as lines:
            connection.sendall(b"220 hang-up ready\r\n")
            lines.readline()  # EHLO
            connection.sendall(b"250-hang-up\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            lines.readline()  # MAIL FROM (the rest of the pipeline is never answered)
            connection.sendall(self.reply.encode() + b"\r\n")


class HeloOnlyServer(RawServer):
    """An old server: 502 to EHLO, HELO accepted; it records the commands it is sent and
    refuses a MAIL inside an open transaction, as real servers do."""

    def __init__(self) -> None:
        self.commands: list[bytes] = []
        self.delivered = 0

    def answer(self, connection: socket.socket) -> None:
        in_transaction = in_data = False
        with connection.makefile("rb") as lines:
            connection.sendall(b"220 old.example ready\r\n")
            for line in lines:
                if in_data:
                    if line == b".\r\n":
                        in_data = in_transaction = False
                        self.delivered += 1
                        connection.sendall(b"250 ok\r\n")
                    continue
                command = line[:4].upper()
                self.commands.append(command)
                if command == b"EHLO":
                    connection.sendall(b"502 command not implemented\r\n")
                elif command == b"MAIL" and in_transaction:
                    connection.sendall(b"503 5.5.1 nested MAIL command\r\n")
                elif command == b"MAIL":
                    in_transaction = True
                    connection.sendall(b"250 ok\r\n")
                elif command == b"DATA":
                    in_data = True
                    connection.sendall(b"354 go on\r\n")
                elif command == b"RSET":
                    in_transaction = False
                    connection.sendall(b"250 ok\r\n")
                elif command == b"QUIT":
                    connection.sendall(b"221 bye\r\n")
                    return
                else:  # HELO, RCPT
                    connection.sendall(b"250 ok\r\n")
