"""DKIM: keys made by `flask dkim generate`, emails signed by the dispatcher on their way
through a real SMTP server, verified with dkimpy against the DNS record the command
printed; the settings checked at startup."""

from __future__ import annotations

import os
import re
import stat

import dkim
import pytest
from dkim.canonicalization import Relaxed
from hypothesis import given
from hypothesis import strategies as st

from service import create_app
from service.config import ConfigError
from service.dkim import generate_key, relaxed_body, relaxed_header, write_key
from tests.conftest import settings_for
from tests.helpers import add_pending, run_pass, sign_up
from tests.smtp_server import SMTPServer

DOMAIN = "newsletter.test"


def generate(app, tmp_path, kind: str = "rsa", **options: str):
    """Run `dkim generate`; (key path, DNS name, TXT value as DNS would hand it over)."""
    path = tmp_path / f"{kind}.pem"
    args = ["dkim", "generate", "--selector", "s1", "--domain", DOMAIN, "--type", kind]
    args += ["--output", str(path)]
    for name, value in options.items():
        args += [f"--{name}", value]
    result = app.test_cli_runner().invoke(args=args)
    assert result.exit_code == 0, result.output
    name = re.search(r"name:\s+(\S+)", result.output)[1]
    strings = re.findall(r'"([^"]*)"', result.output.split("value:", 1)[1].splitlines()[0])
    assert all(len(part) <= 255 for part in strings)
    assert f"DKIM_PRIVATE_KEY_PATH={path}" in result.output
    return path, name, "".join(strings).encode()


def dns(name: str, record: bytes):
    def lookup(asked: bytes, timeout: float = 5) -> bytes | None:
        return record if asked.decode().rstrip(".") == name else None

    return lookup


@pytest.fixture
def smtp():
    """A server that offers PIPELINING: the path that declares SIZE before the signature
    is made."""
    with SMTPServer(pipelining=True) as server:
        yield server


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_emails_signed_by_the_dispatcher_verify(make_app, smtp, tmp_path, kind):
    path, name, record = generate(make_app(), tmp_path, kind)
    assert name == f"s1._domainkey.{DOMAIN}"
    assert record.startswith(f"v=DKIM1; k={kind}; p=".encode())
    app = make_app(
        MAIL_URL=smtp.url,
        DKIM_PRIVATE_KEY_PATH=str(path),
        DKIM_SELECTOR="s1",
        DKIM_DOMAIN=DOMAIN,
        MAIL_RETURN_PATH="bounces+{token}@newsletter.test",
    )
    sign_up(app.test_client(), "reader@example.com", first_name="Zoë")
    add_pending(app, 2)
    assert run_pass(app).sent == 3
    for received in smtp.handler.wait_for(3):
        assert received.data.startswith(b"DKIM-Signature:")
        assert dkim.verify(received.data, dnsfunc=dns(name, record))
        # MAIL FROM declared the size before the signature was made: it was right.
        assert f"SIZE={len(received.data)}" in received.mail_options
        fields = dkim.util.parse_tag_value(
            received.message["DKIM-Signature"].encode().replace(b"\r\n", b"")
        )
        assert fields[b"a"] == (b"rsa-sha256" if kind == "rsa" else b"ed25519-sha256")
        assert fields[b"c"] == b"relaxed/relaxed"
        assert (fields[b"d"], fields[b"s"]) == (DOMAIN.encode(), b"s1")
        signed = {part.strip() for part in fields[b"h"].split(b":")}
        assert {
            b"from",
            b"to",
            b"subject",
            b"date",
            b"message-id",
            b"list-unsubscribe",
            b"list-unsubscribe-post",
            b"list-id",
            b"feedback-id",
            b"mime-version",
            b"content-type",
        } <= signed
        # RFC 8058: a one-click header changed on the way no longer verifies.
        changed = received.data.replace(
            b"List-Unsubscribe-Post: List-Unsubscribe=One-Click",
            b"List-Unsubscribe-Post: List-Unsubscribe=One-Clack",
        )
        assert changed != received.data
        assert not dkim.verify(changed, dnsfunc=dns(name, record))
        body = received.data.replace(b"</html>", b"</html><!-- -->", 1)
        assert not dkim.verify(body, dnsfunc=dns(name, record))
        # Headers added on the way (a second Subject or List-Unsubscribe, a Reply-To or Cc
        # of someone else's) no longer verify either: every name is signed once more.
        head, _, rest = received.data.partition(b"\r\nFrom:")
        for added in (
            b"Subject: Something else",
            b"List-Unsubscribe: <https://attacker.example/u>",
            b"Reply-To: attacker@attacker.example",
            b"Cc: someone@attacker.example",
        ):
            forged = head + b"\r\n" + added + b"\r\nFrom:" + rest
            assert not dkim.verify(forged, dnsfunc=dns(name, record)), added


@pytest.mark.slow
def test_another_key_in_dns_does_not_verify(make_app, smtp, tmp_path):
    path, name, _ = generate(make_app(), tmp_path, "ed25519")
    _, _, other = generate(make_app(), tmp_path / "other", "ed25519")
    app = make_app(
        MAIL_URL=smtp.url, DKIM_PRIVATE_KEY_PATH=str(path), DKIM_SELECTOR="s1", DKIM_DOMAIN=DOMAIN
    )
    add_pending(app, 1)
    run_pass(app)
    (received,) = smtp.handler.wait_for(1)
    assert not dkim.verify(received.data, dnsfunc=dns(name, other))


def test_generate_writes_a_private_key_only_its_owner_reads_and_never_overwrites(app, tmp_path):
    path, _, _ = generate(app, tmp_path, "ed25519")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    before = path.read_bytes()
    result = app.test_cli_runner().invoke(
        args=["dkim", "generate", "--selector", "s1", "--domain", DOMAIN, "--output", str(path)]
    )
    assert result.exit_code != 0 and "exists" in result.output
    assert path.read_bytes() == before


@pytest.mark.slow
def test_generate_splits_a_long_rsa_record_into_255_byte_strings(app, tmp_path):
    _, _, record = generate(app, tmp_path, "rsa", bits="4096")
    assert len(record) > 255  # and generate() checked each string's length


def test_generate_refuses_a_short_rsa_key_and_a_bad_name(app, tmp_path):
    runner = app.test_cli_runner()
    short = runner.invoke(
        args=["dkim", "generate", "--selector", "s1", "--domain", DOMAIN, "--bits", "512"]
    )
    assert short.exit_code != 0 and "1024" in short.output
    bad = runner.invoke(args=["dkim", "generate", "--selector", "s 1", "--domain", DOMAIN])
    assert bad.exit_code != 0 and "not a DNS name" in bad.output


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ({"DKIM_SELECTOR": "s1"}, "DKIM_PRIVATE_KEY_PATH, DKIM_DOMAIN missing"),
        ({"DKIM_PRIVATE_KEY_PATH": "/k.pem", "DKIM_SELECTOR": "s1"}, "DKIM_DOMAIN missing"),
        ({"DKIM_PRIVATE_KEY_PATH": "/k.pem", "DKIM_DOMAIN": DOMAIN}, "DKIM_SELECTOR missing"),
    ],
)
def test_dkim_settings_come_together(tmp_path, given, missing):
    with pytest.raises(ConfigError, match=missing):
        create_app(settings_for("sqlite://", tmp_path, **given))


def _with_key(tmp_path, path) -> dict[str, object]:
    return settings_for(
        "sqlite://",
        tmp_path,
        DKIM_PRIVATE_KEY_PATH=str(path),
        DKIM_SELECTOR="s1",
        DKIM_DOMAIN=DOMAIN,
    )


def test_a_missing_or_broken_key_stops_the_start(tmp_path):
    with pytest.raises(ConfigError, match="DKIM_PRIVATE_KEY_PATH: cannot read"):
        create_app(_with_key(tmp_path, tmp_path / "nowhere.pem"))
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        create_app(_with_key(tmp_path, broken))


def test_a_key_of_another_kind_is_refused(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec

    path = tmp_path / "ec.pem"
    write_key(ec.generate_private_key(ec.SECP256R1()), path)
    with pytest.raises(ConfigError, match="RSA or Ed25519"):
        create_app(_with_key(tmp_path, path))


def test_a_bad_selector_or_domain_is_refused(tmp_path):
    path = tmp_path / "k.pem"
    write_key(generate_key("ed25519"), path)
    settings = _with_key(tmp_path, path)
    with pytest.raises(ConfigError, match="DKIM_SELECTOR"):
        create_app({**settings, "DKIM_SELECTOR": "s_1;x"})
    with pytest.raises(ConfigError, match="DKIM_DOMAIN"):
        create_app({**settings, "DKIM_DOMAIN": "localhost"})


lines = st.lists(
    st.text(alphabet=" \t\r\nab<>=\u00e9", max_size=12).map(lambda s: s.encode("utf-8")),
    max_size=8,
)


@given(lines, st.booleans())
def test_the_quick_relaxed_body_is_dkimpys(parts, final_newline):
    body = b"\r\n".join(parts) + (b"\r\n" if final_newline else b"")
    assert relaxed_body(body) == Relaxed.canonicalize_body(body)


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_a_signed_message_knows_its_size_before_its_signature_is_made(kind):
    from datetime import UTC, datetime

    from service.dkim import DkimSigner
    from service.mail import Message

    signer = DkimSigner(generate_key(kind), selector="s1", domain=DOMAIN)
    for subject in ("Hi", "A subject long enough to be folded, " * 4):
        message = Message(
            sender="Low Back Relief <hello@newsletter.test>",
            to="reader@example.com",
            subject=subject,
            text="Hello\n",
            html="<p>Hello</p>",
            date=datetime(2026, 11, 24, tzinfo=UTC),
            message_id="<1.x@newsletter.test>",
            signer=signer,
        )
        prepared = message.prepare()
        assert prepared.size == len(prepared.data())
        assert message.prepare() is prepared  # made once, signed once


header_values = st.text(alphabet=" \t\r\nab:;=\u00e9", max_size=20).map(lambda s: s.encode("utf-8"))


@given(st.sampled_from([b"Subject", b"LIST-ID ", b"x"]), header_values)
def test_the_quick_relaxed_header_is_dkimpys(name, value):
    assert [relaxed_header(name, value)] == Relaxed.canonicalize_headers([(name, value)])
