"""The ``skingpt`` command: ``ask`` (one photo, this process), ``bot`` and ``worker`` (Telegram
with Redis and Celery), ``run`` (offline clinic mode, one process), ``key`` and ``weights``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skingpt.errors import ConfigError, ImageRejected, ModelUnavailable
from skingpt.settings import Settings

if TYPE_CHECKING:
    from skingpt.store import Store

logger = logging.getLogger("skingpt")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the process exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(None, **_overrides(args))
        quiet = args.command in {"ask", "weights", "key", "health"}
        _configure_logging(args.log_level or ("WARNING" if quiet else settings.log_level))
        return int(args.run(settings, args))
    except (ConfigError, ModelUnavailable) as error:
        print(f"skingpt {args.command}: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skingpt",
        description="Dermatology triage with SkinGPT-4. It helps; it never replaces a doctor.",
    )
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING (default: SKINGPT_LOG_LEVEL)")
    commands = parser.add_subparsers(dest="command", required=True)

    ask = commands.add_parser("ask", help="answer a question about a photo, in this process")
    ask.add_argument("photo", type=Path, help="a skin photo (JPEG, PNG, ...)")
    ask.add_argument("question", nargs="?", default=None, help="the first question")
    ask.add_argument(
        "--then",
        action="append",
        default=[],
        metavar="QUESTION",
        help="a follow-up question about the same photo (repeatable)",
    )
    _model_options(ask)
    ask.add_argument("--seed", type=int, help="seed the sampling for a reproducible answer")
    ask.add_argument(
        "--language", default="en", help="answer language: en, es, fr or ar (default en)"
    )
    ask.add_argument("--max-new-tokens", type=int, help="longest answer, in tokens")
    ask.set_defaults(run=run_ask)

    bot = commands.add_parser("bot", help="run the Telegram bot (needs Redis and a token)")
    bot.add_argument(
        "--allow-test-model",
        action="store_true",
        default=None,
        help="serve even though SKINGPT_MODEL is the untrained tiny-random model "
        "(only for tests, never for real users)",
    )
    bot.set_defaults(run=run_bot)

    run = commands.add_parser(
        "run",
        help="offline clinic mode: bot and model in this process, no Redis; with no Telegram "
        "token, a local web chat",
    )
    _model_options(run)
    run.add_argument(
        "--host", default="127.0.0.1", help="web chat address (default 127.0.0.1: this machine)"
    )
    run.add_argument("--port", type=int, default=8080, help="web chat port (default 8080)")
    run.add_argument(
        "--allow-test-model",
        action="store_true",
        default=None,
        help="serve the untrained tiny-random model (only for tests and demonstrations)",
    )
    run.set_defaults(run=run_offline)

    health = commands.add_parser(
        "health",
        help="check that the bot or the workers of this host are alive, have their model and "
        "still consume jobs (exit status 0 only when they do)",
    )
    health.add_argument("role", choices=("bot", "worker"))
    health.add_argument(
        "--host", help="the host whose processes to check (default: this one; '*' for all)"
    )
    health.add_argument(
        "--stall-seconds",
        type=float,
        default=60.0,
        help="a job waiting this long while a worker sits idle fails the check (default 60)",
    )
    health.set_defaults(run=run_health)

    key = commands.add_parser("key", help="print a new key for SKINGPT_ENCRYPTION_KEY")
    key.set_defaults(run=run_key)

    worker = commands.add_parser("worker", help="run a Celery worker that answers queued jobs")
    _model_options(worker)
    worker.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="worker processes, each with its own copy of the model (default 1; with "
        "SKINGPT_BATCH_SIZE above 1 the worker is one process running that many jobs at once)",
    )
    worker.set_defaults(run=run_worker)

    for command in (bot, worker, run):
        command.add_argument(
            "--allow-scripted-model",
            action="store_true",
            default=None,
            help="accept SKINGPT_MODEL=scripted (canned answers; only for tests)",
        )

    weights = commands.add_parser("weights", help="convert and inspect model weights")
    actions = weights.add_subparsers(dest="action", required=True)
    convert = actions.add_parser(
        "convert", help="turn SkinGPT-4's published files into a folder the worker loads"
    )
    convert.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        help="SkinGPT-4 checkpoint holding llama_proj (.pth)",
    )
    convert.add_argument(
        "--llama",
        type=Path,
        required=True,
        help="Llama-2-13b-chat folder in the transformers layout",
    )
    convert.add_argument("--vision", type=Path, help="LAVIS eva_vit_g.pth")
    convert.add_argument("--qformer", type=Path, help="LAVIS blip2_pretrained_flant5xxl.pth")
    convert.add_argument(
        "--blip2-hub",
        type=Path,
        help="Salesforce/blip2-flan-t5-xxl folder, instead of --vision/--qformer",
    )
    convert.add_argument("--out", type=Path, required=True, help="new model folder")
    convert.add_argument(
        "--preset",
        default="skingpt4-llama2-13b",
        help="vision and Q-Former sizes (default: skingpt4-llama2-13b)",
    )
    convert.add_argument(
        "--dtype",
        choices=("fp16", "bf16", "fp32"),
        default="fp16",
        help="storage dtype (default fp16, as the reference runs the LLM)",
    )
    convert.add_argument(
        "--vit-precision",
        choices=("fp16", "fp32"),
        default="fp16",
        help="round the ViT's Linear and Conv weights through fp16, as the "
        "reference does (default fp16)",
    )
    convert.set_defaults(run=run_convert)
    fetch = actions.add_parser(
        "fetch", help="download a known model from the Hugging Face hub (resumes if cut)"
    )
    fetch.add_argument(
        "name",
        help="one of: medgemma-4b-it, derm-llava-1.5-7b, llama-2-13b-chat, blip2-flan-t5-xxl",
    )
    fetch.add_argument("--revision", help="branch, tag or commit (default: the main branch)")
    fetch.add_argument("--cache-dir", type=Path, help="hub cache folder (default: HF_HOME's)")
    fetch.add_argument(
        "--endpoint",
        help="a hub mirror to download from (default: HF_ENDPOINT or the Hugging Face hub)",
    )
    fetch.set_defaults(run=run_fetch)
    inspect = actions.add_parser("inspect", help="say what a checkpoint file or folder holds")
    inspect.add_argument("path", type=Path)
    inspect.set_defaults(run=run_inspect)
    return parser


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="preset name (default: SKINGPT_MODEL or tiny-random)")
    parser.add_argument("--weights", help="converted model folder (default: SKINGPT_WEIGHTS)")
    parser.add_argument("--device", help="auto, cpu or cuda")
    parser.add_argument("--dtype", help="auto, fp32, bf16 or fp16")
    parser.add_argument("--quantize", help="none, 8bit or 4bit (CUDA only; needs the gpu extra)")


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    names = (
        "model",
        "weights",
        "device",
        "dtype",
        "quantize",
        "seed",
        "max_new_tokens",
        "allow_test_model",
        "allow_scripted_model",
    )
    return {name: getattr(args, name, None) for name in names}


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
    )
    # httpx logs every request URL at INFO, and Bot API URLs contain the token.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    if level.upper() != "DEBUG":
        # Progress bars of weight loading are noise in `ask` output and in service logs.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def run_ask(settings: Settings, args: argparse.Namespace) -> int:
    """Load the model here, run the first analysis and any follow-ups, print each reply."""
    from skingpt.i18n import gettext_for, negotiate
    from skingpt.imaging import load_image, normalise
    from skingpt.model.modeling import load_model
    from skingpt.pipeline import ANALYSIS, FOLLOWUP, Analyzer
    from skingpt.prompts import DEFAULT_QUESTION, Turn
    from skingpt.replies import Outcome, format_plain
    from skingpt.report import compose

    language = negotiate(args.language)
    _ = gettext_for(language)
    try:
        data = args.photo.read_bytes()
    except OSError as error:
        print(f"skingpt ask: cannot read {args.photo}: {error.strerror}", file=sys.stderr)
        return 2
    try:
        image = normalise(
            load_image(data, max_pixels=settings.max_image_pixels),
            max_side=settings.stored_image_side,
        )
    except ImageRejected as rejected:
        print(f"skingpt ask: {rejected.tell(_)}", file=sys.stderr)
        return 2
    analyzer = Analyzer(load_model(settings), settings.generation)
    history: list[Turn] = []
    questions = [(ANALYSIS, args.question or DEFAULT_QUESTION)]
    questions += [(FOLLOWUP, question) for question in args.then]
    for kind, question in questions:
        analysis = analyzer.analyse(image, history, question, kind=kind, language=language)
        outcome = Outcome.ANSWERED if any(analysis.answers.values()) else Outcome.EMPTY
        blocks, _findings = compose(
            kind=kind,
            outcome=outcome,
            answers=analysis.answers,
            history=history,
            question=question,
            language=language,
            model_name=analysis.model_name,
            untrained=analysis.untrained,
        )
        if args.then:
            print(f"> {question}\n")
        print(format_plain(blocks, _))
        print()
        history += analysis.turns
    return 0


def run_health(settings: Settings, args: argparse.Namespace) -> int:
    """Print each health check of the role's processes on one host; 0 when all pass."""
    import socket

    from skingpt.health import check

    host = args.host or socket.gethostname()
    verdicts = check(
        _store(settings),
        args.role,
        host=None if host == "*" else host,
        time_limit=settings.task_time_limit,
        stall_seconds=args.stall_seconds,
    )
    for verdict in verdicts:
        print(f"{args.role} {verdict.name}: {'ok' if verdict.ok else 'FAIL'} ({verdict.detail})")
    return 0 if all(verdict.ok for verdict in verdicts) else 1


def run_key(settings: Settings, args: argparse.Namespace) -> int:
    """Print a new random key for encrypting photos at rest."""
    from cryptography.fernet import Fernet

    print(Fernet.generate_key().decode())
    return 0


def run_convert(settings: Settings, args: argparse.Namespace) -> int:
    """Convert the published checkpoints into one safetensors model folder."""
    import torch

    from skingpt.model.convert import convert
    from skingpt.model.presets import get_preset

    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    result = convert(
        out=args.out,
        preset=get_preset(args.preset),
        llama=args.llama,
        checkpoint=args.checkpoint,
        vision=args.vision,
        qformer=args.qformer,
        blip2_hub=args.blip2_hub,
        dtype=dtypes[args.dtype],
        vit_precision=args.vit_precision,
    )
    print(f"Wrote {args.out}: {len(result.tensors)} tensors.")
    for reason, count in sorted(result.dropped.items()):
        print(f"  dropped {count:5d}: {reason}")
    return 0


def run_fetch(settings: Settings, args: argparse.Namespace) -> int:
    """Download a known model into the hub cache and say how to use it."""
    from skingpt.model.hub import KNOWN_MODELS, fetch

    folder = fetch(
        args.name, revision=args.revision, cache_dir=args.cache_dir, endpoint=args.endpoint
    )
    model = KNOWN_MODELS[args.name]
    print(f"{model.repo_id} is in {folder}")
    print(f"Licence: {model.licence}. Use: {model.use.replace('<folder>', str(folder))}")
    return 0


def run_inspect(settings: Settings, args: argparse.Namespace) -> int:
    """Print what a checkpoint holds, as JSON."""
    import json

    from skingpt.model.checkpoints import describe

    print(json.dumps(describe(args.path), indent=2))
    return 0


def run_bot(settings: Settings, args: argparse.Namespace) -> int:
    """Serve Telegram users by long polling, or through a webhook when SKINGPT_WEBHOOK_URL is
    set; answers come from the workers through Redis."""
    # Opt in to python-telegram-bot's coming timedelta durations (silences a warning per 429).
    os.environ.setdefault("PTB_TIMEDELTA", "1")
    from telegram import Update

    from bot.app import build_application
    from worker.app import create_celery
    from worker.queues import CeleryQueue

    _refuse_test_model(settings)
    store = _store(settings)
    _check_redis_keeps_jobs(store)
    jobs = CeleryQueue(create_celery(settings), settings.queue)
    application = build_application(settings, store, jobs)
    logger.info("Bot starting; model %s, Redis %s", settings.model, _redacted(settings.redis_url))
    if settings.webhook_url:
        from bot.webhook import run_webhook

        run_webhook(application, settings, store.client)
    else:
        application.run_polling(allowed_updates=Update.ALL_TYPES)
    return 0


def run_offline(settings: Settings, args: argparse.Namespace) -> int:
    """Offline clinic mode: the bot, an in-process store and queue, and the model, here.

    With a Telegram token the bot polls Telegram; without one it serves a local web chat
    through the package's Bot API stand-in, on ``--host`` (this machine only by default).
    """
    import dataclasses
    import secrets

    os.environ.setdefault("PTB_TIMEDELTA", "1")
    import fakeredis
    from telegram import Update

    from bot.app import build_application
    from bot.standin import BotAPIStandIn
    from bot.webchat import WebChat
    from skingpt.store import Store
    from worker.queues import LocalQueue
    from worker.runner import JobRunner, ModelHolder

    _refuse_test_model(settings)
    if settings.weights:
        settings = _checked_weights(settings)
    # The same Store code and Lua scripts as with Redis, on an in-memory server in this
    # process: nothing is written to disk, and everything is gone when it stops.
    store = Store(
        fakeredis.FakeRedis(),
        prefix=settings.key_prefix,
        retention_seconds=settings.retention_seconds,
        turn_hold_seconds=settings.visibility_timeout,
        encryption_key=settings.encryption_key,
    )
    holder = ModelHolder(settings, store=store)
    holder.start_loading()
    # Serve only once the model answers: a clinic must learn at start-up, not from its first
    # patient, that the weights cannot load.
    logger.info("Loading the model %s", settings.weights or settings.model)
    holder.get(timeout=None)
    runner = JobRunner(
        store,
        holder,
        max_deliveries=settings.max_deliveries,
        model_wait=3600.0,
        max_queue_wait=settings.max_queue_wait_seconds,
    )
    # With SKINGPT_BATCH_SIZE above 1, that many jobs run at once and share the batcher.
    jobs = LocalQueue(runner, threads=settings.batch_size)
    api: BotAPIStandIn | None = None
    chat: WebChat | None = None
    if not settings.telegram_token:
        api = BotAPIStandIn(
            f"1:{secrets.token_urlsafe(24)}",
            bot_username="skingpt_clinic_bot",
            record_polls=False,
        )
        api.start()
        settings = dataclasses.replace(
            settings,
            telegram_token=api.token,
            telegram_api_url=api.base_url,
            telegram_file_url=api.base_file_url,
        )
        chat = WebChat(api, host=args.host, port=args.port).start()
        print(f"Web chat: {chat.url}", flush=True)
        logger.info("Offline clinic mode: web chat on %s", chat.url)
    application = build_application(settings, store, jobs)
    try:
        application.run_polling(allowed_updates=Update.ALL_TYPES)
    finally:
        jobs.stop()
        if chat is not None:
            chat.stop()
        if api is not None:
            api.stop()
    return 0


def _refuse_test_model(settings: Settings) -> None:
    if settings.is_test_model and not settings.allow_test_model:
        raise ConfigError(
            "SKINGPT_MODEL is tiny-random, an untrained test model whose answers are noise. "
            "Set SKINGPT_MODEL and SKINGPT_WEIGHTS to a real model, or pass --allow-test-model "
            "if this is a test that no real user can reach."
        )


def run_worker(settings: Settings, args: argparse.Namespace) -> int:
    """Run Celery's prefork worker on the job queue; each child loads the model once.

    With ``SKINGPT_BATCH_SIZE`` above 1: one process, one model, and Celery's threads pool
    running ``batch_size`` jobs at once, whose model calls are decoded together.
    """
    from skingpt.model.presets import get_preset
    from worker.app import create_celery
    from worker.tasks import register_tasks

    if settings.quantize != "none":
        _check_quantization_possible(settings)
    if settings.weights:
        settings = _checked_weights(settings)
    elif settings.model != "scripted":
        get_preset(settings.model)
    if settings.is_test_model:
        logger.warning("This worker runs tiny-random, an untrained test model")
    pool = ["--pool=prefork", f"--concurrency={args.concurrency}"]
    if settings.batch_size > 1:
        if args.concurrency != 1:
            raise ConfigError(
                "--concurrency starts copies of the model; with SKINGPT_BATCH_SIZE above 1 one "
                "process serves that many jobs at once. Leave --concurrency out, or run one "
                "worker per GPU."
            )
        pool = ["--pool=threads", f"--concurrency={settings.batch_size}"]
        logger.info(
            "Batched worker: up to %d jobs at once, batches wait up to %d ms",
            settings.batch_size,
            settings.batch_wait_ms,
        )
    app = create_celery(settings)
    store = _store(settings)
    _check_redis_keeps_jobs(store)
    register_tasks(app, settings, store)
    app.worker_main(
        [
            "worker",
            *pool,
            f"--queues={settings.queue}",
            f"--hostname=skingpt-{os.getpid()}@%h",
            f"--loglevel={logging.getLevelName(logging.getLogger().level)}",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    return 0


def _checked_weights(settings: Settings) -> Settings:
    """Check the model folder before taking any job; the children then skip the checksums."""
    import dataclasses

    from skingpt.model.folders import is_native_backend, verify_files

    folder = Path(settings.weights or "")
    native = is_native_backend(folder, settings.backend)
    if settings.verify_weights:
        logger.info("Checking the files of %s", folder)
        verify_files(folder, required=not native)
    return dataclasses.replace(settings, verify_weights=False)


def _check_quantization_possible(settings: Settings) -> None:
    """Refuse to start, before consuming any job, when quantization cannot work here.

    CUDA is probed in a short child process: the worker's parent must never initialise CUDA,
    or its forked children could not use it.
    """
    import importlib.util
    import subprocess

    probe = "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"
    if subprocess.run([sys.executable, "-c", probe], check=False).returncode != 0:
        raise ConfigError(
            f"SKINGPT_QUANTIZE={settings.quantize} needs a CUDA GPU, and none is visible. "
            "On CPU use SKINGPT_QUANTIZE=none with fp32 or bf16."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            f"SKINGPT_QUANTIZE={settings.quantize} needs bitsandbytes: "
            "pip install -c constraints.txt '.[gpu]'"
        )


def _store(settings: Settings) -> Store:
    """The Redis store, checked to answer before anything starts."""
    import redis

    from skingpt.store import Store

    store = Store.from_url(
        settings.redis_url,
        prefix=settings.key_prefix,
        retention_seconds=settings.retention_seconds,
        turn_hold_seconds=settings.visibility_timeout,
        encryption_key=settings.encryption_key,
    )
    try:
        store.client.ping()
    except redis.AuthenticationError:
        raise ConfigError(
            f"Redis at {_redacted(settings.redis_url)} refused the password in "
            "SKINGPT_REDIS_URL (or needs one). Put the right one in that URL: "
            "redis://:PASSWORD@host:port/0."
        ) from None
    except redis.RedisError as error:
        raise ConfigError(
            f"Redis at {_redacted(settings.redis_url)} does not answer ({error}). Start it, or "
            "set SKINGPT_REDIS_URL."
        ) from None
    return store


def _check_redis_keeps_jobs(store: Store) -> None:
    """Refuse a Redis that evicts keys (it would drop queued jobs and answers without a word);
    warn when it keeps nothing across a restart. Servers that forbid CONFIG are trusted."""
    import redis

    try:
        config: Any = store.client.config_get("maxmemory-policy", "appendonly", "save")
    except redis.RedisError:
        logger.info("Redis does not show its configuration; eviction and persistence unchecked")
        return
    policy = str(config.get("maxmemory-policy", "noeviction"))
    if policy != "noeviction":
        raise ConfigError(
            f"Redis evicts keys when full (maxmemory-policy {policy}), which would silently drop "
            "queued jobs and answers. Set maxmemory-policy noeviction on the Redis server."
        )
    if config.get("appendonly") != "yes" and not config.get("save"):
        logger.warning(
            "Redis keeps nothing on disk (appendonly no, no save points): a Redis restart loses "
            "every queued job. Turn on appendonly for production."
        )


def _redacted(url: str) -> str:
    """A Redis URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


if __name__ == "__main__":
    sys.exit(main())
