"""One typed settings object, read from ``SKINGPT_*`` environment variables.

Entry points build it once with :meth:`Settings.from_env` and pass it down; nothing else reads the
environment.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from skingpt.errors import ConfigError

_DTYPES = ("auto", "fp32", "bf16", "fp16")
_DEVICES = ("auto", "cpu", "cuda")
_QUANTIZE = ("none", "8bit", "4bit")
_BACKENDS = ("auto", "skingpt4", "transformers")
# What Telegram accepts as a webhook's secret_token.
_WEBHOOK_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")


@dataclass(frozen=True)
class GenerationSettings:
    """How the language model writes an answer (defaults follow the SkinGPT-4 demo)."""

    max_new_tokens: int = 300
    do_sample: bool = True
    top_p: float = 0.9
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    max_context_tokens: int = 2000
    max_seconds: float = 120.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.max_new_tokens <= self.max_context_tokens - 64:
            raise ConfigError(
                f"SKINGPT_MAX_NEW_TOKENS={self.max_new_tokens} must be between 1 and "
                f"SKINGPT_MAX_CONTEXT_TOKENS - 64 ({self.max_context_tokens - 64}), so that the "
                "photo and the question still fit."
            )
        if self.do_sample and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ConfigError(
                "Sampling needs SKINGPT_TEMPERATURE > 0 and 0 < SKINGPT_TOP_P <= 1; "
                "for deterministic answers set SKINGPT_DO_SAMPLE=false instead."
            )
        if self.max_seconds <= 0 or self.repetition_penalty <= 0:
            raise ConfigError("SKINGPT_MAX_SECONDS and SKINGPT_REPETITION_PENALTY must be > 0.")


@dataclass(frozen=True)
class Settings:
    """Everything the bot, the worker and ``skingpt ask`` can be told from the environment."""

    model: str = "tiny-random"
    weights: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    quantize: str = "none"
    backend: str = "auto"
    verify_weights: bool = True
    torch_threads: int | None = None
    script: str | None = None
    allow_scripted_model: bool = False
    generation: GenerationSettings = field(default_factory=GenerationSettings)

    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "skingpt"
    queue: str = "gpu"
    retention_seconds: int = 24 * 3600
    max_image_pixels: int = 40_000_000
    stored_image_side: int = 1024

    task_soft_time_limit: int = 240
    task_time_limit: int = 300
    visibility_timeout: int = 3600
    max_deliveries: int = 3
    max_queue_wait_seconds: int = 1800
    batch_size: int = 1
    batch_wait_ms: int = 50
    encryption_key: str | None = field(default=None, repr=False)
    max_jobs_per_user: int = 3
    store_memory_budget_mb: int = 0
    album_wait_seconds: float = 2.0
    status_interval_seconds: float = 5.0

    telegram_token: str | None = field(default=None, repr=False)
    telegram_api_url: str = "https://api.telegram.org/bot"
    telegram_file_url: str = "https://api.telegram.org/file/bot"
    allow_test_model: bool = False
    global_messages_per_second: float = 25.0
    chat_messages_per_second: float = 1.0
    group_messages_per_minute: float = 18.0
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_host: str = "127.0.0.1"
    webhook_port: int = 8443
    allowed_users: tuple[int, ...] = ()

    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ConfigError(
                f"SKINGPT_DTYPE must be one of {', '.join(_DTYPES)}, not {self.dtype!r}."
            )
        if self.device not in _DEVICES:
            raise ConfigError(
                f"SKINGPT_DEVICE must be one of {', '.join(_DEVICES)}, not {self.device!r}."
            )
        if self.backend not in _BACKENDS:
            raise ConfigError(
                f"SKINGPT_BACKEND must be one of {', '.join(_BACKENDS)}, not {self.backend!r}."
            )
        if self.quantize not in _QUANTIZE:
            raise ConfigError(
                f"SKINGPT_QUANTIZE must be one of {', '.join(_QUANTIZE)}, not {self.quantize!r}."
            )
        if self.quantize != "none" and self.device == "cpu":
            raise ConfigError(
                f"SKINGPT_QUANTIZE={self.quantize} needs a CUDA GPU, but SKINGPT_DEVICE=cpu. "
                "On CPU use SKINGPT_QUANTIZE=none with fp32 or bf16."
            )
        if self.model == "scripted" and not (self.script and self.allow_scripted_model):
            raise ConfigError(
                "SKINGPT_MODEL=scripted gives canned answers and exists only for tests: it needs "
                "SKINGPT_SCRIPT=<script.toml> and SKINGPT_ALLOW_SCRIPTED_MODEL=true."
            )
        if self.max_deliveries < 1:
            raise ConfigError("SKINGPT_MAX_DELIVERIES must be at least 1.")
        if self.encryption_key:
            _check_fernet_key(self.encryption_key)
        if self.max_jobs_per_user < 1:
            raise ConfigError("SKINGPT_MAX_JOBS_PER_USER must be at least 1.")
        if self.store_memory_budget_mb < 0:
            raise ConfigError(
                "SKINGPT_STORE_MEMORY_BUDGET_MB must be 0 (80% of Redis's maxmemory) or more."
            )
        if not 0 < self.album_wait_seconds <= 30:
            raise ConfigError("SKINGPT_ALBUM_WAIT_SECONDS must be more than 0 and at most 30.")
        if self.status_interval_seconds < 3:
            raise ConfigError(
                "SKINGPT_STATUS_INTERVAL_SECONDS must be at least 3: Telegram limits how often "
                "a message can be edited."
            )
        if self.retention_seconds < 60:
            raise ConfigError("SKINGPT_RETENTION_SECONDS must be at least 60.")
        if not 0 < self.task_soft_time_limit < self.task_time_limit:
            raise ConfigError(
                "SKINGPT_TASK_SOFT_TIME_LIMIT must be positive and below SKINGPT_TASK_TIME_LIMIT."
            )
        if not 1 <= self.batch_size <= 64:
            raise ConfigError(
                "SKINGPT_BATCH_SIZE must be from 1 (one job at a time per worker process) to 64."
            )
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise ConfigError("SKINGPT_BATCH_WAIT_MS must be from 0 to 10000 milliseconds.")
        if self.max_queue_wait_seconds < 10:
            raise ConfigError("SKINGPT_MAX_QUEUE_WAIT_SECONDS must be at least 10.")
        if self.visibility_timeout <= self.task_time_limit + self.max_queue_wait_seconds:
            raise ConfigError(
                f"SKINGPT_VISIBILITY_TIMEOUT ({self.visibility_timeout} s) must exceed "
                f"SKINGPT_TASK_TIME_LIMIT plus SKINGPT_MAX_QUEUE_WAIT_SECONDS "
                f"({self.task_time_limit + self.max_queue_wait_seconds} s), or Redis hands a "
                "job still waiting or running to a second worker. Raise the visibility timeout."
            )

        if self.webhook_url or self.webhook_secret:
            _check_webhook(self.webhook_url, self.webhook_secret, self.webhook_port)

    @property
    def is_test_model(self) -> bool:
        """True when no weights are configured and the preset is the untrained test model."""
        return self.model == "tiny-random" and not self.weights

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, /, **overrides: object
    ) -> Settings:
        """Read every ``SKINGPT_*`` variable; ``overrides`` (command-line flags) win."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            if f.name == "generation":
                continue
            raw = env.get("SKINGPT_" + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, raw, f.type)
        generation: dict[str, object] = {}
        for f in dataclasses.fields(GenerationSettings):
            raw = env.get("SKINGPT_" + f.name.upper())
            if raw is not None and raw != "":
                generation[f.name] = _parse(f.name, raw, f.type)
        for key, value in overrides.items():
            if value is None:
                continue
            if key in {f.name for f in dataclasses.fields(GenerationSettings)}:
                generation[key] = value
            else:
                values[key] = value
        return cls(generation=GenerationSettings(**generation), **values)  # type: ignore[arg-type]


def _check_fernet_key(key: str) -> None:
    try:
        from cryptography.fernet import Fernet

        Fernet(key.encode())
    except (ValueError, TypeError):
        raise ConfigError(
            "SKINGPT_ENCRYPTION_KEY is not a valid key: it must be 32 random bytes in URL-safe "
            "base64. Make one with `skingpt key`."
        ) from None


def _check_webhook(url: str | None, secret: str | None, port: int) -> None:
    if not url:
        raise ConfigError(
            "SKINGPT_WEBHOOK_SECRET is set but SKINGPT_WEBHOOK_URL is not: set both for webhook "
            "mode, or neither to poll Telegram."
        )
    if not url.startswith("https://"):
        raise ConfigError(
            "SKINGPT_WEBHOOK_URL must be the public https:// address Telegram posts updates to."
        )
    if not secret or not _WEBHOOK_SECRET.fullmatch(secret):
        raise ConfigError(
            "Webhook mode needs SKINGPT_WEBHOOK_SECRET: 1 to 256 characters of A-Z, a-z, 0-9, "
            "_ and -. Make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    if not 1 <= port <= 65535:
        raise ConfigError("SKINGPT_WEBHOOK_PORT must be between 1 and 65535.")


def _parse(name: str, raw: str, annotation: object) -> object:
    kind = str(annotation)
    env_name = "SKINGPT_" + name.upper()
    try:
        if kind.startswith("bool"):
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        if kind.startswith("tuple[int"):
            numbers = tuple(int(part) for part in raw.split(",") if part.strip())
            if not numbers:
                raise ValueError(raw)
            return numbers
    except ValueError:
        if kind.startswith("tuple[int"):
            raise ConfigError(
                f"{env_name} must be Telegram user ids separated by commas, e.g. 12345,67890."
            ) from None
        raise ConfigError(f"{env_name}={raw!r} is not a valid {kind.split(' ')[0]}.") from None
    return raw
