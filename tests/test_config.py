"""Settings: defaults, precedence, .env, the instance's own key, and refusing unsafe
production settings."""

from __future__ import annotations

import multiprocessing
import stat
from datetime import UTC, datetime

import pytest
from flask import Flask
from flask.sessions import SecureCookieSessionInterface

from service import create_app, secret_key
from service.config import DEV_SECRET_KEY, ConfigError, load_settings, settings_table
from service.tokens import Purpose, Tokens
from tests.conftest import settings_for
from tests.helpers import make_subscriber, services_of
from tests.test_admin import create_admin, sign_in

SAFE_PRODUCTION = {
    "APP_ENV": "production",
    "SECRET_KEY": "a-long-random-production-secret",
    "OWNER_POSTAL_ADDRESS": "1 Real Road, Realtown",
    "BASE_URL": "https://news.example.com",
    "MAIL_URL": "smtp://user:secret@smtp.example.com:587",
}


def test_defaults_need_no_configuration(tmp_path):
    settings = load_settings(environ={}, dotenv_path=tmp_path / "none")
    assert settings.APP_ENV == "development"
    assert settings.database_url.startswith("sqlite:///")
    assert settings.database_url.endswith("instance/newsletter.db")
    assert settings.MAIL_URL == "console:"
    assert settings.SECRET_KEY == ""  # no key is built in: the instance makes its own


def test_overrides_beat_environment_beat_dotenv(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("SITE_NAME=From dotenv\nBASE_URL=http://dotenv.example\nSEND_BATCH_SIZE=7\n")
    settings = load_settings(
        {"SITE_NAME": "From overrides"},
        environ={"SITE_NAME": "From environment", "BASE_URL": "http://env.example"},
        dotenv_path=dotenv,
    )
    assert settings.SITE_NAME == "From overrides"
    assert settings.BASE_URL == "http://env.example"
    assert settings.SEND_BATCH_SIZE == 7


def test_dotenv_path_variable_chooses_or_disables_the_file(tmp_path):
    dotenv = tmp_path / "custom.env"
    dotenv.write_text("SITE_NAME=Custom\n")
    assert load_settings(environ={"DOTENV_PATH": str(dotenv)}).SITE_NAME == "Custom"
    assert load_settings(environ={"DOTENV_PATH": ""}).SITE_NAME == "Low Back Relief"


def test_production_refuses_the_default_secret_key():
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        load_settings({**SAFE_PRODUCTION, "SECRET_KEY": DEV_SECRET_KEY}, environ={})
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        create_app({**SAFE_PRODUCTION, "SECRET_KEY": DEV_SECRET_KEY})


@pytest.mark.parametrize(
    "change,setting",
    [
        ({"SECRET_KEY": "short"}, "SECRET_KEY"),
        ({"SECRET_KEY": ""}, "SECRET_KEY must be set in production"),
        ({"SECRET_KEY": "a" * 16}, "SECRET_KEY cannot be used: it is easy to guess"),
        ({"SECRET_KEY": " " * 32}, "SECRET_KEY cannot be used: it is easy to guess"),
        ({"SECRET_KEY": "0123456789abcdef"}, "SECRET_KEY cannot be used: it is easy to guess"),
        ({"OWNER_POSTAL_ADDRESS": ""}, "OWNER_POSTAL_ADDRESS"),
        ({"OWNER_POSTAL_ADDRESS": " "}, "OWNER_POSTAL_ADDRESS must be your full postal address"),
        ({"OWNER_POSTAL_ADDRESS": "\t 1 Road \n"}, "OWNER_POSTAL_ADDRESS"),
        ({"BASE_URL": "http://news.example.com"}, "BASE_URL"),
        ({"BASE_URL": "https://"}, "BASE_URL must be the web app's public address"),
        ({"BASE_URL": "https:///admin"}, "BASE_URL must be the web app's public address"),
        ({"MAIL_URL": "console:"}, "MAIL_URL must name your SMTP server"),
        ({"MAIL_URL": "file:///var/mail/out"}, "MAIL_URL must name your SMTP server"),
    ],
)
def test_production_refuses_unsafe_settings(change, setting):
    with pytest.raises(ConfigError, match=setting):
        load_settings({**SAFE_PRODUCTION, **change}, environ={})


def test_production_refuses_to_start_without_mail_url():
    """Unset, MAIL_URL is the console backend, which would print live links into the logs."""
    settings = {key: value for key, value in SAFE_PRODUCTION.items() if key != "MAIL_URL"}
    with pytest.raises(ConfigError, match="MAIL_URL"):
        load_settings(settings, environ={})


def test_the_old_public_key_is_refused_everywhere():
    with pytest.raises(ConfigError, match="old built-in key"):
        load_settings({"SECRET_KEY": DEV_SECRET_KEY}, environ={})


def _keyless(database_url, tmp_path, **overrides):
    return create_app(settings_for(database_url, tmp_path, SECRET_KEY="", **overrides))


def test_without_a_secret_key_the_instance_makes_one_and_keeps_it(database_url, tmp_path):
    first = _keyless(database_url, tmp_path)
    key_file = tmp_path / "instance" / secret_key.KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert len(key) == 64 and int(key, 16)
    assert first.config["SECRET_KEY"] == key != DEV_SECRET_KEY
    assert key == services_of(first).settings.SECRET_KEY
    # A later start (or another process on the same folder) signs with the same key.
    second = _keyless(database_url, tmp_path)
    assert second.config["SECRET_KEY"] == key
    now = datetime(2026, 11, 24, tzinfo=UTC)
    token = services_of(first).tokens.make(Purpose.UNSUBSCRIBE, 7, now=now)
    assert services_of(second).tokens.read(Purpose.UNSUBSCRIBE, token, now=now).subscriber_id == 7
    for app in (first, second):
        services_of(app).database.dispose()


def _instance_key(folder: str) -> str:
    from pathlib import Path

    return secret_key.instance_secret_key(Path(folder))


@pytest.mark.slow
def test_processes_starting_together_agree_on_one_key(tmp_path):
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        keys = pool.map(_instance_key, [str(tmp_path / "instance")] * 12)
    assert len(set(keys)) == 1
    assert [p.name for p in (tmp_path / "instance").iterdir()] == [secret_key.KEY_FILE]


def test_a_key_file_others_can_read_is_made_private(tmp_path):
    folder = tmp_path / "instance"
    key = _instance_key(str(folder))
    (folder / secret_key.KEY_FILE).chmod(0o644)
    assert _instance_key(str(folder)) == key
    assert stat.S_IMODE((folder / secret_key.KEY_FILE).stat().st_mode) == 0o600


def test_a_damaged_key_file_is_a_clear_error(tmp_path):
    folder = tmp_path / "instance"
    folder.mkdir()
    (folder / secret_key.KEY_FILE).write_text("\n")
    with pytest.raises(ConfigError, match="does not hold a usable key"):
        _instance_key(str(folder))


def test_production_never_writes_a_key(tmp_path):
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        create_app({**SAFE_PRODUCTION, "SECRET_KEY": "", "INSTANCE_DIR": str(tmp_path)})
    assert list(tmp_path.iterdir()) == []


def _resigned(payload: dict, key: str) -> str:
    forger = Flask("forger")
    forger.secret_key = key
    return SecureCookieSessionInterface().get_signing_serializer(forger).dumps(payload)


@pytest.mark.slow
def test_a_session_signed_with_the_old_public_key_opens_nothing(database_url, tmp_path):
    """The probe's forged cookie: a real session's contents, signed with the old constant."""
    app = _keyless(database_url, tmp_path, APP_ENV="development")
    create_admin(app)
    client = app.test_client()
    assert sign_in(client).status_code == 303
    interface = SecureCookieSessionInterface()
    cookie = client.get_cookie(interface.get_cookie_name(app), domain="newsletter.test").value
    payload = interface.get_signing_serializer(app).loads(cookie)
    for key, opens in ((app.config["SECRET_KEY"], True), (DEV_SECRET_KEY, False)):
        forged = app.test_client()
        forged.set_cookie(
            interface.get_cookie_name(app), _resigned(payload, key), domain="newsletter.test"
        )
        response = forged.get("/admin/subscribers")
        assert (response.status_code == 200) is opens, key
    services_of(app).database.dispose()


def test_a_link_token_signed_with_the_old_public_key_is_refused(database_url, tmp_path):
    app = _keyless(database_url, tmp_path, APP_ENV="development")
    services = services_of(app)
    with services.database.begin() as session:
        reader = make_subscriber(session, "r@example.com", now=services.clock())
    client = app.test_client()
    for tokens, status in ((services.tokens, 200), (Tokens(DEV_SECRET_KEY), 404)):
        token = tokens.make(Purpose.UNSUBSCRIBE, reader.id, now=services.clock())
        assert client.get(f"/unsubscribe/{token}").status_code == status
    services.database.dispose()


def test_production_refuses_to_send_an_smtp_password_in_the_clear():
    plain = "smtp://user:secret@smtp.example.com:25?tls=none"
    with pytest.raises(ConfigError, match="unencrypted"):
        load_settings({**SAFE_PRODUCTION, "MAIL_URL": plain}, environ={})
    # A relay on the same machine is fine, and so is the default (STARTTLS with a user).
    local = "smtp://user:secret@127.0.0.1:25?tls=none"
    assert load_settings({**SAFE_PRODUCTION, "MAIL_URL": local}, environ={})
    default = "smtp://user:secret@smtp.example.com"
    assert load_settings({**SAFE_PRODUCTION, "MAIL_URL": default}, environ={})


def test_production_starts_with_safe_settings():
    assert load_settings(SAFE_PRODUCTION, environ={}).APP_ENV == "production"


@pytest.mark.parametrize(
    "setting,value,message",
    [
        ("APP_ENV", "staging", "APP_ENV"),
        ("DEFAULT_TIME_ZONE", "Mars/Base", "DEFAULT_TIME_ZONE"),
        ("SEND_BATCH_SIZE", "many", "SEND_BATCH_SIZE must be a number"),
        ("SEND_BATCH_SIZE", "0", "SEND_BATCH_SIZE"),
        ("BASE_URL", "news.example.com", "BASE_URL"),
        ("MAIL_URL", "carrier-pigeon://coop", "MAIL_URL"),
        ("MAIL_URL", "smtp://host?tls=maybe", "MAIL_URL"),
        ("SEND_LEASE_SECONDS", "60", "SEND_LEASE_SECONDS must be at least 5 x SMTP_TIMEOUT"),
        ("NO_SUCH_SETTING", "1", "unknown setting"),
    ],
)
def test_invalid_settings_name_themselves(setting, value, message):
    with pytest.raises(ConfigError, match=message):
        load_settings({setting: value}, environ={})


def test_every_setting_is_documented_in_the_readme():
    from service.config import PROJECT_ROOT

    readme = (PROJECT_ROOT / "README.md").read_text()
    for name, _default, meaning in settings_table():
        assert meaning, f"{name} has no help text"
        assert f"`{name}`" in readme, f"README does not document {name}"


@pytest.mark.parametrize("name", ["SITE_NAME", "MAIL_FROM", "MAIL_REPLY_TO"])
def test_a_header_setting_with_a_line_break_stops_the_start(tmp_path, name):
    with pytest.raises(ConfigError, match=f"{name} must be one line"):
        load_settings(
            {"INSTANCE_DIR": str(tmp_path), name: "Low Back\nBcc: everyone@example.com"},
            environ={},
            dotenv_path=None,
        )
