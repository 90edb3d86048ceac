"""Secret settings: where they may come from, and how they are shown.

A secret is any setting typed ``SecretStr`` (``serving.admin_token``, ``serving.feedback_token``,
``database.url``, ``drift.webhook_url``). Besides the usual ``REFITD_<SECTION>__<KEY>`` variable, each
can be read from a file, so it never has to sit in an environment or a config file:

* ``REFITD_<SECTION>__<KEY>_FILE=/path`` (Docker / Kubernetes secrets), or
* systemd credentials: ``$CREDENTIALS_DIRECTORY/refitd.<section>.<key>``
  (``LoadCredential=refitd.serving.admin_token:/etc/refitd/admin-token``).

Within the environment, a direct value beats ``*_FILE``, which beats a credential; all of them beat the
TOML file and lose to arguments. One trailing newline is stripped. A secret is never printed:
``redact_url`` is the one way a secret URL is shown.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from refitd.core.errors import ConfigError

log = logging.getLogger(__name__)

CREDENTIAL_PREFIX = "refitd."


def secret_settings(settings_cls: type[BaseSettings]) -> list[tuple[str, str]]:
    """Every ``(section, key)`` whose field is a ``SecretStr``."""
    out = []
    for section, info in settings_cls.model_fields.items():
        model = info.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            out += [(section, key) for key, field in model.model_fields.items()
                    if field.annotation is SecretStr or SecretStr in get_args(field.annotation)]
    return out


def file_variable(settings_cls: type[BaseSettings], section: str, key: str) -> str:
    """``REFITD_SERVING__ADMIN_TOKEN_FILE`` for ``("serving", "admin_token")``."""
    config = settings_cls.model_config
    return f"{config.get('env_prefix', '')}{section}{config.get('env_nested_delimiter', '__')}{key}_FILE".upper()


def credential_name(section: str, key: str) -> str:
    """The systemd credential holding a secret: ``refitd.serving.admin_token``."""
    return f"{CREDENTIAL_PREFIX}{section}.{key}"


class EnvWithSecretFiles(PydanticBaseSettingsSource):
    """The process environment (pydantic-settings' env source), where a secret may also be given by file."""

    def __init__(self, settings_cls: type[BaseSettings], env: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self.env = env

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ builds the whole mapping

    def __call__(self) -> dict[str, Any]:
        data = self.env()
        environ = {name.upper(): value for name, value in os.environ.items()}
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        for section, key in secret_settings(self.settings_cls):
            given = data.get(section)
            if isinstance(given, dict):
                given.pop(f"{key}_file", None)  # the env source reads REFITD_X__Y_FILE as a key y_file
            variable = file_variable(self.settings_cls, section, key)
            if isinstance(given, dict) and given.get(key) is not None:
                if environ.get(variable):
                    log.warning("%s and %s are both set; the direct value wins", variable.removesuffix("_FILE"),
                                variable)
                continue
            if environ.get(variable):
                value = read_secret_file(Path(environ[variable]), origin=variable)
            elif credentials and (Path(credentials) / credential_name(section, key)).exists():
                value = read_secret_file(Path(credentials) / credential_name(section, key),
                                         origin=f"systemd credential {credential_name(section, key)}")
            else:
                continue
            data[section] = {**(given if isinstance(given, dict) else {}), key: value}
        return data


def read_secret_file(path: Path, *, origin: str) -> str:
    """A secret file's text less one trailing newline; ConfigError naming ``origin`` and the path, never the text."""
    try:
        with open(path, encoding="utf-8") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            text = handle.read()
    except OSError as exc:
        raise ConfigError(f"{origin} names {path}, which cannot be read: {exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{origin} names {path}, which is not UTF-8 text") from None
    if mode & 0o077:
        log.warning("%s: %s is open to group or others (mode %04o); make it 0600 or 0400, or pass it with "
                    "LoadCredential=", origin, path, mode & 0o777)
    text = text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")
    if not text:
        raise ConfigError(f"{origin} names {path}, which is empty")
    return text


def redact_url(url: str | SecretStr | None) -> str:
    """A secret URL as it may be shown: scheme and host only (``https://hooks.slack.com/…``).

    A SQLite URL is shown whole: it is a local path and holds no credentials.
    """
    if url is None:
        return "-"
    text = url.get_secret_value() if isinstance(url, SecretStr) else url
    if text.startswith("sqlite:"):
        return text
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<hidden URL>"
    if not parts.scheme or not host:
        return "<hidden URL>"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}/…"
