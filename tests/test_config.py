"""Settings: defaults, precedence, .env, and refusing unsafe production settings."""

from __future__ import annotations

import pytest

from service import create_app
from service.config import DEV_SECRET_KEY, ConfigError, load_settings, settings_table

SAFE_PRODUCTION = {
    "APP_ENV": "production",
    "SECRET_KEY": "a-long-random-production-secret",
    "OWNER_POSTAL_ADDRESS": "1 Real Road, Realtown",
    "BASE_URL": "https://news.example.com",
}


def test_defaults_need_no_configuration(tmp_path):
    settings = load_settings(environ={}, dotenv_path=tmp_path / "none")
    assert settings.APP_ENV == "development"
    assert settings.database_url.startswith("sqlite:///")
    assert settings.database_url.endswith("instance/newsletter.db")
    assert settings.MAIL_URL == "console:"
    assert settings.SECRET_KEY == DEV_SECRET_KEY


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
        ({"OWNER_POSTAL_ADDRESS": ""}, "OWNER_POSTAL_ADDRESS"),
        ({"BASE_URL": "http://news.example.com"}, "BASE_URL"),
    ],
)
def test_production_refuses_unsafe_settings(change, setting):
    with pytest.raises(ConfigError, match=setting):
        load_settings({**SAFE_PRODUCTION, **change}, environ={})


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
