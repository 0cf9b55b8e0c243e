"""Provider SDK variables reach the catalog through Settings, not os.environ."""

from smartflow.config import PROVIDER_ENV_VARS, load_settings
from smartflow.provider_registry import provider_env_var_names


def test_settings_collect_every_variable_the_catalog_looks_up() -> None:
    assert set(provider_env_var_names()) <= set(PROVIDER_ENV_VARS)


def test_provider_keys_set_in_the_environment_are_carried_and_empty_ones_are_not() -> None:
    settings = load_settings(
        None, environ={"OPENAI_API_KEY": "sk-env", "ANTHROPIC_API_KEY": "", "UNRELATED": "x"}
    )
    assert dict(settings.provider_env) == {"OPENAI_API_KEY": "sk-env"}
