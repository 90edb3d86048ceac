"""Secrets from files (*_FILE, systemd credentials), their precedence, and that they are never printed."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from refitd.core.credentials import credential_name, file_variable, redact_url, secret_settings
from refitd.core.errors import ConfigError
from refitd.core.settings import Settings

SECRETS = {
    ("serving", "admin_token"): "admin-s3cret",
    ("serving", "feedback_token"): "feedback-s3cret",
    ("database", "url"): "postgresql+psycopg://refitd:pa55word@db.internal:5432/refitd",
    ("drift", "webhook_url"): "https://hooks.slack.com/services/T000/B000/XXXXsecretXXXX",
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    for section, key in SECRETS:
        variable = file_variable(Settings, section, key)
        monkeypatch.delenv(variable, raising=False)
        monkeypatch.delenv(variable.removesuffix("_FILE"), raising=False)


def _secret(settings: Settings, section: str, key: str) -> str | None:
    value = getattr(getattr(settings, section), key)
    return None if value is None else value.get_secret_value()


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_the_four_secrets_are_the_secret_settings() -> None:
    assert sorted(secret_settings(Settings)) == sorted(SECRETS)
    assert file_variable(Settings, "serving", "admin_token") == "REFITD_SERVING__ADMIN_TOKEN_FILE"
    assert credential_name("database", "url") == "refitd.database.url"


@pytest.mark.parametrize(("section", "key"), list(SECRETS))
def test_each_secret_from_a_file_variable(monkeypatch, tmp_path, section, key) -> None:
    path = _write(tmp_path / "secret", SECRETS[section, key] + "\n")
    monkeypatch.setenv(f"REFITD_{section.upper()}__{key.upper()}_FILE", str(path))
    settings = Settings.load(home=tmp_path)
    assert _secret(settings, section, key) == SECRETS[section, key]


@pytest.mark.parametrize(("section", "key"), list(SECRETS))
def test_each_secret_from_a_systemd_credential(monkeypatch, tmp_path, section, key) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    _write(credentials / f"refitd.{section}.{key}", SECRETS[section, key], mode=0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    settings = Settings.load(home=tmp_path)
    assert _secret(settings, section, key) == SECRETS[section, key]
    others = [s for s in SECRETS if s != (section, key)]
    assert all(_secret(settings, *other) is None for other in others)  # an absent credential is simply unset


def test_precedence_argument_env_file_credential_toml(monkeypatch, tmp_path) -> None:
    (tmp_path / "refitd.toml").write_text('[serving]\nadmin_token = "from-toml"\nport = 9001\n')
    assert _secret(Settings.load(home=tmp_path), "serving", "admin_token") == "from-toml"

    credentials = tmp_path / "credentials"
    credentials.mkdir()
    _write(credentials / "refitd.serving.admin_token", "from-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert _secret(Settings.load(home=tmp_path), "serving", "admin_token") == "from-credential"

    monkeypatch.setenv("REFITD_SERVING__ADMIN_TOKEN_FILE", str(_write(tmp_path / "token", "from-file\n")))
    assert _secret(Settings.load(home=tmp_path), "serving", "admin_token") == "from-file"

    monkeypatch.setenv("REFITD_SERVING__ADMIN_TOKEN", "from-env")
    settings = Settings.load(home=tmp_path)
    assert _secret(settings, "serving", "admin_token") == "from-env"
    assert settings.serving.port == 9001  # the rest of the section still comes from TOML

    settings = Settings.load(home=tmp_path, serving={"admin_token": "from-argument"})
    assert _secret(settings, "serving", "admin_token") == "from-argument"


def test_only_one_trailing_newline_is_stripped(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("REFITD_SERVING__ADMIN_TOKEN_FILE", str(_write(tmp_path / "t", " tok \n\n")))
    assert _secret(Settings.load(home=tmp_path), "serving", "admin_token") == " tok \n"
    monkeypatch.setenv("REFITD_SERVING__ADMIN_TOKEN_FILE", str(_write(tmp_path / "t", "tok\r\n")))
    assert _secret(Settings.load(home=tmp_path), "serving", "admin_token") == "tok"


def test_missing_file_names_the_variable_and_the_path(monkeypatch, tmp_path) -> None:
    missing = tmp_path / "nowhere" / "token"
    monkeypatch.setenv("REFITD_DATABASE__URL_FILE", str(missing))
    with pytest.raises(ConfigError, match="REFITD_DATABASE__URL_FILE") as info:
        Settings.load(home=tmp_path)
    assert str(missing) in str(info.value) and "No such file" in str(info.value)


def test_unreadable_or_empty_file_is_an_error_that_never_shows_the_contents(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("REFITD_SERVING__FEEDBACK_TOKEN_FILE", str(tmp_path))  # a directory
    with pytest.raises(ConfigError, match="REFITD_SERVING__FEEDBACK_TOKEN_FILE names .* cannot be read"):
        Settings.load(home=tmp_path)
    monkeypatch.setenv("REFITD_SERVING__FEEDBACK_TOKEN_FILE", str(_write(tmp_path / "empty", "\n")))
    with pytest.raises(ConfigError, match="which is empty"):  # an empty token would open the route to anyone
        Settings.load(home=tmp_path)
    (tmp_path / "latin1").write_bytes(b"s3cr\xe9t")
    monkeypatch.setenv("REFITD_SERVING__FEEDBACK_TOKEN_FILE", str(tmp_path / "latin1"))
    with pytest.raises(ConfigError, match="not UTF-8") as info:
        Settings.load(home=tmp_path)
    assert "s3cr" not in str(info.value)


def test_a_file_others_may_read_is_used_with_a_warning(monkeypatch, tmp_path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="refitd")
    monkeypatch.setenv("REFITD_SERVING__ADMIN_TOKEN_FILE", str(_write(tmp_path / "t", "open-s3cret", mode=0o644)))
    assert _secret(Settings.load(home=tmp_path), "serving", "admin_token") == "open-s3cret"
    assert "0644" in caplog.text and str(tmp_path / "t") in caplog.text and "open-s3cret" not in caplog.text
    caplog.clear()
    monkeypatch.setenv("REFITD_SERVING__ADMIN_TOKEN_FILE", str(_write(tmp_path / "t", "closed", mode=0o600)))
    Settings.load(home=tmp_path)
    assert caplog.text == ""


def test_secrets_survive_the_hand_over_to_a_child_and_nothing_else_prints_them(monkeypatch, tmp_path) -> None:
    for (section, key), value in SECRETS.items():
        monkeypatch.setenv(file_variable(Settings, section, key), str(_write(tmp_path / f"{section}.{key}", value)))
    settings = Settings.load(home=tmp_path)
    child = Settings.from_json(settings.updated({"training": {"epochs": 1.5}}).to_json())
    assert child.training.epochs == 1.5
    assert {s: _secret(child, *s) for s in SECRETS} == SECRETS
    assert child.database_url == SECRETS["database", "url"]
    for shown in (repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())):
        assert not any(value in shown for value in SECRETS.values())


def test_errors_about_a_secret_url_show_no_more_than_its_scheme_and_host(tmp_path) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load(home=tmp_path, drift={"webhook_url": "ftp://user:pw@files.example/hook-s3cret"})
    assert "ftp://files.example/…" in str(info.value) and "s3cret" not in str(info.value)
    with pytest.raises(ConfigError, match="with a host") as info:  # a port no client could send to
        Settings.load(home=tmp_path, drift={"webhook_url": "https://hooks.example:44x/hook-s3cret"})
    assert "s3cret" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        Settings.load(home=tmp_path, database={"url": "pa55word-without-scheme"})
    assert "pa55word" not in str(info.value)


def test_redact_url() -> None:
    assert redact_url(SECRETS["drift", "webhook_url"]) == "https://hooks.slack.com/…"
    assert redact_url(SECRETS["database", "url"]) == "postgresql+psycopg://db.internal:5432/…"
    assert redact_url("http://[::1]:8080/x?token=1") == "http://[::1]:8080/…"
    assert redact_url("sqlite:////var/lib/refitd/refitd.db") == "sqlite:////var/lib/refitd/refitd.db"
    assert redact_url("not a url") == "<hidden URL>" and redact_url(None) == "-"
