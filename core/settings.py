"""refitd's one configuration object.

Sources, highest first: arguments given to :meth:`Settings.load`, environment
variables ``REFITD_*`` (nested with ``__``: ``REFITD_SERVING__PORT=9000``; a secret may
instead come from a file, see :mod:`refitd.core.credentials`), then the TOML file
(``--config``, else ``$REFITD_CONFIG``, else ``<home>/refitd.toml``).
Build it once at an entry point and pass it down.
"""

from __future__ import annotations

import json
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from refitd.core.credentials import EnvWithSecretFiles
from refitd.core.errors import ConfigError, validation_problems
from refitd.core.sections import GateSection, HpoSection, ModelSection, RefitSection, TrainingSection
from refitd.core.service_sections import (
    DatabaseSection,
    DriftSection,
    PrefectSection,
    SchedulerSection,
    ServingSection,
    StorageSection,
)

_toml_path: ContextVar[Path | None] = ContextVar("refitd_toml_path", default=None)


def default_home() -> Path:
    """State directory: ``$REFITD_HOME``, else systemd's ``$STATE_DIRECTORY``, else ~/.local/share/refitd."""
    if os.environ.get("REFITD_HOME"):
        return Path(os.environ["REFITD_HOME"]).expanduser()
    if os.environ.get("STATE_DIRECTORY"):
        # systemd may pass several colon-separated directories; the first is ours.
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    return Path("~/.local/share/refitd").expanduser()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="REFITD_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    home: Path = Field(default_factory=default_home, description="State directory: database, models, reports.")
    log_level: str = Field("INFO", description="Log level: DEBUG, INFO, WARNING, ERROR.")
    model: ModelSection = Field(default_factory=ModelSection, description="The model being served and refit.")
    training: TrainingSection = Field(default_factory=TrainingSection, description="Fine-tuning.")
    gate: GateSection = Field(default_factory=GateSection, description="When a candidate may replace the champion.")
    hpo: HpoSection = Field(default_factory=HpoSection, description="Hyperparameter search during refits.")
    serving: ServingSection = Field(default_factory=ServingSection, description="HTTP serving.")
    drift: DriftSection = Field(default_factory=DriftSection, description="Drift watch.")
    scheduler: SchedulerSection = Field(default_factory=SchedulerSection, description="Scheduled jobs.")
    refit: RefitSection = Field(default_factory=RefitSection, description="When and how the daemon starts refits.")
    prefect: PrefectSection = Field(default_factory=PrefectSection, description="Refits on a Prefect deployment.")
    database: DatabaseSection = Field(default_factory=DatabaseSection, description="The SQL store.")
    storage: StorageSection = Field(default_factory=StorageSection, description="Where model artifacts live.")

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"log_level must be one of DEBUG, INFO, WARNING, ERROR; got {v!r}")
        return v.upper()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _toml_path.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, EnvWithSecretFiles(settings_cls, env_settings)]
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: Path | str | None = None, **overrides: Any) -> Settings:
        """Build settings from overrides, env and TOML; raise ConfigError saying what to fix."""
        path = _find_config(config_file, overrides.get("home"))
        token = _toml_path.set(path)
        try:
            return cls(**overrides)
        except ValidationError as exc:
            where = f" (config file {path})" if path else ""
            raise ConfigError(validation_problems(exc, subject="settings") + where) from None
        finally:
            _toml_path.reset(token)

    def updated(self, changes: dict[str, Any]) -> Settings:
        """A copy with ``changes`` (nested dicts by section) merged in, validated like a load."""
        merged = _merge(self.model_dump(), changes)
        try:
            return type(self).model_validate(merged)
        except ValidationError as exc:
            raise ConfigError(validation_problems(exc, subject="settings")) from None

    def quick(self) -> Settings:
        """The quick profile (demos, tests, smoke runs): a few hundred rows, short texts, short training (at least
        four frozen layers, unless freezing is off: a model whose layers cannot be frozen, such as ALBERT's shared
        ones, runs with ``training.freeze_layers = 0``)."""
        t = self.training
        return self.updated({"model": {"max_length": min(self.model.max_length, 32)},
                             "training": {"max_train_rows": min(t.max_train_rows or 400, 400),
                                          "max_test_rows": min(t.max_test_rows or 500, 500),
                                          "epochs": 2.0, "freeze_layers": t.freeze_layers and max(t.freeze_layers, 4),
                                          "learning_rate": 3e-4, "batch_size": 16}})

    # Handing settings to a child process ----------------------------------------------

    def to_json(self) -> str:
        """Every field, secrets included, for :meth:`from_json` in a child process (write it 0600)."""
        return json.dumps(_reveal(self.model_dump()), default=str)

    @classmethod
    def from_json(cls, text: str) -> Settings:
        """Settings handed over by :meth:`to_json`: validated again, no env or TOML consulted."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise ConfigError(validation_problems(exc, subject="settings")) from None

    # Derived locations ---------------------------------------------------------------

    @property
    def database_url(self) -> str:
        """The database URL, password included: for the engine only; show it with ``redact_url``."""
        url = self.database.url
        return url.get_secret_value() if url is not None else f"sqlite:///{self.home / 'refitd.db'}"

    @property
    def models_dir(self) -> Path:
        """The local folder of published versions: ``storage.models_url`` when it is a folder, else <home>/models.

        ConfigError when the versions live in an object store: open them with ``ArtifactStore.from_settings``.
        """
        url = self.storage.models_url
        if url is None:
            return self.home / "models"
        if "://" in url:
            raise ConfigError(f"storage.models_url is {url}, not a folder: open the versions with "
                              "ArtifactStore.from_settings(settings)")
        return Path(url)

    @property
    def models_cache_dir(self) -> Path:
        """Where versions read from an object store are cached, verified, one folder each."""
        return self.home / "cache" / "models"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def spool_dir(self) -> Path:
        return self.home / "spool"

    @property
    def runfile(self) -> Path:
        """Where a running `refitd run` says it listens (written when ready, removed on a clean stop)."""
        return self.home / "daemon.json"


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _reveal(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_reveal(v) for v in value]
    return value


def _find_config(config_file: Path | str | None, home: Any) -> Path | None:
    if config_file is not None:
        path = Path(config_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    if os.environ.get("REFITD_CONFIG"):
        path = Path(os.environ["REFITD_CONFIG"]).expanduser()
        if not path.is_file():
            raise ConfigError(f"REFITD_CONFIG points at {path}, which does not exist")
        return path
    candidate = (Path(home).expanduser() if home else default_home()) / "refitd.toml"
    return candidate if candidate.is_file() else None
