"""Settings: defaults, the TOML file, environment and flags, and their errors."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from smartflow.config import (
    ConfigError,
    ModelConfig,
    ServerSettings,
    Settings,
    load_settings,
)

REPO_CONFIG = Path(__file__).resolve().parents[1] / "config.toml"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


def test_no_file_gives_the_built_in_defaults() -> None:
    settings = load_settings(None, environ={})
    assert settings.server == ServerSettings()
    assert settings.server.host == "127.0.0.1" and settings.server.port == 8080
    assert [m.name for m in settings.models] == ["mock-gpt"]
    assert settings.source == ""


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[server]\nport = "8080"\n', "server.port: expected int, got str"),
        ("[server]\nprot = 1\n", "server.prot: unknown key"),
        ("[proxy]\nstream_keepalive_interval = -1.0\n",
         "proxy.stream_keepalive_interval: must be >= 0"),
        ("[server]\naccess_log = 1\n", "server.access_log: expected bool, got int"),
        ("[server]\nport = 70000\n", "server.port: must be 0-65535"),
        ("[supervisor]\ncrash_loop_window = \"10s\"\n",
         "supervisor.crash_loop_window: expected float, got str"),
        ("[nonsense]\nx = 1\n", "nonsense: unknown section"),
        ('[[models]]\nname = "m"\nprovider = "skynet"\n', "models[0].provider: unknown provider"),
        ('[[models]]\nprovider = "mock"\n', "models[0].name: required key is missing"),
        ('[[models]]\nname = "m"\nprovider = "mock"\ntags = "a"\n',
         "models[0].tags: expected array, got str"),
        ("[server\n", "invalid TOML"),
    ],
)
def test_a_bad_file_is_rejected_with_the_key_path(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, toml), environ={})
    assert message in str(caught.value)


def test_a_missing_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(str(tmp_path / "absent.toml"), environ={})


def test_precedence_is_defaults_then_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9001\nworkers = 3\nhost = \"127.0.0.2\"\n")
    environ = {"SMARTFLOW_SERVER__PORT": "9002", "SMARTFLOW_SERVER__WORKERS": "4"}

    from_file = load_settings(path, environ={})
    from_env = load_settings(path, environ=environ)
    from_flags = load_settings(path, overrides={"server": {"port": 9003}}, environ=environ)

    assert (from_file.server.port, from_file.server.workers) == (9001, 3)
    assert (from_env.server.port, from_env.server.workers) == (9002, 4)
    assert (from_flags.server.port, from_flags.server.workers) == (9003, 4)
    assert from_flags.server.host == "127.0.0.2"  # untouched keys keep the file's value
    assert from_flags.server.shutdown_timeout == ServerSettings().shutdown_timeout


def test_a_bad_environment_value_names_its_key_path() -> None:
    with pytest.raises(ConfigError, match="server.port: expected int, got str"):
        load_settings(None, environ={"SMARTFLOW_SERVER__PORT": "eighty"})


def test_env_secrets_are_resolved_once_at_load(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[auth]\nmaster_key = "env:TEST_MASTER"\n'
        '[[models]]\nname = "gpt"\nprovider = "openai"\napi_key = "env:TEST_OPENAI_KEY"\n'
        '[[models]]\nname = "other"\nprovider = "openai"\napi_key = "env:TEST_UNSET"\n',
    )
    settings = load_settings(path, environ={"TEST_MASTER": "mk-1", "TEST_OPENAI_KEY": "sk-2"})
    assert settings.auth.master_key == "mk-1"
    assert settings.models[0].api_key == "sk-2"
    assert settings.models[1].api_key == ""  # unset: that model's calls fail, not the load


def test_settings_are_frozen() -> None:
    settings = load_settings(None, environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.server.port = 1  # type: ignore[misc]


def test_the_repository_config_file_is_valid_and_equals_the_defaults() -> None:
    from_file = load_settings(str(REPO_CONFIG), environ={})
    defaults = load_settings(None, environ={})
    assert dataclasses.replace(from_file, source="") == defaults


def test_the_repository_config_file_shows_and_comments_every_key() -> None:
    text = REPO_CONFIG.read_text()
    document = tomllib.loads(text)
    for section, cls in (("server", "ServerSettings"), ("supervisor", "SupervisorSettings"),
                         ("state", "StateSettings"), ("proxy", "ProxySettings"),
                         ("auth", "AuthSettings"), ("budgets", "BudgetSettings"),
                         ("vault", "VaultSettings"), ("routing", "RoutingSettings"),
                         ("alerts", "AlertSettings")):
        default = Settings.__dataclass_fields__[section].default_factory()  # type: ignore[misc]
        names = {f.name for f in dataclasses.fields(default)}
        assert set(document[section]) == names, f"[{section}] keys differ from {cls}"
        lines = text.splitlines()
        for name in names:
            index = next(i for i, line in enumerate(lines) if line.startswith(f"{name} = "))
            assert lines[index - 1].startswith("#") or lines[index - 2].startswith("#"), name
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    for name in model_fields:
        assert name in text, f"models key {name} is not documented"
    assert document["models"][0]["name"] == "mock-gpt"
    assert "# api_key = \"env:OPENAI_API_KEY\"" in text


def test_routing_and_alerts_from_the_seed_variables(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[routing]\nstrategy = "weighted"\n'
                    '[routing.provider_daily_budgets]\nopenai = 5.0\ngemini = 1.0\n'
                    '[[routing.fallback_chains]]\nname = "c1"\nmodel = "gpt"\n'
                    'targets = ["a", "b"]\nretries = 2\n')
    settings = load_settings(str(path), environ={
        "SMARTFLOW_ROUTING_STRATEGY": "latency",
        "SMARTFLOW_PROVIDER_BUDGETS": "openai:100, anthropic:50",
        "SLACK_WEBHOOK_URL": "https://hooks.example/slack",
        "DISCORD_WEBHOOK_URL": "https://hooks.example/discord"})
    routing = settings.routing
    assert routing.strategy == "latency"
    # The variable sets the providers it names; the file's others stay.
    assert dict(routing.provider_daily_budgets) == {"openai": 100.0, "anthropic": 50.0,
                                                    "gemini": 1.0}
    assert routing.fallback_chains[0].targets == ("a", "b")
    assert routing.fallback_chains[0].retries == 2
    assert settings.alerts.slack_webhook_url == "https://hooks.example/slack"
    assert settings.alerts.discord_webhook_url == "https://hooks.example/discord"
    assert settings.alerts.teams_webhook_url == ""


@pytest.mark.parametrize(("toml", "environ", "message"), [
    ('[routing]\nstrategy = "fastest"\n', {}, "routing.strategy: unknown strategy"),
    ("", {"SMARTFLOW_ROUTING_STRATEGY": "nope"}, "routing.strategy: unknown strategy"),
    ("", {"SMARTFLOW_PROVIDER_BUDGETS": "openai=100"}, "SMARTFLOW_PROVIDER_BUDGETS"),
    ("", {"SMARTFLOW_PROVIDER_BUDGETS": "nosuch:1"}, "provider_daily_budgets.nosuch"),
    ('[routing.strategy_by_model]\ngpt = "x"\n', {}, "routing.strategy_by_model.gpt"),
    ("[[routing.fallback_chains]]\nname = \"c\"\ntargets = []\n", {},
     "routing.fallback_chains[0].targets"),
    ("[[routing.fallback_chains]]\nname = \"c\"\n", {},
     "routing.fallback_chains[0].targets: required key is missing"),
    ('[[models]]\nname = "m"\nprovider = "mock"\nweight = 0\n', {}, "models[0].weight"),
    (('[[models]]\nname = "m"\nprovider = "mock"\nid = "x"\n'
      '[[models]]\nname = "n"\nprovider = "mock"\nid = "x"\n'), {}, "models[1].id"),
    ("[alerts]\nbudget_thresholds = [0.0]\n", {}, "alerts.budget_thresholds"),
])
def test_bad_routing_settings_are_refused(tmp_path: Path, toml: str, environ: dict[str, str],
                                          message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as refused:
        load_settings(str(path), environ=environ)
    assert message in str(refused.value)
