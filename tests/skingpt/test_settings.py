"""Settings come from SKINGPT_* variables, and unsafe combinations are refused."""

from __future__ import annotations

import pytest

from skingpt.errors import ConfigError
from skingpt.settings import Settings


def test_from_env_reads_typed_values_and_generation_settings() -> None:
    settings = Settings.from_env(
        {
            "SKINGPT_REDIS_URL": "redis://cache:6379/2",
            "SKINGPT_RETENTION_SECONDS": "3600",
            "SKINGPT_ALLOW_TEST_MODEL": "yes",
            "SKINGPT_MAX_NEW_TOKENS": "64",
            "SKINGPT_SEED": "11",
            "SKINGPT_TOP_P": "0.5",
        }
    )
    assert settings.redis_url == "redis://cache:6379/2"
    assert settings.retention_seconds == 3600
    assert settings.allow_test_model is True
    assert settings.generation.max_new_tokens == 64
    assert settings.generation.seed == 11
    assert settings.generation.top_p == 0.5


def test_from_env_defaults_follow_the_reference_demo() -> None:
    generation = Settings.from_env({}).generation
    assert (generation.max_new_tokens, generation.top_p, generation.temperature) == (300, 0.9, 1.0)
    assert generation.do_sample and generation.max_context_tokens == 2000


def test_from_env_overrides_win_over_the_environment() -> None:
    settings = Settings.from_env({"SKINGPT_MODEL": "a"}, model="tiny-random", seed=3)
    assert settings.model == "tiny-random" and settings.generation.seed == 3


def test_from_env_names_the_bad_variable() -> None:
    with pytest.raises(ConfigError, match="SKINGPT_RETENTION_SECONDS"):
        Settings.from_env({"SKINGPT_RETENTION_SECONDS": "a day"})
    with pytest.raises(ConfigError, match="SKINGPT_ALLOW_TEST_MODEL"):
        Settings.from_env({"SKINGPT_ALLOW_TEST_MODEL": "maybe"})


def test_settings_refuse_a_visibility_timeout_shorter_than_the_time_limit() -> None:
    with pytest.raises(ConfigError, match="VISIBILITY_TIMEOUT"):
        Settings.from_env({"SKINGPT_VISIBILITY_TIMEOUT": "200", "SKINGPT_TASK_TIME_LIMIT": "300"})


def test_settings_hide_the_token_from_repr() -> None:
    settings = Settings.from_env({"SKINGPT_TELEGRAM_TOKEN": "123:very-secret"})
    assert "very-secret" not in repr(settings)


def test_a_weights_folder_means_the_test_model_is_not_in_use() -> None:
    assert Settings.from_env({}).is_test_model
    assert not Settings.from_env({"SKINGPT_WEIGHTS": "/models/medgemma"}).is_test_model
    assert not Settings.from_env({"SKINGPT_MODEL": "skingpt4-llama2-13b"}).is_test_model


def test_settings_refuse_a_visibility_timeout_shorter_than_the_time_limit_and_queue_wait() -> None:
    limits = {"SKINGPT_TASK_TIME_LIMIT": "300", "SKINGPT_MAX_QUEUE_WAIT_SECONDS": "1800"}
    with pytest.raises(ConfigError, match="MAX_QUEUE_WAIT_SECONDS"):
        Settings.from_env({**limits, "SKINGPT_VISIBILITY_TIMEOUT": "2000"})
    assert Settings.from_env({**limits, "SKINGPT_VISIBILITY_TIMEOUT": "2200"})


def test_webhook_mode_needs_an_https_url_and_a_secret_telegram_accepts() -> None:
    base = {"SKINGPT_WEBHOOK_URL": "https://bot.example.org/telegram"}
    settings = Settings.from_env({**base, "SKINGPT_WEBHOOK_SECRET": "a-Z_9" * 10})
    assert settings.webhook_port == 8443 and settings.webhook_host == "127.0.0.1"
    assert "a-Z_9" not in repr(settings)
    for secret in ("", "has space", "semi;colon", "x" * 257):
        with pytest.raises(ConfigError, match="SKINGPT_WEBHOOK_SECRET"):
            Settings.from_env(base, webhook_secret=secret)
    with pytest.raises(ConfigError, match="https://"):
        Settings.from_env({"SKINGPT_WEBHOOK_URL": "http://x/t", "SKINGPT_WEBHOOK_SECRET": "s"})
    with pytest.raises(ConfigError, match="SKINGPT_WEBHOOK_URL is not"):
        Settings.from_env({"SKINGPT_WEBHOOK_SECRET": "s"})


def test_allowed_users_are_read_as_a_list_of_ids() -> None:
    assert Settings.from_env({}).allowed_users == ()
    settings = Settings.from_env({"SKINGPT_ALLOWED_USERS": "12345, 67890,"})
    assert settings.allowed_users == (12345, 67890)
    for bad in ("12345;678", "alice", " , "):
        with pytest.raises(ConfigError, match="SKINGPT_ALLOWED_USERS must be Telegram user ids"):
            Settings.from_env({"SKINGPT_ALLOWED_USERS": bad})


def test_batching_is_off_by_default_and_refuses_sizes_it_cannot_serve() -> None:
    default = Settings.from_env({})
    assert (default.batch_size, default.batch_wait_ms) == (1, 50)
    batched = Settings.from_env({"SKINGPT_BATCH_SIZE": "8", "SKINGPT_BATCH_WAIT_MS": "0"})
    assert (batched.batch_size, batched.batch_wait_ms) == (8, 0)
    with pytest.raises(ConfigError, match="SKINGPT_BATCH_SIZE"):
        Settings.from_env({"SKINGPT_BATCH_SIZE": "0"})
    with pytest.raises(ConfigError, match="SKINGPT_BATCH_WAIT_MS"):
        Settings.from_env({"SKINGPT_BATCH_WAIT_MS": "-1"})
