"""The SMTP backend against a real SMTP server on loopback, behaving and misbehaving."""

from __future__ import annotations

import smtplib
import ssl
import time
from datetime import UTC, datetime

import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st

from service.mail import (
    AddressNotSupported,
    MailerUnavailable,
    Message,
    MessageRejected,
    RecipientRejected,
    ServerBusy,
    TemporaryFailure,
    mailer_from_url,
)
from service.mail.smtp import SMTPMailer, _angle_address, _dot_stuffed
from tests.smtp_server import (
    GreetingServer,
    HangUpServer,
    HeloOnlyServer,
    SilentServer,
    SMTPServer,
)


@pytest.fixture(params=[False, True], ids=["one-by-one", "pipelining"])
def smtp(request):
    """The loopback server, with and without RFC 2920 PIPELINING: every test here runs
    against both, since the mailer takes a different path for each."""
    with SMTPServer(pipelining=request.param) as server:
        yield server


def message(to: str = "reader@example.org", n: int = 0) -> Message:
    return Message(
        sender="Low Back Relief <hello@example.com>",
        to=to,
        subject=f"Tip {n}",
        text=f"Tip number {n}\n",
        html=f"<p>Tip number {n}</p>",
        date=datetime(2026, 11, 24, tzinfo=UTC),
        message_id=f"<{n}.x@example.com>",
    )


def mailer_for(server: SMTPServer, **kwargs) -> SMTPMailer:
    return SMTPMailer("127.0.0.1", server.port, timeout=5, **kwargs)


def test_delivers_over_one_connection(smtp):
    mailer = mailer_for(smtp)
    for n in range(5):
        mailer.send(message(n=n))
    mailer.close()
    received = smtp.handler.wait_for(5)
    assert [r.message["Subject"] for r in received] == [f"Tip {n}" for n in range(5)]
    assert received[0].mail_from == "hello@example.com"
    assert received[0].rcpt_tos == ["reader@example.org"]
    assert smtp.handler.connections == 1


def test_421_at_mail_means_come_back_later_and_the_next_message_reconnects(smtp):
    smtp.faults.mail = "421 4.7.0 Too busy, try later"
    smtp.faults.times = 1
    mailer = mailer_for(smtp)
    with pytest.raises(ServerBusy) as failure:
        mailer.send(message(n=1))
    assert failure.value.code == 421
    mailer.send(message(n=2))
    mailer.close()
    assert [r.message["Subject"] for r in smtp.handler.wait_for(1)] == ["Tip 2"]
    assert smtp.handler.connections == 2


def test_a_4xx_to_our_sender_means_come_back_later(smtp):
    smtp.faults.mail = "451 4.7.1 Sending rate exceeded"
    with pytest.raises(ServerBusy):
        mailer_for(smtp).send(message())


@pytest.mark.parametrize(
    "reply,outcome",
    [
        ("550 5.1.1 No such user here", RecipientRejected),
        ("550 No such user here", RecipientRejected),
        ("553 Mailbox name not allowed", RecipientRejected),
        ("550 5.2.1 Mailbox disabled", RecipientRejected),
        ("554 5.7.1 <reader@example.org>: Relay access denied", MailerUnavailable),
        ("530 5.7.0 Authentication required", MailerUnavailable),
        ("550 5.7.1 Rejected by recipient policy", MessageRejected),
        ("552 5.2.2 Mailbox full", MessageRejected),
        ("554 Transaction failed", MessageRejected),
        ("451 4.3.0 Greylisted, try again", TemporaryFailure),
        ("452 4.2.2 Mailbox full for now", TemporaryFailure),
        ("421 4.3.2 Shutting down", ServerBusy),
    ],
)
def test_replies_at_rcpt_are_classified_by_what_they_say(smtp, reply, outcome):
    smtp.faults.rcpt["reader@example.org"] = reply
    with pytest.raises(outcome) as failure:
        mailer_for(smtp).send(message())
    assert type(failure.value) is outcome


def test_421_in_the_greeting_means_come_back_later():
    with GreetingServer("421 4.3.2 Too many connections") as server, pytest.raises(ServerBusy):
        SMTPMailer("127.0.0.1", server.port, timeout=5).send(message())


def test_451_at_rcpt_is_temporary(smtp):
    smtp.faults.rcpt["reader@example.org"] = "451 4.3.0 Mailbox temporarily unavailable"
    mailer = mailer_for(smtp)
    with pytest.raises(TemporaryFailure) as failure:
        mailer.send(message())
    assert failure.value.code == 451
    mailer.send(message(to="other@example.org", n=2))  # the connection is still usable
    mailer.close()
    assert smtp.handler.connections == 1


def test_550_at_rcpt_is_a_bounce(smtp):
    smtp.faults.rcpt["gone@example.org"] = "550 5.1.1 No such user"
    mailer = mailer_for(smtp)
    with pytest.raises(RecipientRejected) as failure:
        mailer.send(message(to="gone@example.org"))
    assert failure.value.code == 550
    assert "No such user" in str(failure.value)
    mailer.send(message(n=2))
    mailer.close()
    assert len(smtp.handler.wait_for(1)) == 1


def test_554_at_data_rejects_the_message_not_the_address(smtp):
    smtp.faults.data = "554 5.7.1 Message refused as spam"
    mailer = mailer_for(smtp)
    with pytest.raises(MessageRejected):
        mailer.send(message())
    mailer.close()


def test_550_5_1_1_at_data_is_a_bounce(smtp):
    smtp.faults.data = "550 5.1.1 Mailbox does not exist"
    with pytest.raises(RecipientRejected):
        mailer_for(smtp).send(message())


def test_451_at_data_is_temporary(smtp):
    smtp.faults.data = "451 4.3.0 Try again"
    with pytest.raises(TemporaryFailure):
        mailer_for(smtp).send(message())


def test_dropped_connection_is_temporary_and_recovers(smtp):
    smtp.faults.drop_at_data = True
    smtp.faults.times = 1
    mailer = mailer_for(smtp)
    with pytest.raises(TemporaryFailure):
        mailer.send(message(n=1))
    mailer.send(message(n=2))
    mailer.close()
    assert [r.message["Subject"] for r in smtp.handler.wait_for(1)] == ["Tip 2"]


def test_refused_connection_makes_the_mailer_unavailable():
    from tests.smtp_server import free_port

    mailer = SMTPMailer("127.0.0.1", free_port(), timeout=2)
    with pytest.raises(MailerUnavailable, match="cannot open an SMTP session"):
        mailer.send(message())


@pytest.mark.slow
def test_a_server_that_never_answers_times_out():
    with SilentServer() as silent:
        mailer = SMTPMailer("127.0.0.1", silent.port, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(MailerUnavailable):
            mailer.send(message())
        assert time.monotonic() - started < 5


def test_failed_login_makes_the_mailer_unavailable():
    with SMTPServer(credentials=("owner", "right")) as server:
        mailer = mailer_for(server, username="owner", password="wrong")
        with pytest.raises(MailerUnavailable, match="authentication failed") as failure:
            mailer.send(message())
        assert failure.value.code == 535
        assert server.received == []


def test_login_with_the_right_password_delivers():
    with SMTPServer(credentials=("owner", "p@ss word")) as server:
        mailer = mailer_from_url(f"smtp://owner:p%40ss%20word@127.0.0.1:{server.port}?tls=none")
        mailer.send(message())
        mailer.close()
        assert len(server.handler.wait_for(1)) == 1


def test_our_sender_refused_stops_delivery(smtp):
    smtp.faults.mail = "553 5.7.1 Sender address rejected: not owned by user"
    with pytest.raises(MailerUnavailable, match="refuses the sender"):
        mailer_for(smtp).send(message())


def test_starttls_with_certificate_checks(tmp_path):
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    certificate.configure_cert(server_context)
    cafile = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(cafile))
    with SMTPServer(tls_context=server_context, credentials=("owner", "secret")) as server:
        mailer = mailer_from_url(
            f"smtp://owner:secret@127.0.0.1:{server.port}?tls=starttls&cafile={cafile}"
        )
        mailer.send(message())
        mailer.close()
        assert len(server.handler.wait_for(1)) == 1

        untrusted = mailer_from_url(f"smtp://owner:secret@127.0.0.1:{server.port}?tls=starttls")
        with pytest.raises(MailerUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            untrusted.send(message())


def test_smtputf8_address_is_delivered_with_smtputf8(smtp):
    mailer = mailer_for(smtp)
    mailer.send(message(to="josé@example.org"))
    mailer.close()
    received = smtp.handler.wait_for(1)[0]
    assert received.rcpt_tos == ["josé@example.org"]
    assert "SMTPUTF8" in received.mail_options


@pytest.mark.parametrize(
    "url,expected",
    [
        ("smtp://mail.example.com", ("mail.example.com", 25, "none")),
        ("smtp://u:p@mail.example.com", ("mail.example.com", 587, "starttls")),
        ("smtp://u:p@mail.example.com:2525", ("mail.example.com", 2525, "starttls")),
        ("smtp://u:p@mail.example.com:25?tls=none", ("mail.example.com", 25, "none")),
        ("smtp://mail.example.com:587", ("mail.example.com", 587, "starttls")),
        ("smtp://mail.example.com:465", ("mail.example.com", 465, "ssl")),
        ("smtps://mail.example.com", ("mail.example.com", 465, "ssl")),
        ("smtp://mail.example.com?tls=starttls", ("mail.example.com", 587, "starttls")),
    ],
)
def test_mail_url_parsing_never_sends_a_password_in_the_clear_by_default(url, expected):
    mailer = mailer_from_url(url)
    assert (mailer.host, mailer.port, mailer.tls) == expected


@pytest.mark.parametrize("url", ["smtp://x?tls=maybe", "carrier-pigeon://coop", "http://x"])
def test_bad_mail_urls_are_refused(url):
    with pytest.raises(ValueError):
        mailer_from_url(url)


def test_implicit_tls_smtps(tmp_path):
    from aiosmtpd.controller import Controller

    from tests.smtp_server import FaultyHandler, free_port

    authority = trustme.CA()
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    cafile = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(cafile))
    handler = FaultyHandler()
    controller = Controller(
        handler, hostname="127.0.0.1", port=free_port(), ssl_context=server_context
    )
    controller.start()
    try:
        mailer = mailer_from_url(f"smtps://127.0.0.1:{controller.port}?cafile={cafile}")
        assert mailer.tls == "ssl"
        mailer.send(message())
        mailer.close()
        assert len(handler.wait_for(1)) == 1
    finally:
        controller.stop()


def test_a_421_then_a_hang_up_means_come_back_later():
    """With pipelining, the rest of the replies never come: the 421 is still the answer."""
    with HangUpServer() as server:
        mailer = SMTPMailer("127.0.0.1", server.port, timeout=5)
        with pytest.raises(ServerBusy):
            mailer.send(message())


def test_an_international_address_on_a_server_without_smtputf8_fails_only_that_email():
    with SMTPServer(pipelining=True) as server:
        mailer = SMTPMailer("127.0.0.1", server.port, timeout=5)
        # aiosmtpd offers SMTPUTF8 here; take it away as a server without it would.
        mailer.send(message())
        mailer._connection.esmtp_features.pop("smtputf8", None)
        with pytest.raises(MessageRejected, match="SMTPUTF8"):
            mailer.send(message(to="zoë@example.org"))
        mailer.send(message(n=2))  # the connection carries on
        mailer.close()
        assert len(server.handler.wait_for(2)) == 2


def test_a_pipelining_server_gets_pipelined_transactions(monkeypatch):
    """When PIPELINING is offered, smtplib's one-command-at-a-time sendmail is not used."""
    import smtplib

    def one_by_one(*args, **kwargs):
        raise AssertionError("sendmail used despite PIPELINING")

    monkeypatch.setattr(smtplib.SMTP, "sendmail", one_by_one)
    with SMTPServer(pipelining=True) as server:
        mailer = mailer_for(server)
        for n in range(3):
            mailer.send(message(n=n))
        mailer.close()
        assert len(server.handler.wait_for(3)) == 3
    with SMTPServer(pipelining=False) as server, pytest.raises(AssertionError, match="sendmail"):
        mailer_for(server).send(message())  # without PIPELINING, sendmail is the way


def test_lines_starting_with_a_dot_arrive_intact(smtp):
    """Dot-stuffing (RFC 5321 4.5.2): a line of '.' alone would otherwise end the message."""
    text = ".\n.. two dots\nplain line\n.last\n"
    mailer = mailer_for(smtp)
    mailer.send(
        Message(
            sender="Low Back Relief <hello@example.com>",
            to="reader@example.org",
            subject="Dots",
            text=text,
            html="<p>.</p>",
            date=datetime(2026, 11, 24, tzinfo=UTC),
            message_id="<dots@example.com>",
        )
    )
    mailer.close()
    (received,) = smtp.handler.wait_for(1)
    assert received.part("plain").replace("\r\n", "\n") == text


@given(
    st.binary(max_size=300) | st.lists(st.sampled_from([b".", b"\r\n", b"\n", b"a"])).map(b"".join)
)
def test_dot_stuffing_matches_smtplib(data):
    assert _dot_stuffed(data) == smtplib._quote_periods(data)


@pytest.mark.slow
@given(st.emails() | st.text(max_size=40))
def test_envelope_addresses_match_smtplib(address):
    assert _angle_address(address) == smtplib.quoteaddr(address)


def test_an_old_server_without_ehlo_refuses_an_international_address_before_any_command():
    with HeloOnlyServer() as server:
        mailer = SMTPMailer("127.0.0.1", server.port, timeout=5)
        try:
            with pytest.raises(AddressNotSupported, match="does not accept international"):
                mailer.send(message("zoë@example.org"))
            mailer.send(message("reader@example.org"))  # the connection is still good
        finally:
            mailer.close()
    assert server.delivered == 1
    assert server.commands.count(b"MAIL") == 1
