"""The `skingpt` command as a newcomer runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from skingpt.replies import DISCLAIMER


def _skingpt(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "skingpt.cli", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "SKINGPT_TORCH_THREADS": "1", **(env or {})},
    )


def test_ask_prints_a_labelled_reply_with_the_disclaimer(sample_photos: list[Path]) -> None:
    question = [str(sample_photos[0]), "What is this?", "--then", "Is it contagious?"]
    seeded = ["--seed", "3", "--max-new-tokens", "16"]
    result, again = (_skingpt("ask", *question, *seeded) for _ in range(2))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(DISCLAIMER) == 2
    assert result.stdout.count("TEST MODEL") == 2
    assert "> Is it contagious?" in result.stdout
    assert again.stdout == result.stdout  # the same seed gives the same answers


def test_ask_refuses_a_file_that_is_not_an_image(tmp_path: Path) -> None:
    document = tmp_path / "notes.jpg"
    document.write_text("not a photo")
    result = _skingpt("ask", str(document))
    assert result.returncode == 2
    assert "could not read this file as an image" in result.stderr
    assert "Traceback" not in result.stderr


def test_ask_says_which_file_is_missing(tmp_path: Path) -> None:
    result = _skingpt("ask", str(tmp_path / "missing.jpg"))
    assert result.returncode == 2 and "missing.jpg" in result.stderr


def test_bot_refuses_the_test_model_without_the_flag() -> None:
    result = _skingpt("bot", env={"SKINGPT_MODEL": "tiny-random", "SKINGPT_TELEGRAM_TOKEN": "1:x"})
    assert result.returncode == 2
    assert "--allow-test-model" in result.stderr
    assert "Traceback" not in result.stderr


def test_worker_refuses_an_unknown_model() -> None:
    result = _skingpt("worker", env={"SKINGPT_MODEL": "gpt-derm-99"})
    assert result.returncode == 2
    assert "SKINGPT_MODEL must be one of" in result.stderr


def test_full_model_without_weights_says_what_to_set(sample_photos: list[Path]) -> None:
    result = _skingpt("ask", str(sample_photos[0]), "--model", "skingpt4-llama2-13b")
    assert result.returncode == 2
    assert "SKINGPT_WEIGHTS" in result.stderr


def test_worker_refuses_quantization_without_cuda_and_consumes_nothing(
    redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    from skingpt.settings import Settings
    from worker.app import ANSWER_TASK, create_celery

    queue = f"{key_prefix}-gpu"
    app = create_celery(Settings.from_env({}, redis_url=redis_url, queue=queue))
    app.send_task(ANSWER_TASK, args=["job-that-must-wait"], queue=queue)
    weights = tmp_path / "weights"
    weights.mkdir()
    result = _skingpt(
        "worker",
        env={
            "SKINGPT_REDIS_URL": redis_url,
            "SKINGPT_QUEUE": queue,
            "SKINGPT_QUANTIZE": "4bit",
            "SKINGPT_WEIGHTS": str(weights),
        },
    )
    assert result.returncode == 2
    assert "needs a CUDA GPU" in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr  # one clear message, nothing else
    import redis

    assert redis.Redis.from_url(redis_url).llen(queue) == 1


def test_ask_refuses_quantization_on_cpu(sample_photos: list[Path]) -> None:
    result = _skingpt("ask", str(sample_photos[0]), "--quantize", "4bit", "--device", "cpu")
    assert result.returncode == 2
    assert "needs a CUDA GPU" in result.stderr


def test_bot_says_when_redis_does_not_answer() -> None:
    result = _skingpt(
        "bot",
        "--allow-test-model",
        env={
            "SKINGPT_TELEGRAM_TOKEN": "1:x",
            "SKINGPT_REDIS_URL": "redis://:secret@127.0.0.1:9/0",
        },
    )
    assert result.returncode == 2
    assert "does not answer" in result.stderr and "Traceback" not in result.stderr
    assert "secret" not in result.stderr


def test_ask_refuses_generation_settings_that_cannot_work(sample_photos: list[Path]) -> None:
    result = _skingpt("ask", str(sample_photos[0]), "--max-new-tokens", "3000")
    assert result.returncode == 2
    assert "SKINGPT_MAX_NEW_TOKENS" in result.stderr and "Traceback" not in result.stderr


def test_worker_refuses_an_unverifiable_model_folder_before_taking_jobs(
    tmp_path: Path, redis_url: str
) -> None:
    folder = tmp_path / "skingpt"
    folder.mkdir()
    (folder / "config.json").write_text(
        '{"model_type": "blip-2", "text_config": {"model_type": "llama"}}'
    )
    result = _skingpt(
        "worker", env={"SKINGPT_REDIS_URL": redis_url, "SKINGPT_WEIGHTS": str(folder)}
    )
    assert result.returncode == 2
    assert "has no skingpt_weights.json" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_stops_at_start_up_when_the_model_cannot_load(tmp_path: Path) -> None:
    env = {
        "SKINGPT_MODEL": "scripted",
        "SKINGPT_SCRIPT": str(tmp_path / "missing.toml"),
        "SKINGPT_ALLOW_SCRIPTED_MODEL": "true",
        "SKINGPT_TELEGRAM_TOKEN": "",
    }
    result = _skingpt("run", "--port", "0", env=env)
    assert result.returncode == 2
    assert "missing.toml" in result.stderr and "Traceback" not in result.stderr


def test_scripted_model_needs_its_explicit_flag(sample_photos: list[Path]) -> None:
    env = {"SKINGPT_MODEL": "scripted", "SKINGPT_SCRIPT": "tests/data/scripted/samples.toml"}
    result = _skingpt("ask", str(sample_photos[0]), env=env)
    assert result.returncode == 2
    assert "SKINGPT_ALLOW_SCRIPTED_MODEL=true" in result.stderr


def test_key_prints_a_key_the_settings_accept() -> None:
    from skingpt.settings import Settings

    result = _skingpt("key")
    assert result.returncode == 0
    key = result.stdout.strip()
    assert Settings(encryption_key=key).encryption_key == key
    broken = _skingpt("ask", "x.jpg", env={"SKINGPT_ENCRYPTION_KEY": "not-a-key"})
    assert broken.returncode == 2 and "skingpt key" in broken.stderr


def test_bot_and_worker_refuse_a_redis_that_evicts_keys(tmp_path: Path) -> None:
    import socket
    import time

    import redis

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--maxmemory-policy",
            "allkeys-lru",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        env = {"SKINGPT_TELEGRAM_TOKEN": "1:x", "SKINGPT_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
        for command in (["bot", "--allow-test-model"], ["worker"]):
            result = _skingpt(*command, env=env)
            assert result.returncode == 2, result.stderr
            assert "maxmemory-policy allkeys-lru" in result.stderr
            assert "Traceback" not in result.stderr
    finally:
        server.terminate()
        server.wait(10)


def test_batched_worker_refuses_several_model_copies() -> None:
    result = _skingpt("worker", "--concurrency", "2", env={"SKINGPT_BATCH_SIZE": "4"})
    assert result.returncode == 2
    assert "SKINGPT_BATCH_SIZE" in result.stderr and "Traceback" not in result.stderr
