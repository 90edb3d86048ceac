"""Settings: defaults, TOML < env < arguments, messages that say what to do."""

from __future__ import annotations

import pytest

from refitd.core.errors import ConfigError
from refitd.core.settings import Settings, default_home


def test_defaults_point_into_home(tmp_path) -> None:
    s = Settings.load(home=tmp_path)
    assert s.database_url == f"sqlite:///{tmp_path / 'refitd.db'}"
    assert s.serving.host == "127.0.0.1" and s.model.name == "refitd"


def test_home_resolution_order(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("REFITD_HOME", raising=False)
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/svc:/other")
    assert default_home() == tmp_path / "svc"
    monkeypatch.setenv("REFITD_HOME", str(tmp_path / "mine"))
    assert default_home() == tmp_path / "mine"


def test_sources_toml_then_env_then_arguments(monkeypatch, tmp_path) -> None:
    (tmp_path / "refitd.toml").write_text("[serving]\nport = 9001\nmax_batch_size = 16\n[drift]\nwindow_size = 500\n")
    monkeypatch.setenv("REFITD_SERVING__PORT", "9002")
    s = Settings.load(home=tmp_path)
    assert (s.serving.port, s.serving.max_batch_size, s.drift.window_size) == (9002, 16, 500)
    s = Settings.load(home=tmp_path, serving={"port": 9003})
    assert s.serving.port == 9003


@pytest.mark.parametrize(
    ("toml", "match"),
    [
        ("[drift]\nwindow_size = 50\nmin_window = 100\n", r"drift.window_size must be ≥ drift.min_window \(100\); got 50"),
        ("[training]\nbatch_size = 0\n", r"training.batch_size must be ≥ 1; got 0"),
        ("[database]\nurl = 'mysql://x'\n", r"database.url must start with sqlite:/// or postgresql\+psycopg://"),
        ("[serving]\nprot = 1\n", r"serving.prot: Extra inputs are not permitted"),
        ("[serving]\nqueue_size = 64\n", r"serving.queue_size must be ≥ serving.max_batch_size \(32\) and "
                                         r"serving.max_texts_per_request \(256\); got 64"),
        ("[serving]\nfeedback_measure_sources = []\n", r"serving.feedback_measure_sources is empty: .* unset it"),
        ("[serving]\nfeedback_measure_sources = ['audit']\n",
         r"serving.feedback_measure_sources must be among serving.feedback_sources \(api, review, import\); got audit"),
        ("[training]\ntopics = ['airline', 'self-driving']\n",
         r"unknown topic\(s\) 'self-driving'; the bundled corpus's topics are airline, apple, self_driving"),
    ],
)
def test_invalid_settings_say_what_to_do(tmp_path, toml, match) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=match):
        Settings.load(path, home=tmp_path)


def test_missing_config_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Settings.load(tmp_path / "nope.toml")


def test_updated_settings_are_validated_and_children_get_every_field(tmp_path) -> None:
    s = Settings.load(home=tmp_path, serving={"admin_token": "s3cret"})
    with pytest.raises(ConfigError, match="training.batch_size must be ≥ 1; got 0"):
        s.updated({"training": {"batch_size": 0}})
    child = Settings.from_json(s.updated({"training": {"epochs": 1.5}}).to_json())
    assert child.training.epochs == 1.5 and child.serving.admin_token.get_secret_value() == "s3cret"
    assert child.home == tmp_path and child.model_dump() == s.updated({"training": {"epochs": 1.5}}).model_dump()
    with pytest.raises(ConfigError, match="log_level must be one of"):
        Settings.from_json(s.to_json().replace('"log_level": "INFO"', '"log_level": "LOUD"'))


@pytest.mark.parametrize("name", ["", "org/model"])
def test_a_model_name_v2_could_not_route_is_refused(tmp_path, name: str) -> None:
    with pytest.raises(ConfigError, match="model.name must be non-empty and without '/'"):
        Settings.load(home=tmp_path, model={"name": name})


def test_the_quick_profile_is_one_validated_transform(tmp_path) -> None:
    q = Settings.load(home=tmp_path).quick()
    assert (q.training.max_train_rows, q.training.max_test_rows, q.model.max_length) == (400, 500, 32)
    assert q.training.freeze_layers >= 4 and q.quick().model_dump() == q.model_dump()  # idempotent
    unfrozen = Settings.load(home=tmp_path, training={"freeze_layers": 0, "unfreeze_every_epochs": 0}).quick()
    assert unfrozen.training.freeze_layers == 0  # freezing off stays off (a model whose layers cannot be frozen)


@pytest.mark.parametrize(("given", "mode"), [(None, "run"), ("run", "run"), ("off", "off"), ("on", "on"), ("ON", "on"),
                                             ("true", "on"), ("false", "off"), (True, "on"), (False, "off"),
                                             (1, "on"), (0, "off"), ("y", "on"), ("No", "off")])
def test_spin_has_three_modes_and_reads_the_old_booleans(tmp_path, given, mode) -> None:
    s = Settings.load(home=tmp_path, **({} if given is None else {"serving": {"spin": given}}))
    assert s.serving.spin == mode


def test_spin_names_its_modes_when_wrong(tmp_path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[serving]\nspin = 'sometimes'\n")
    with pytest.raises(ConfigError, match="serving.spin"):
        Settings.load(path, home=tmp_path)
